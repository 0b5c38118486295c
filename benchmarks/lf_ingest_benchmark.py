"""Ingest LLaMA-Factory's own `data/` as it ships, through `finetune curate`, and count per dataset entry.

Copies `data/` of a LLaMA-Factory checkout (a bare mirror, read with `git archive` at a recorded commit)
into a temporary folder under `var/`, then runs `finetune curate` three times:

1. the upstream `dataset_info.json` as it ships (every entry);
2. a selection, LLaMA-Factory's `dataset: [alpaca_zh_demo, identity, glaive_toolcall_en_demo]`;
3. the same selection with identity.json's placeholders filled (`ingest.template_variables`).

For each entry it prints: read or skipped (with the reason), records ingested, records quarantined by
reason; then the clean/dedup stage counts of the run. With `--stages`, the two glaive tool-calling demos
also go through de-identification and the poisoning screen, to show that every stage accepts the tool
roles and keeps each record's `tools`.

    .venv/bin/python benchmarks/lf_ingest_benchmark.py [--mirror DIR] [--commit SHA] [--stages]

Token-length rules are off (`--no-tokens`): they count with the base model's tokenizer, which is the
cleaning stage's concern, not ingest's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mirrors import export_folder  # noqa: E402

DEFAULT_MIRROR = "/work/.mirror/hiyouga+LLaMA-Factory/repo"
DEFAULT_COMMIT = "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30"
SELECTION = ["alpaca_zh_demo", "identity", "glaive_toolcall_en_demo"]


def curate(data: Path, out: Path, overrides: list[str]) -> tuple[dict, float]:
    from finetune.cli import main

    args = ["curate", "--input", str(data / "dataset_info.json"), "--output", str(out), "--no-tokens"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the command's own summary; the tables below say more
        code = main(args + [a for o in overrides for a in ("--set", o)])
    if code != 0:
        raise SystemExit(f"finetune curate exited {code}")
    return json.loads((out / "report.json").read_text(encoding="utf-8")), time.perf_counter() - started


def print_entries(report: dict) -> None:
    rows = report.get("datasets") or []
    print(f"{'entry':<28} {'status':<8} {'ingested':>8} {'quarantined':>11}  reasons")
    for row in (r for r in rows if r["status"] == "read"):
        reasons = ", ".join(f"{k} {v}" for k, v in row["quarantined_by_reason"].items()) or "-"
        ignored = f" (ignored keys: {row['ignored_keys']})" if row.get("ignored_keys") else ""
        print(f"{row['name']:<28} {'read':<8} {row['kept']:>8} {row['quarantined']:>11}  {reasons}{ignored}")
    skipped = [r for r in rows if r["status"] == "skipped"]
    by_reason = Counter(r["reason"].split(" (")[0] if "network" in r["reason"] else r["reason"] for r in skipped)
    for reason, n in by_reason.most_common():
        names = [r["name"] for r in skipped if reason in r["reason"]]
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
        print(f"  skipped {n:>3}: {reason}: {shown}")
    if report.get("undescribed_files"):
        print(f"  files in the folder no entry names: {[Path(p).name for p in report['undescribed_files']]}")
    for stage in report["stages"]:
        print(
            f"  {stage['stage']:<22} in {stage['in']:>5}  kept {stage['kept']:>5}  dropped {stage['dropped_by_reason']}"
            f"  quarantined {stage['quarantined_by_reason']}"
        )


def downstream(data: Path) -> None:
    """The glaive tool-calling demos through every data stage (in memory): counts and tools carried."""
    from finetune.config import IngestConfig, load_config
    from finetune.data.clean import clean_records
    from finetune.data.dedup import deduplicate_records
    from finetune.data.ingest import ingest_files
    from finetune.data.pii import deidentify_records
    from finetune.data.poison import load_lexicon, screen_records

    cfg = load_config(None, [])
    names = ["glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]
    result, _ = ingest_files([data / "dataset_info.json"], IngestConfig(dataset=names))
    stages = [result]
    stages.append(clean_records(stages[-1].kept, cfg.clean))
    stages.append(deduplicate_records(stages[-1].kept, cfg.dedup))
    stages.append(deidentify_records(stages[-1].kept, cfg.pii, "benchmark-salt"))
    stages.append(screen_records(stages[-1].kept, cfg.screen, load_lexicon(cfg.screen, cfg.resolve)))
    print("\nglaive_toolcall_en/zh_demo through every data stage (default config, token rules off):")
    for stage in stages:
        counts = stage.counts()
        with_tools = sum("tools" in r for r in stage.kept)
        calls = sum(m["role"] == "function_call" for r in stage.kept for m in r["messages"])
        print(
            f"  {counts.stage:<22} in {counts.n_in:>4} kept {counts.kept:>4} (with tools {with_tools:>4}, "
            f"function_call turns {calls:>4})  dropped {counts.dropped_by_reason}  "
            f"quarantined {counts.quarantined_by_reason}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="bare git dir of LLaMA-Factory")
    parser.add_argument("--commit", default=DEFAULT_COMMIT)
    parser.add_argument("--stages", action="store_true", help="also run the glaive demos through every data stage")
    parser.add_argument("--keep", action="store_true", help="keep the exported data and outputs under var/")
    args = parser.parse_args()
    mirror = Path(args.mirror)
    if not (mirror / "HEAD").exists() and not (mirror / ".git").exists():
        print(f"skipped: no LLaMA-Factory mirror at {mirror} (pass --mirror DIR)")
        return 0
    (ROOT / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-ingest-", dir=ROOT / "var"))
    try:
        data = export_folder(mirror, args.commit, "data", work)
        print(f"LLaMA-Factory {mirror} at commit {args.commit}; data copied to {data}\n")
        runs = [
            ("upstream dataset_info.json as it ships", []),
            (f"selection ingest.dataset={SELECTION}", [f"ingest.dataset=[{','.join(SELECTION)}]"]),
            ("same selection, identity.json's placeholders filled",
             [f"ingest.dataset=[{','.join(SELECTION)}]", "ingest.template_variables={name: 小助手, author: Acme}"]),
        ]  # fmt: skip
        for i, (title, overrides) in enumerate(runs):
            report, seconds = curate(data, work / f"out{i}", overrides)
            print(f"\n== {title} ({seconds:.1f} s) ==")
            print_entries(report)
            if report.get("template_variables_filled"):
                print(f"  template variables filled: {report['template_variables_filled']}")
        if args.stages:
            downstream(data)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
