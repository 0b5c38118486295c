"""Peak GPU memory and tokens/s of QLoRA vs LoRA on >=1B-parameter Llama models built from their configs.

No weights can be downloaded, and memory and speed do not depend on the weights' values, so each
model is initialised randomly from a published architecture (TinyLlama-1.1B, Llama-2-7B), saved
as bf16 safetensors and trained through the project's own `train_adapter` (the code the training
asset runs). Each (model, method) runs in a fresh process so that peak memory is its own.

    python benchmarks/gpu_benchmark.py --sizes 1b,7b --methods qlora,lora --seq-len 512 --batch-size 4

Prints one line per run and a table; `--json FILE` keeps the figures. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published architectures (config.json of TinyLlama/TinyLlama-1.1B and meta-llama/Llama-2-7b-hf).
ARCHITECTURES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}  # fmt: skip
WORDS = "data model train 数据 模型 训练 the of and 的 是 在 quality 质量 safety 安全".split()


def build_model(size: str, folder: Path) -> Path:
    """Random-init the architecture on the GPU in bf16 and save it with a chat tokenizer beside it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.model.tiny import train_tokenizer

    out = folder / f"llama-{size}"
    if (out / "config.json").is_file():
        return out
    tokenizer = train_tokenizer([" ".join(random.Random(i).choices(WORDS, k=200)) for i in range(200)])
    config = LlamaConfig(
        **ARCHITECTURES[size],
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def records(n: int, words: int, seed: int) -> list[dict]:
    """Conversations long enough that every example fills the cutoff length."""
    rng = random.Random(seed)
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=8))},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=words))},
            ],
        }
        for i in range(n)
    ]


def run_one(model_dir: str, method: str, args: argparse.Namespace) -> dict:
    """Train one method in this process and return its figures."""
    import torch

    from finetune.config import SftConfig, TrainConfig
    from finetune.train.trainer import train_adapter

    cfg = TrainConfig(
        method=method,
        learning_rate=2e-4,
        batch_size=args.batch_size,
        max_steps=args.steps,
        early_stopping_patience=0,
        ship="last",
        resume=False,
        gradient_checkpointing=args.checkpointing,
        additional_target=[],
    )
    n = args.batch_size * args.steps
    data = records(n + 4, args.seq_len, seed=1)
    with tempfile.TemporaryDirectory() as out:
        result = train_adapter(data[:n], data[n:], model_dir, cfg, SftConfig(cutoff_len=args.seq_len), Path(out),
                               log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    return {
        "method": method,
        "gradient_checkpointing": args.checkpointing,
        "total_params_m": round(result.total_params / 1e6, 1),
        "trainable_params_m": round(result.trainable_params / 1e6, 2),
        "peak_allocated_gib": round(result.extra["peak_gpu_memory_gib"], 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 1024**3, 2) if torch.cuda.is_available() else 0.0,
        "estimate_gib": round(result.extra["memory_estimate"]["total_gib"], 2),
        "tokens_per_s": round(result.tokens_per_second),
        "first_loss": round(result.losses[0], 3),
        "last_loss": round(result.losses[-1], 3),
        "steps": result.steps,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1b", help="comma list of " + ", ".join(ARCHITECTURES))
    parser.add_argument("--methods", default="qlora,lora")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--model-root", default=tempfile.gettempdir())
    parser.add_argument("--json", help="append the figures to this JSON-lines file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL_DIR", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], args.one[1], args)), flush=True)
        return

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_benchmark needs a CUDA GPU; torch sees none")
    rows = []
    for size in args.sizes.split(","):
        started = time.perf_counter()
        model_dir = build_model(size, Path(args.model_root))
        print(f"built {size} in {time.perf_counter() - started:.0f} s: {model_dir}", flush=True)
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--one", str(model_dir), method, "--seq-len", str(args.seq_len),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
            cmd += ["--checkpointing"] if args.checkpointing else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not found:
                print(f"{size} {method} FAILED:\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = {"size": size, "seq_len": args.seq_len, "batch_size": args.batch_size, **json.loads(found[0][7:])}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
    print(f"\n{'size':5} {'method':6} {'ckpt':5} {'params M':>9} {'trainable M':>11} {'peak GiB':>9} "
          f"{'reserved':>9} {'estimate':>9} {'tokens/s':>9} {'loss':>13}")  # fmt: skip
    for r in rows:
        print(f"{r['size']:5} {r['method']:6} {str(r['gradient_checkpointing'])[0]:5} {r['total_params_m']:9} "
              f"{r['trainable_params_m']:11} {r['peak_allocated_gib']:9} {r['peak_reserved_gib']:9} "
              f"{r['estimate_gib']:9} {r['tokens_per_s']:9} {r['first_loss']:>6}->{r['last_loss']:<6}")  # fmt: skip


if __name__ == "__main__":
    main()
