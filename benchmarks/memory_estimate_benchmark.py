"""Measured peak memory of one LoRA training step against the estimate, on a 152k-vocabulary model.

A tiny Qwen2 with Qwen's real vocabulary (tests/real_models.py) is where the logits dominate: the step's peak
is almost all batch x seq x vocab fp32 tensors. Each setting runs in its own process; the figure is the rise of
the process's peak RSS (VmHWM) during one forward + backward + AdamW step over the RSS before it, printed beside
the estimate with and without the logits term. CPU only (no GPU here); the peak includes allocator slack.

    .venv/bin/python benchmarks/memory_estimate_benchmark.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [(1, 256), (2, 256), (2, 512)]

CHILD = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from real_models import build_qwen2
from finetune.config import TrainConfig
from finetune.process_memory import peak_rss_mib
from finetune.train.memory import estimate_memory
from finetune.train.methods import build_trainable_model
torch.manual_seed(0)
batch, seq = {batch}, {seq}
model = build_trainable_model(str(build_qwen2()), TrainConfig(method="lora", device="cpu"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
ids = torch.randint(0, model.config.vocab_size, (batch, seq))
before = peak_rss_mib()
model(input_ids=ids, labels=ids).loss.backward()
opt.step()
est = estimate_memory(model, batch, seq)
print(json.dumps({{"peak_rise_gib": (peak_rss_mib() - before) / 1024, **est}}))
"""


def main() -> int:
    print(f"{'batch x seq':>12} {'measured rise':>14} {'estimate':>9} {'without logits':>15}")
    for batch, seq in SETTINGS:
        code = CHILD.format(tests=str(ROOT / "tests"), batch=batch, seq=seq)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        seq_part = r["activations_gib"] + r["logits_gib"] + r["gradients_gib"] + r["optimizer_gib"]
        print(
            f"{batch:>5} x {seq:<5} {r['peak_rise_gib']:>13.3f}G {seq_part:>8.3f}G {seq_part - r['logits_gib']:>14.3f}G"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
