"""Data stages on the local engine and on Ray clusters of 1, 2, ... worker CPUs: records/s and scaling.

    python benchmarks/ray_benchmark.py --n 20000 --cpus 1,2

The input is the whole-chain benchmark's (`chain_benchmark.write_input`: Faker text, 10% exact and 10%
near duplicates, PII in 10% of the answers). Each engine runs ingest → clean → dedup → de-identify →
screen, every stage in a fresh process through the same `*_stage` function its asset calls
(`chain_benchmark.run_stage`). For Ray, a local cluster is started per size (`ray start --head` on
127.0.0.1 with that many CPUs) and every stage joins it; joining is not timed. Each Ray run's stage
files are compared byte for byte with the local run's. Scaling efficiency at k CPUs is
rate(k) / (k x rate(1)); on a machine with as many cores as the largest k, 1.0 is linear.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from chain_benchmark import write_input  # noqa: E402

from finetune.data.records import OUTCOMES, Stage, StageFiles  # noqa: E402

STAGES = [Stage.RAW, Stage.CLEANED, Stage.DEDUPLICATED, Stage.DEIDENTIFIED, Stage.SCREENED]
RAY = Path(sys.executable).with_name("ray")


def run_chain(work: Path, overrides: list[str]) -> dict[str, dict]:
    """Every stage in its own process; the result rows of `chain_benchmark.run_stage` by stage."""
    results = {}
    for stage in STAGES:
        cmd = [sys.executable, str(ROOT / "benchmarks/chain_benchmark.py"), "--child", stage.value, str(work)]
        proc = subprocess.run([*cmd, *(f"--set={o}" for o in overrides)], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
        results[stage] = json.loads(line[7:])
    return results


def same_files(a: Path, b: Path) -> bool:
    """Every stage file of run `a` equals run `b`'s, once each run's own folder (in each record's source
    file name) is taken out."""

    def text(run: Path, stage: Stage, kind: str) -> bytes:
        return StageFiles(run / stage).outcome(kind).read_bytes().replace(str(run).encode(), b"<run>")

    return all(text(a, s, kind) == text(b, s, kind) for s in STAGES for kind in OUTCOMES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_command(port: int, cpus: int, temp: Path) -> list[str]:
    """`ray start --head` for a loopback cluster of `cpus` worker CPUs, without dashboard or usage stats, its
    sockets under `temp` (keep that path short: the Unix socket limit is 107 bytes). tests/test_ray_engine.py
    starts its cluster with the same command."""
    cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}"]
    return cmd + ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]


def ray_cluster(cpus: int, temp: Path) -> str:
    port = free_port()
    subprocess.run(head_command(port, cpus, temp), check=True, capture_output=True)
    return f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--cpus", default="1,2", help="Ray cluster sizes (worker CPUs) to run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(x) for x in args.cpus.split(",")]
    runs: dict[str, dict[str, dict]] = {}
    identical: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:  # not /tmp: it may be RAM-backed
        tmp = Path(tmp)
        write_input(tmp / "input.jsonl", args.n, 0.1, args.seed)
        local = tmp / "local"
        local.mkdir()
        shutil.copy(tmp / "input.jsonl", local / "input.jsonl")
        runs["local"] = run_chain(local, ["data.engine=local", "pii.workers=1"])
        for cpus in sizes:
            name, work = f"ray-{cpus}", tmp / f"ray-{cpus}"
            work.mkdir()
            shutil.copy(tmp / "input.jsonl", work / "input.jsonl")
            temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-bench-{os.getpid()}"
            address = ray_cluster(cpus, temp)
            try:
                runs[name] = run_chain(work, ["data.engine=ray", f"data.ray_address={address}"])
            finally:
                subprocess.run([str(RAY), "stop", "--force"], capture_output=True)
                shutil.rmtree(temp, ignore_errors=True)
            identical[name] = same_files(local, work)
    names = list(runs)
    print(f"{args.n:,} records, {os.cpu_count()} cores; records/s per stage (wall clock, joining Ray not counted)")
    print(f"{'stage':21}" + "".join(f"{n:>10}" for n in names) + "".join(f"{'eff@' + str(k):>9}" for k in sizes[1:]))
    for stage in STAGES[1:]:
        rates = {n: runs[n][stage]["in"] / runs[n][stage]["seconds"] for n in names}
        row = f"{stage:21}" + "".join(f"{rates[n]:>10,.0f}" for n in names)
        if sizes and sizes[0] == 1:
            row += "".join(f"{rates[f'ray-{k}'] / (k * rates['ray-1']):>9.2f}" for k in sizes[1:])
        print(row)
    print("stage files identical to local: " + ", ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in identical.items()))


if __name__ == "__main__":
    main()
