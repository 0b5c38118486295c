"""How many of LLaMA-Factory's demo examples a cutoff truncates, and what `sft.cutoff_len: auto` picks.

Tokenizes LLaMA-Factory's own demo datasets (alpaca_en/zh, identity, glaive tool-calling en/zh), read from a
mirror of its repository, through the sft_dataset stage's code (build_sft_splits) with Qwen's real vocabulary
(rebuilt from dashscope's qwen.tiktoken, as tests/real_models.py does) and the Qwen2.5 chat template, then
prints the truncation share at fixed cutoffs and the auto cutoff with the memory cap for Qwen2-0.5B- and
Qwen2.5-7B-shaped configs (batch 8). Needs the dev extra (dashscope) and the mirror; skips when it is absent.

    .venv/bin/python benchmarks/cutoff_benchmark.py [--lf-repo DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from transformers import Qwen2Config  # noqa: E402

from finetune.config import SftConfig  # noqa: E402
from finetune.model.chat_template import apply_template  # noqa: E402
from finetune.sft_stage import build_sft_splits  # noqa: E402
from finetune.train.memory import longest_sequence_within  # noqa: E402

DEFAULT_REPO = "/work/.mirror/hiyouga+LLaMA-Factory/repo"
FILES = ["alpaca_en_demo", "alpaca_zh_demo", "identity", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]
ROLES = {"human": "user", "gpt": "assistant", "function_call": "function_call", "observation": "observation"}
SHAPES = {  # the published configs' sizes that the estimate reads
    "Qwen2-0.5B": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "vocab_size": 151936},
    "Qwen2.5-7B": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "vocab_size": 152064},
}


def records_of(name: str, rows: list[dict]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        if "conversations" in row:
            messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
            tools = json.loads(row["tools"]) if row.get("tools") else None
        else:
            prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
            messages, tools = (
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}],
                None,
            )
        out.append(
            {"id": f"{name}:{i}", "source": {"file": name, "line": i}, "messages": messages}
            | ({"tools": tools} if tools else {})
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-repo", default=DEFAULT_REPO, help="bare git dir of LLaMA-Factory")
    args = parser.parse_args()
    repo = Path(args.lf_repo)
    if not repo.exists():
        print(f"skipped: LLaMA-Factory mirror not found at {repo} (pass --lf-repo)")
        return 0
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"LLaMA-Factory data at commit {commit}")
    from real_models import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    apply_template(tokenizer, "")
    records = []
    for name in FILES:
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"HEAD:data/{name}.json"], capture_output=True, text=True
        )
        records += records_of(name, json.loads(text.stdout))
    print(
        f"{len(records)} records from {', '.join(FILES)}; tokenizer: Qwen vocabulary ({len(tokenizer)} tokens), template qwen (Qwen2.5)"
    )
    for cutoff in (256, 512, 1024, 2048):
        r = build_sft_splits(records, tokenizer, SftConfig(cutoff_len=cutoff, val_fraction=0, test_fraction=0))
        print(
            f"cutoff {cutoff:>5}: truncates {r.extra['truncated_at_cutoff']:>4} ({r.extra['truncated_share']:.1%}); quarantined {len(r.quarantined)}"
        )
    print(f"token lengths: {r.extra['token_lengths']}")
    auto = SftConfig(cutoff_len="auto", val_fraction=0, test_fraction=0)
    for shape, sizes in SHAPES.items():
        config = Qwen2Config(max_position_embeddings=32768, **sizes)
        for bf16 in (False, True):
            limit = longest_sequence_within(config, 8, auto.cutoff_memory_gib, bf16=bf16)
            r = build_sft_splits(records, tokenizer, auto, limit)
            print(
                f"auto ({shape}, batch 8, {'bf16' if bf16 else 'fp32'}, {auto.cutoff_memory_gib} GiB): cutoff {r.extra['cutoff_len']} "
                f"(p{auto.cutoff_percentile * 100:.0f} = {r.extra['cutoff_at_percentile']}, memory cap {limit}, limited by {r.extra['cutoff_limited_by']}); "
                f"truncates {r.extra['truncated_at_cutoff']} ({r.extra['truncated_share']:.1%})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
