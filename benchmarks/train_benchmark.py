"""Training throughput and peak memory: qlora vs lora vs full, on the tiny model and a ~30M Llama, and the
same job side by side with LLaMA-Factory.

    python benchmarks/train_benchmark.py                      # ours: 3 methods x 2 models, CPU
    python benchmarks/train_benchmark.py --peer               # + LLaMA-Factory 0.9.5 in its own venv
    python benchmarks/train_benchmark.py --models tiny --steps 30

Each run is a separate process, so peak RSS (VmHWM; for the peer, a small wrapper's RUSAGE_CHILDREN)
is that run's own. Both sides train the same model folder on the same Alpaca records with the same method, rank, batch size, learning
rate, cutoff and number of steps. The ~30M model is built from a Llama config with random
weights: speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "var" / "bench"
LF_VENV = WORK / "llamafactory-venv"
MODELS = {"tiny": None, "30m": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8}}


def build_models(names: list[str]) -> dict[str, Path]:
    """The embedded tiny base, and bigger random-weight Llamas that reuse its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.config import load_config
    from finetune.model.loading import resolve_base_model

    tiny = Path(resolve_base_model(load_config(ROOT / "finetune.yaml")))
    out = {}
    for name in names:
        if MODELS[name] is None:
            out[name] = tiny
            continue
        folder = WORK / f"model-{name}"
        if not (folder / "model.safetensors").is_file():
            tok = AutoTokenizer.from_pretrained(tiny)
            base = LlamaConfig.from_pretrained(tiny)
            heads = MODELS[name]["hidden_size"] // 64
            cfg = LlamaConfig(
                **{**base.to_dict(), **MODELS[name], "num_attention_heads": heads, "num_key_value_heads": heads}
            )
            torch.manual_seed(0)
            LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
            tok.save_pretrained(folder)
        out[name] = folder
    return out


def alpaca_rows() -> list[dict]:
    """The bundled sample's clean records in Alpaca form (the format both trainers read)."""
    from finetune.data.ingest import ingest_files

    result, _ = ingest_files([ROOT / "data" / "sample" / "instructions.jsonl"])
    rows = []
    for r in result.kept:
        user = [m["content"] for m in r["messages"] if m["role"] == "user"]
        bot = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        if user and bot and bot[-1].strip():
            rows.append({"instruction": user[-1], "input": "", "output": bot[-1]})
    return rows


PEAK_OF_CHILD = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(rc)
"""

OURS = """
import json, sys, time
from pathlib import Path
from finetune.config import SftConfig, TrainConfig
from finetune.process_memory import peak_rss_mib
from finetune.data.records import make_record
rows = json.loads(Path(sys.argv[1]).read_text())
records = [make_record([{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}], "b", i) for i, r in enumerate(rows)]
cfg = TrainConfig(method=sys.argv[3], max_steps=int(sys.argv[4]), batch_size=8, learning_rate=1e-3, lora_rank=8,
                  lora_alpha=16, additional_target=[], eval_steps=10**6, early_stopping_patience=0, resume=False)
