"""Golden per-step losses: every method trains 3 steps on a fixed tiny model, seed and data, and must give these losses.

A changed scheduler, label mask, data order, seed handling or loss weighting moves them, where
"the loss falls" would still pass.

Regenerate only after a change that is meant to alter training, and say why in the commit:
    .venv/bin/python -m tests.test_golden_losses
prints GOLDEN to paste below. These constants came from an AMD EPYC with AVX-512 (torch 2.13.0 CPU
wheel with MKL, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2, 2 threads). TOLERANCE covers the
same runs with the kernels and reduction orders other CPUs get (see its comment).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.config import SftConfig, TrainConfig
from finetune.data.records import make_record
from finetune.model.tiny import train_tokenizer
from finetune.train.trainer import train_adapter

METHODS = ["qlora", "lora", "dora", "ia3", "prompt_tuning", "full", "freeze", "bitfit"]
# Methods with few trainable parameters get a larger step, so that their losses move enough for a 1% change
# of the learning rate to exceed TOLERANCE.
LEARNING_RATE = {"ia3": 5e-2, "prompt_tuning": 5e-2, "bitfit": 5e-2}
PAIRS = [(3, 4), (5, 2), (7, 8), (1, 9), (6, 6), (2, 3), (9, 4), (8, 1)]


def golden_records() -> list[dict]:
    """16 short arithmetic conversations, English and Chinese; the first 12 train, the last 4 validate."""
    rows = []
    for i, (a, b) in enumerate(PAIRS):
        for lang, prompt, answer in (
            ("en", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
            ("zh", f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"),
        ):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            rows.append(make_record(messages, f"inline-{lang}", i + 1))
    return rows


def build_golden_base(folder: Path) -> str:
    """A 2-layer, 32-wide Llama with seeded random weights and a BPE tokenizer trained on the records."""
    texts = [m["content"] for r in golden_records() for m in r["messages"]]
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def golden_run(method: str, base: str, out_dir: Path) -> dict[str, list[float] | float]:
    """Three optimizer steps of `method` (one epoch of 12 examples in batches of 4), the last step shipped."""
    rows = golden_records()
    cfg = TrainConfig(
        method=method, max_steps=3, batch_size=4, learning_rate=LEARNING_RATE.get(method, 1e-2), lora_rank=4, lora_alpha=8,
        num_virtual_tokens=4, additional_target=[], early_stopping_patience=0, ship="last", seed=7,
    )  # fmt: skip
    result = train_adapter(rows[:12], rows[12:], base, cfg, SftConfig(cutoff_len=64), out_dir, log=lambda _: None)
    return {"losses": result.losses, "val_before": result.val_loss_before, "val_after": result.val_loss_after}


GOLDEN = {
    "lora": {
        "losses": [5.715333461761475, 5.7076263427734375, 5.671143531799316],
        "val_before": 5.705310344696045,
        "val_after": 5.652719020843506,
    },
    "dora": {
        "losses": [5.715333461761475, 5.704572677612305, 5.666357040405273],
        "val_before": 5.705310344696045,
        "val_after": 5.652116775512695,
    },
    "ia3": {
        "losses": [5.715333461761475, 5.727267742156982, 5.717047214508057],
        "val_before": 5.705310344696045,
        "val_after": 5.7032084465026855,
    },
    "prompt_tuning": {
        "losses": [5.711308479309082, 5.724353313446045, 5.713281154632568],
        "val_before": 5.702139854431152,
        "val_after": 5.701220512390137,
    },
    "full": {
        "losses": [5.715333461761475, 5.5959882736206055, 5.252777576446533],
        "val_before": 5.705310344696045,
        "val_after": 5.209780693054199,
    },
    "freeze": {
        "losses": [5.715333461761475, 5.65338134765625, 5.583049774169922],
        "val_before": 5.705310344696045,
        "val_after": 5.585865020751953,
    },
    "bitfit": {
        "losses": [5.715333461761475, 5.7246575355529785, 5.7149224281311035],
        "val_before": 5.705310344696045,
        "val_after": 5.697836399078369,
    },
}

# qlora's nf4 weights go through bitsandbytes' own CPU library, which picks its AVX-512 kernels by CPUID (so
# ATEN_CPU_CAPABILITY cannot emulate the other path): its losses differ by up to 4.5e-3 between the two paths, far
# beyond TOLERANCE. Each path therefore has its own constants, both from real runs: "avx512" from the AMD EPYC
# with AVX-512 above, "avx2" from an AMD EPYC with AVX2 and FMA only (same versions, 2 threads).
QLORA_GOLDEN = {
    "avx512": {
        "losses": [5.715177536010742, 5.707815170288086, 5.67581033706665],
        "val_before": 5.70387077331543,
        "val_after": 5.6580729484558105,
    },
    "avx2": {
        "losses": [5.7158098220825195, 5.708413600921631, 5.671517372131348],
        "val_before": 5.706482887268066,
        "val_after": 5.653575897216797,
    },
}


def bnb_cpu_kernels() -> str:
    """Which of bitsandbytes' CPU kernel paths this machine runs ("avx512" or "avx2")."""
    from bitsandbytes.cextension import lib

    return "avx512" if lib.has_avx512f_cpu() else "avx2"


def golden(method: str) -> dict:
    return QLORA_GOLDEN[bnb_cpu_kernels()] if method == "qlora" else GOLDEN[method]


# Against these constants the largest difference seen was 4.8e-7 (one float32 step at 5.7, `full`'s last
# loss) under ATEN_CPU_CAPABILITY=avx2 and =default, also with MKL_ENABLE_INSTRUCTIONS=AVX2/SSE4_2 and
# ONEDNN_MAX_CPU_ISA=AVX2/SSE41; none with 1 thread. The tolerance (~6.7e-6 at these losses) leaves 14 times
# that for other CPUs, while a 1% change of the learning rate still fails every method (the smallest effect,
# prompt_tuning's, is 1.1e-5; lora's 6.3e-4).
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module")
def golden_base(tmp_path_factory) -> str:
    return build_golden_base(tmp_path_factory.mktemp("golden-base"))


@pytest.mark.parametrize("method", METHODS)
def test_three_steps_give_the_golden_losses(golden_base, tmp_path, method):
    got = golden_run(method, golden_base, tmp_path)
    want = golden(method)
    as_tensor = lambda run: torch.tensor([*run["losses"], run["val_before"], run["val_after"]], dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(as_tensor(got), as_tensor(want), **TOLERANCE)
    assert len(got["losses"]) == 3 and got["losses"][0] != got["losses"][2]  # the steps really trained


def main() -> None:
    """Print GOLDEN for every method (or the methods named on the command line)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = build_golden_base(Path(tmp) / "base")
        print(f"# bitsandbytes CPU kernels: {bnb_cpu_kernels()} (qlora's constants go in QLORA_GOLDEN under that key)")
        print("GOLDEN = {")
        for method in sys.argv[1:] or METHODS:
            run = golden_run(method, base, Path(tmp) / method)
            print(f"    {method!r}: {run!r},")
        print("}")


if __name__ == "__main__":
    main()
