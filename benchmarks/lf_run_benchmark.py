"""LLaMA-Factory's demo data through one whole `finetune run`, from its upstream `dataset_info.json`.

Exports `data/` of a LLaMA-Factory mirror at a recorded commit, builds a random-weight Qwen2 with Qwen's real
BPE vocabulary and the Qwen2.5 chat template (tests/real_models.py, offline), and runs the real command,
`finetune run --config <generated yaml>`, in a subprocess with its own work_dir: ingest (the dataset_info.json
as it ships, every entry), clean, dedup, de-identification, screening, SFT formatting (`sft.cutoff_len: auto`),
a few QLoRA steps, evaluation and the release gates. Then it reads what the run wrote and prints:

- every stage's in / kept / dropped / quarantined, by reason;
- every cleaning and ingest drop or quarantine, one line each (entry, row, reason, the start of the answer);
  the full records are in the stage folders the run leaves under `--out`;
- PII replacements per 1,000 de-identified records, by entity (these sets hold next to no personal data);
- the tokenizer the token rules counted with, the cutoff `auto` picked and the records it truncated;
- the release decision and each gate's verdict (a random-weight model trained 4 steps is expected to be
  blocked by the learning floor: this run measures the data stages, not a model).

    .venv/bin/python benchmarks/lf_run_benchmark.py [--mirror DIR] [--commit SHA] [--out var/bench/lf_run]

Nothing is committed from the mirror; the run's folder is replaced at each call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lf_ingest_benchmark import DEFAULT_COMMIT, DEFAULT_MIRROR  # noqa: E402
from mirrors import export_folder  # noqa: E402

from finetune.data.pii import RESIDUAL_SCAN  # noqa: E402
from finetune.data.records import DROPPED, KEPT, QUARANTINED, StageFiles, read_jsonl  # noqa: E402

PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]+)>")
STAGES = ["raw_records", "cleaned_records", "deduplicated_records", "deidentified_records", "screened_records",
          "sft_dataset"]  # fmt: skip
# LLaMA-Factory's users replace identity.json's {{name}} / {{author}} before training; so does this run.
TEMPLATE_VARIABLES = {"name": "小助手", "author": "Acme"}
# What differs from finetune.yaml, and why: the work_dir is the benchmark's own; the base model is a
# random-weight Qwen2 (151,646-token vocabulary), so batches stay small and the cutoff's memory cap low enough
# for this machine; 10 optimizer steps (the fewest the training-loss gate can judge) with one validation at
# the end, since the trained model is not what is measured.
OVERRIDES = {
    "ingest": {"dataset": [], "template_variables": TEMPLATE_VARIABLES},
    "sft": {"cutoff_len": "auto", "cutoff_memory_gib": 2.0},
    "train": {"batch_size": 2, "max_steps": 10, "eval_steps": 0},
    "eval": {"batch_size": 8},
}


def write_config(out: Path, data: Path, model: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "finetune.yaml").read_text(encoding="utf-8"))
    for section, values in OVERRIDES.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    cfg["paths"] = {
        **cfg["paths"],
        "raw_data": [str(data / "dataset_info.json")],
        "work_dir": str(out / "work"),
        "ceval_dir": str(ROOT / "data" / "sample" / "ceval"),
        "pretrain_corpus": str(ROOT / "data" / "sample" / "pretrain_corpus.txt"),
    }
    cfg["model"] = {**cfg["model"], "base": str(model)}
    path = out / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def run_pipeline(config: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "FINETUNE_LAUNCHER": "subprocess"}
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        code = subprocess.run(
            [sys.executable, "-m", "finetune.cli", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False,
        ).returncode  # fmt: skip
    return code, time.perf_counter() - started


def stage_dir(work: Path, stage: str) -> Path | None:
    """The stage's folder of the latest run that wrote its report."""
    runs = [d for d in (work / "artifacts" / stage).glob("*") if StageFiles(d).report.is_file()]
    return max(runs, key=lambda d: StageFiles(d).report.stat().st_mtime, default=None)


def where(row: dict) -> str:
    """Entry file and row: ingest's rows name them beside the raw text, later stages' records carry them."""
    source = row if "line" in row else row.get("record", {}).get("source", {})
    return f"{Path(str(source.get('file', '?'))).name}:{source.get('line', '?')}"


def answer_start(record) -> str:
    messages = record.get("messages", []) if isinstance(record, dict) else []
    answers = [m["content"] for m in messages if m.get("role") == "assistant"]
    text = (answers[-1] if answers else "").replace("\n", " ")
    return text[:50] + ("…" if len(text) > 50 else "")


def print_stages(reports: dict[str, dict]) -> None:
    print(f"{'stage':<22} {'in':>6} {'kept':>6} {'dropped':>8} {'quar.':>6}  reasons")
    for stage, report in reports.items():
        reasons = {**report.get("dropped_by_reason", {}), **report.get("quarantined_by_reason", {})}
        print(
            f"{stage:<22} {report['in']:>6} {report['kept']:>6} {report['dropped']:>8} {report['quarantined']:>6}"
            f"  {reasons or '-'}"
        )


