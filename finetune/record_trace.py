"""Where did one raw record go? The privacy officer's question after a deletion request.

Follows a raw record id (its content hash, or an unambiguous prefix of at least 8 characters)
through every stage artifact of every run: kept, dropped or quarantined with the reason, the
train/val/test split it landed in, and the releases built from those runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.config import PipelineConfig
from finetune.data.records import KEPT, OUTCOMES, QUARANTINED, Stage, StageFiles, read_jsonl
from finetune.sft import SPLITS

STAGES = [s for s in Stage if s != Stage.SFT]  # the record stages; the SFT stage is followed by split


def _raw_id(entry: dict[str, Any]) -> str:
    record = entry.get("record", entry)
    if not isinstance(record, dict):
        return ""
    return record.get("raw_id") or record.get("id", "")


def _outcome(stage_dir: Path, raw_id: str) -> dict[str, Any] | None:
    for outcome in OUTCOMES:
        path = StageFiles(stage_dir).outcome(outcome)
        if not path.is_file():
            continue
        for entry in read_jsonl(path):
            if _raw_id(entry) == raw_id:
                found = {"outcome": outcome}
                if outcome != KEPT:
                    found["reason"] = entry.get("reason")
                return found
    return None


def trace_record(cfg: PipelineConfig, ref: str) -> dict[str, Any]:
    """Every run's path for one raw record, and the releases trained on it.

    Raises:
        ValueError: the reference is too short, or matches no or several raw records.
    """
    if len(ref) < 8:
        raise ValueError("give a record id (or a prefix of at least 8 characters)")
    artifacts = cfg.artifacts_dir
    raw_ids = {
        _raw_id(e)
        for run in sorted((artifacts / Stage.RAW).glob("*"))
        for path in (StageFiles(run).kept, StageFiles(run).outcome(QUARANTINED))
        if path.is_file()
        for e in read_jsonl(path)
        if _raw_id(e).startswith(ref)
    }
    if len(raw_ids) != 1:
        raise ValueError(
            f"record {ref!r} matches {len(raw_ids)} raw records under {artifacts / Stage.RAW}"
            + (f": {sorted(raw_ids)[:5]}" if raw_ids else "")
        )
    raw_id = raw_ids.pop()
    runs = []
    for run_dir in sorted((artifacts / Stage.RAW).glob("*")):
        run_id = run_dir.name
        path = []
        for stage in STAGES:
            found = _outcome(cfg.stage_dir(stage, run_id), raw_id)
            if found is None:
                break
            path.append({"stage": stage, **found})
            if found["outcome"] != "kept":
                break
        if not path:
            continue
        split = next(
            (
                s
                for s in SPLITS
                if (cfg.stage_dir(Stage.SFT, run_id) / f"{s}.jsonl").is_file()
                and any(_raw_id(r) == raw_id for r in read_jsonl(cfg.stage_dir(Stage.SFT, run_id) / f"{s}.jsonl"))
            ),
            None,
        )
        if split:
            path.append({"stage": Stage.SFT.value, "outcome": "kept", "split": split})
        runs.append({"run_id": run_id, "path": path})
    trained_runs = {r["run_id"] for r in runs if any(p.get("split") in ("train", "val") for p in r["path"])}
    releases = []
    for manifest_path in sorted((cfg.work_dir / "releases").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {s.get("run_id") for s in manifest["stages"]} & trained_runs:
            releases.append(manifest["release_id"])
    return {"record": raw_id, "runs": runs, "releases_trained_on_it": releases}


def trace_text(trace: dict[str, Any]) -> str:
    """Human-readable form of `trace_record`'s answer."""
    lines = [f"record {trace['record']}"]
    for run in trace["runs"]:
        steps = []
        for p in run["path"]:
            detail = p.get("split") or p.get("reason") or ""
            steps.append(f"{p['stage']}: {p['outcome']}" + (f" ({detail})" if detail else ""))
        lines.append(f"  run {run['run_id']}: " + " -> ".join(steps))
    releases = trace["releases_trained_on_it"]
    lines.append("releases trained on it: " + (", ".join(releases) if releases else "none"))
    return "\n".join(lines)