from finetune.train.trainer import train_adapter
t = time.perf_counter()
res = train_adapter(records, records[:16], sys.argv[2], cfg, SftConfig(cutoff_len=128), Path(sys.argv[5]), log=lambda _: None)
print(json.dumps({"tokens_per_s": res.tokens_per_second, "final_loss": sum(res.losses[-5:]) / 5, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mib()}))
"""


def run_ours(model: Path, method: str, steps: int, data: Path) -> dict:
    script = WORK / "ours_run.py"
    script.write_text(OURS, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(script), str(data), str(model), method, str(steps), str(WORK / f"out-{method}")],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_llamafactory() -> Path:
    """LLaMA-Factory 0.9.5 in its own venv (ENV_NOTES: CPU torch, no torchvision/torchaudio)."""
    cli = LF_VENV / "bin" / "llamafactory-cli"
    if cli.is_file():
        return cli
    subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
    pip = [str(LF_VENV / "bin" / "pip"), "install", "-q"]
    constraint = WORK / "lf-constraints.txt"
    constraint.write_text("torch==2.13.0\n")
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "llamafactory==0.9.5", "bitsandbytes==0.50.2", "-c", str(constraint)], check=True)
    subprocess.run([str(LF_VENV / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
    stub = WORK / "stubs" / "torchaudio"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("")  # its mm_plugin imports torchaudio even for text-only runs
    return cli


def run_llamafactory(cli: Path, model: Path, method: str, steps: int, data: Path) -> dict:
    dataset_dir = WORK / "lf-data"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "bench.json").write_text(data.read_text(encoding="utf-8"), encoding="utf-8")
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
    finetuning = {"qlora": "lora", "lora": "lora", "full": "full"}[method]
    lines = [
        f"model_name_or_path: {model}", "stage: sft", "do_train: true", f"finetuning_type: {finetuning}",
        "lora_rank: 8", "lora_alpha: 16", "lora_target: all", f"dataset_dir: {dataset_dir}", "dataset: bench",
        "template: empty", "cutoff_len: 128", f"output_dir: {WORK / ('lf-out-' + method)}", "overwrite_output_dir: true",
        "per_device_train_batch_size: 8", "gradient_accumulation_steps: 1", "learning_rate: 1.0e-3",
        f"max_steps: {steps}", "logging_steps: 5", "save_strategy: 'no'", "report_to: none", "use_cpu: true",
        "bf16: false", "fp16: false", "preprocessing_num_workers: 1",
    ]  # fmt: skip
    if method == "qlora":
        lines.append("quantization_bit: 4")
    cfg = WORK / f"lf-{method}.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORK / "stubs"), "DISABLE_VERSION_CHECK": "1"}
    started = time.perf_counter()
    # A small wrapper process reports the peak of its one child: RUSAGE_CHILDREN here would include our
    # own runs, and a child forked from this process would inherit its size.
    proc = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, str(cli), "train", str(cfg)], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"}
    text = proc.stdout + proc.stderr
    result = json.loads((WORK / f"lf-out-{method}" / "train_results.json").read_text())
    runtime = float(result["train_runtime"])  # the training loop alone, like ours
    losses = [float(x) for x in re.findall(r"'loss': '?([\d.]+)", text)]
    n_tokens = _tokens(model, data, steps)
    return {
        "tokens_per_s": n_tokens / runtime,
        "final_loss": losses[-1] if losses else result.get("train_loss"),
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": float(re.findall(r"^PEAK_RSS_KIB (\d+)$", proc.stdout, re.M)[-1]) / 1024,
    }


def _tokens(model: Path, data: Path, steps: int) -> int:
    # The same count our trainer reports: non-padding tokens of the batches trained (batch 8, cutoff 128).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = json.loads(data.read_text())
    lengths = [min(128, len(tok(r["instruction"] + r["output"])["input_ids"]) + 8) for r in rows]
    per_step = sum(lengths) / len(lengths) * 8
    return int(per_step * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "30m"], choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=["qlora", "lora", "full"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--peer", action="store_true", help="also run LLaMA-Factory (installs it into var/bench once)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / "alpaca.json"
    data.write_text(json.dumps(alpaca_rows(), ensure_ascii=False), encoding="utf-8")
    models = build_models(args.models)
    cli = ensure_llamafactory() if args.peer else None
    print(
        f"{'model':<6}{'method':<7}{'ours tok/s':>11}{'RSS MB':>8}{'loss':>7}"
        + ("{:>12}{:>8}{:>7}{:>7}".format("LF tok/s", "RSS MB", "loss", "ratio") if cli else "")
    )
    for name, model in models.items():
        for method in args.methods:
            ours = run_ours(model, method, args.steps, data)
            line = f"{name:<6}{method:<7}{ours['tokens_per_s']:>11.0f}{ours['peak_rss_mb']:>8.0f}{ours['final_loss']:>7.3f}"
            if cli:
                peer = run_llamafactory(cli, model, method, args.steps, data)
                if "error" in peer:
                    line += f"   LLaMA-Factory failed: {peer['error']}"
                else:
                    ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
                    line += f"{peer['tokens_per_s']:>12.0f}{peer['peak_rss_mb']:>8.0f}{peer['final_loss']:>7.3f}{ratio:>7.2f}"
            print(line, flush=True)
    print("target: ours >= 1.0x LLaMA-Factory's tokens/s at equal loss")


if __name__ == "__main__":
    main()
