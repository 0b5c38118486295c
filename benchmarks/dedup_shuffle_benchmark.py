"""Deduplication alone: the local on-disk index against the Ray shuffle at 1, 2, ... CPUs, warm.

    python benchmarks/dedup_shuffle_benchmark.py --n 50000 --cpus 1,2
    python benchmarks/dedup_shuffle_benchmark.py --input LLaMA-Factory/data/alpaca_en_demo.json ... --threshold 0.5

`ray_benchmark.py` times whole stages in fresh processes, where starting and importing the cluster's
workers and the stage's own JSON reading and writing weigh on a stage this fast. Here the records are
in memory, each engine runs `Deduplicator.stream` once to warm up (Ray's workers import numpy and this
package) and is then timed over `--repeats` runs; each size is a private `ray.init(num_cpus=k)` in its
own process. Every run's outcomes are compared with the local engine's. Scaling efficiency at k CPUs is
rate(k) / (k x rate(1)). `--input` takes raw files instead of the generated records (ingested as the
raw_records asset does), `--threshold` the near-duplicate threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune.config import DedupConfig  # noqa: E402


def load(path: Path) -> list[dict]:
    """The records of `path`: generated rows (instruction, output) or, from `--input`, ingested records."""
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    if rows and "messages" in rows[0]:
        return rows
    return [
        {"id": f"r{i}", "messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        for i, r in enumerate(rows)
    ]  # fmt: skip


def ingest(files: list[str], folder: Path) -> Path:
    from finetune.config import load_config
    from finetune.data.curate import ingest_stage
    from finetune.data.records import StageFiles

    ingest_stage([Path(f) for f in files], folder, cfg=load_config(None, [f"paths.work_dir={folder}"]).ingest)
    return StageFiles(folder).kept


def time_engine(path: Path, cpus: int, repeats: int, threshold: float) -> dict:
    """Seconds per run of one engine (cpus 0: local) and a digest of its outcomes."""
    from finetune.data.dedup import Deduplicator
    from finetune.data.engine import Engine

    records = load(path)
    engine = Engine()
    if cpus:
        import ray

        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", configure_logging=False)
        engine = Engine("ray")
    seconds, digest = [], None
    for run in range(repeats + 1):
        start = time.perf_counter()
        outcomes = list(Deduplicator(DedupConfig(threshold=threshold), engine=engine).stream(records))
        if run:  # the first run warms the workers up
            seconds.append(time.perf_counter() - start)
        digest = hashlib.sha256(json.dumps(outcomes, sort_keys=True).encode()).hexdigest()
    return {
        "seconds": min(seconds),
        "digest": digest,
        "n": len(records),
        "dropped": Counter(r.get("reason", "kept") for _, r in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--cpus", default="1,2", help="Ray sizes (CPUs) to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input", nargs="+", help="raw files to ingest and deduplicate instead of generated records")
    parser.add_argument("--threshold", type=float, default=DedupConfig().threshold)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # path cpus: one engine, in this process
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(time_engine(Path(args.worker[0]), int(args.worker[1]), args.repeats, args.threshold)))
        return
    from chain_benchmark import write_input

    sizes = [int(k) for k in args.cpus.split(",")]
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:
        path = Path(tmp) / "input.jsonl"
        if args.input:
            path = ingest(args.input, Path(tmp) / "raw")
        else:
            write_input(path, args.n, 0.1, args.seed)
        runs = {}
        for cpus in [0, *sizes]:
            command = [sys.executable, __file__, "--repeats", str(args.repeats), "--threshold", str(args.threshold)]
            command += ["--worker", str(path), str(cpus)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs["local" if not cpus else f"ray-{cpus}"] = json.loads(done.stdout.strip().splitlines()[-1])
    n = runs["local"]["n"]
    rates = {name: n / run["seconds"] for name, run in runs.items()}
    dropped = {reason: count for reason, count in runs["local"]["dropped"].items() if reason != "kept"}
    print(f"{n:,} records, {os.cpu_count()} cores, threshold {args.threshold}, dropped {dropped}")
    print(f"records/s (best of {args.repeats}, warm)")
    print("".join(f"{name:>10}" for name in rates) + "".join(f"{'eff@' + str(k):>9}" for k in sizes[1:]))
    row = "".join(f"{rate:>10,.0f}" for rate in rates.values())
    if sizes and sizes[0] == 1:
        row += "".join(f"{rates[f'ray-{k}'] / (k * rates['ray-1']):>9.2f}" for k in sizes[1:])
    print(row)
    same = {name: run["digest"] == runs["local"]["digest"] for name, run in runs.items() if name != "local"}
    print("outcomes identical to local: " + ", ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in same.items()))


if __name__ == "__main__":
    main()
