"""The whole data chain, stage by stage, as the assets run it: records/s, records per CPU-second and peak RSS.

    python benchmarks/chain_benchmark.py --sizes 10000,100000

The input is Faker text in English and Chinese (seeded) with 10% exact and 10% near duplicates and a share
of the answers carrying one phone, e-mail, resident ID or Chinese self-introduction
(`deid_benchmark.PII_TAILS`), written as one Alpaca JSONL file (see `write_input`). Each stage runs in
a fresh process on the kept.jsonl of the stage before, through the same `*_stage` function its asset
calls (ingest → clean → dedup → de-identify → screen → SFT split), so its peak RSS is its own. The SFT
stage tokenizes with the embedded tiny model's tokenizer and chat template.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune.data.records import Stage  # noqa: E402


def write_input(path: Path, n: int, pii_share: float, seed: int) -> None:
    """Faker sentences in English and Chinese (a real vocabulary: the curation benchmark's 30-word one makes
    every English answer share most character shingles with every other, one "response cluster"), with
    10% exact duplicates (case and spaces changed), 10% near duplicates (one character deleted in prompt and
    answer) and a share of answers carrying PII."""
    from curate_benchmark import delete_one_char
    from deid_benchmark import PII_TAILS
    from faker import Faker

    rng = random.Random(seed)
    fakers = [Faker("en_US"), Faker("zh_CN")]
    for i, fake in enumerate(fakers):
        fake.seed_instance(seed + i)
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        roll = rng.random()
        if rows and roll < 0.1:
            orig = rng.choice(rows)
            rows.append({"instruction": "  " + orig["instruction"].upper() + " ", "output": orig["output"]})
        elif rows and roll < 0.2:
            orig = rng.choice(rows)
            rows.append({key: delete_one_char(rng, text) for key, text in orig.items()})
        else:
            fake = rng.choice(fakers)
            rows.append({"instruction": fake.sentence(nb_words=rng.randint(8, 20)), "output": fake.paragraph(4)})
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            tail = rng.choice(PII_TAILS) if rng.random() < pii_share else ""
            fh.write(json.dumps({"instruction": row["instruction"], "output": row["output"] + tail},
                                ensure_ascii=False) + "\n")  # fmt: skip


def run_stage(stage: str, work: Path, overrides: list[str]) -> dict:
    """One stage in this (fresh) process: its input is the stage before's kept.jsonl under `work`."""
    from finetune.config import load_config
    from finetune.data import curate, pii, poison
    from finetune.data.engine import Engine
    from finetune.data.records import StageFiles
    from finetune.model.loading import load_chat_tokenizer, load_tokenizer
    from finetune.model.tiny import build_embedded_model
    from finetune.process_memory import peak_rss_mib
    from finetune.sft import cutoff_memory_limit
    from finetune.sft_stage import sft_stage

    cfg = load_config(None, [f"paths.work_dir={work / 'cfg'}", *overrides])
    order = list(Stage)
    out = work / stage
    upstream = StageFiles(work / order[order.index(Stage(stage)) - 1]).kept if stage != Stage.RAW else None
    base = str(build_embedded_model(ROOT / "data/sample/pretrain_corpus.txt", work / "model"))
    tokenizer = load_tokenizer(base) if stage == Stage.CLEANED else None
    chat = load_chat_tokenizer(base, cfg.sft) if stage == Stage.SFT else None
    lexicon = poison.load_lexicon(cfg.screen, cfg.resolve) if stage == Stage.SCREENED else None
    runs = {
        Stage.RAW: lambda: curate.ingest_stage([work / "input.jsonl"], out, cfg=cfg.ingest),
        Stage.CLEANED: lambda: curate.clean_stage(
            upstream, cfg.clean, out, curate.token_counter(tokenizer), engine=engine
        ),
        Stage.DEDUPLICATED: lambda: curate.dedup_stage(upstream, cfg.dedup, out, engine=engine),
        Stage.DEIDENTIFIED: lambda: pii.deidentify_stage(upstream, cfg.pii, "", out, engine=engine),
        Stage.SCREENED: lambda: poison.screen_stage(upstream, cfg.screen, lexicon, out, engine=engine),
        Stage.SFT: lambda: sft_stage(upstream, chat, cfg.sft, cutoff_memory_limit(base, cfg.sft, cfg.train), out),
    }
    engine = Engine.of(cfg.data)
    if engine.kind == "ray":
        engine.connect()  # joining the cluster is not the stage's work
    rss_before = peak_rss_mib()  # imports and models loaded: what the stage itself adds comes after
    started, cpu = time.perf_counter(), _cpu_seconds()
    report = runs[Stage(stage)]()
    return {
        "stage": stage,
        "in": report.counts.n_in,
        "kept": report.counts.kept,
        "removed_by_reason": report.counts.dropped_by_reason | report.counts.quarantined_by_reason,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds() - cpu,
        "peak_rss_mb": peak_rss_mib(),
        "rss_before_mb": rss_before,
    }


def _cpu_seconds() -> float:
    """This process's CPU time and that of its finished children (a stage's worker processes; not a Ray
    cluster's workers, which are the raylet's children)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--pii-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep every stage's folders under this directory")
    parser.add_argument(
        "--set", action="append", default=[], help="config override for every stage, e.g. pii.workers=1"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_stage(args.child[0], Path(args.child[1]), args.set)))
        return
    print(f"{'N':>9} {'stage':21} {'in':>9} {'kept':>9} {'rec/s':>8} {'rec/cpu-s':>9} {'peak RSS MB':>11} "
          f"{'RSS at start':>12}")  # fmt: skip
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:  # not /tmp: it may be RAM-backed
            work = args.keep / str(n) if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            write_input(work / "input.jsonl", n, args.pii_share, args.seed)
            for stage in Stage:
                cmd = [sys.executable, __file__, "--child", stage.value, str(work), *(f"--set={o}" for o in args.set)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{n:>9} {stage:21} FAILED\n{proc.stderr[-3000:]}", flush=True)
                    break
                r = json.loads(line[7:])
                print(f"{n:>9} {stage:21} {r['in']:>9,} {r['kept']:>9,} {r['in'] / r['seconds']:>8,.0f} "
                      f"{r['in'] / max(r['cpu_seconds'], 1e-9):>9,.0f} {r['peak_rss_mb']:>11,.0f} "
                      f"{r['rss_before_mb']:>12,.0f}", flush=True)  # fmt: skip
                if r["removed_by_reason"]:
                    print(f"{'':>31} removed: {r['removed_by_reason']}", flush=True)
    print(f"\n({args.pii_share:.0%} of answers carry PII; 10% exact and 10% near duplicates; one process per stage)")


if __name__ == "__main__":
    main()