def print_outcomes(folder: Path, title: str) -> None:
    files = StageFiles(folder)
    rows = read_jsonl(files.outcome(DROPPED)) + read_jsonl(files.outcome(QUARANTINED))
    print(f"\n{title}: {len(rows)} (every one)")
    for row in rows:
        detail = {k: v for k, v in row.items() if k not in ("record", "reason", "file", "line")}
        print(f"  {row['reason']:<30} {where(row):<34} {detail or ''} {answer_start(row.get('record'))!r}")


def print_pii(report: dict) -> None:
    n = report["in"]
    by_entity = report.get("replaced_by_entity", {})
    total = sum(by_entity.values())
    print(f"\nPII replacements: {total} in {n} records = {1000 * total / max(n, 1):.1f} per 1,000 records")
    for entity, count in sorted(by_entity.items(), key=lambda kv: -kv[1]):
        print(f"  {entity:<18} {count:>5}  {1000 * count / max(n, 1):6.1f} per 1,000")
    residual = json.loads((Path(report["dir"]) / RESIDUAL_SCAN).read_text())  # the check's re-scan
    print(f"  records changed: {report.get('records_changed')}, residual after: {residual}")


def print_replacements(folder: Path) -> None:
    """Every de-identified turn, shown around its placeholders (the values themselves are gone)."""
    windows = []
    for record in read_jsonl(StageFiles(folder).outcome(KEPT)):
        for m in record["messages"]:
            for hit in PLACEHOLDER.finditer(m["content"]):
                text = m["content"]
                window = text[max(0, hit.start() - 30) : hit.end() + 30].replace("\n", " ")
                windows.append(f"  {hit.group(1):<14} {where({'record': record}):<34} {window!r}")
    print(f"\nplaceholders in the de-identified records: {len(windows)} (every one)")
    print("\n".join(windows))


def print_sft(report: dict, clean: dict) -> None:
    kept = report["kept"]
    cut = report.get("truncated_at_cutoff", 0)
    print(f"\ntoken rules counted with: {clean.get('token_rules')}")
    how = {k: v for k, v in report.items() if k.startswith("cutoff_") and k != "cutoff_len"}
    print(f"cutoff: {report['cutoff_len']} tokens {how}; token lengths {report.get('token_lengths')}")
    print(f"truncated at the cutoff: {cut} of {kept} examples ({100 * cut / max(kept, 1):.1f}%)")
    print(f"splits: {report.get('split_sizes')}")


def print_decision(log: Path) -> None:
    """The run's own verdict lines: the release, or the check that blocked it, and every warning."""
    verdict = ("Release:", "Manifest:", "BLOCKED by check", "WARNING from check", "FAILED step")
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith(verdict)]
    print("\nrelease decision:\n  " + ("\n  ".join(lines) or "(none printed; see the log)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="bare git dir of LLaMA-Factory")
    parser.add_argument("--commit", default=DEFAULT_COMMIT)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "lf_run"))
    args = parser.parse_args()
    mirror, out = Path(args.mirror), Path(args.out)
    if not (mirror / "HEAD").exists() and not (mirror / ".git").exists():
        print(f"skipped: no LLaMA-Factory mirror at {mirror} (pass --mirror DIR)")
        return 0
    from real_models import build_qwen2

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = export_folder(mirror, args.commit, "data", out)
    model = build_qwen2()
    config = write_config(out, data, model)
    print(f"LLaMA-Factory {mirror} at commit {args.commit}; base model {model.name} (random-weight Qwen2)")
    code, seconds = run_pipeline(config, out / "run.log")
    print(f"finetune run --config {config}: exit {code} in {seconds:.0f} s (log: {out / 'run.log'})\n")
    work = out / "work"
    folders = {stage: stage_dir(work, stage) for stage in STAGES}
    reports = {s: json.loads(StageFiles(f).report.read_text(encoding="utf-8")) for s, f in folders.items() if f}
    if set(reports) != set(STAGES):
        print(f"the run stopped before {[s for s in STAGES if s not in reports]}; see {out / 'run.log'}")
        return 1
    print_stages(reports)
    ingest = reports["raw_records"]
    skipped = Counter(
        e["reason"].split(" (")[0] for e in ingest.get("datasets") or [] if e.get("status") == "skipped"
    )  # "needs the network (hf_hub_url: <id>)" once, not once per hub id
    print(f"\ndataset_info.json entries skipped: {sum(skipped.values())} {dict(skipped)}")
    print_outcomes(folders["raw_records"], "ingest quarantines")
    print_outcomes(folders["cleaned_records"], "cleaning drops")
    print_pii(reports["deidentified_records"])
    print_replacements(folders["deidentified_records"])
    print_sft(reports["sft_dataset"], reports["cleaned_records"])
    print_decision(out / "run.log")
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
