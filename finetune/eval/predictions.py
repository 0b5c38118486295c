"""Every held-out record with each arm's answer, written beside the evaluation report (the review packet reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.data.records import Record, read_jsonl, write_jsonl

PREDICTIONS_FILE = "predictions.jsonl"
ARMS = ("tuned", "base", "base+prompt")  # the three answers to every test prompt


def write_predictions(out_dir: Path, records: list[Record], predictions: dict[str, list[str]]) -> Path:
    """One row per test record: the record and each arm's answer to it; returns the file written.

    Raises:
        ValueError: an arm is missing or has a different number of answers than there are records.
    """
    for arm in ARMS:
        if len(predictions.get(arm, [])) != len(records):
            raise ValueError(f"arm {arm!r} has {len(predictions.get(arm, []))} answers for {len(records)} records")
    rows = [{"record": r, "predictions": {arm: predictions[arm][i] for arm in ARMS}} for i, r in enumerate(records)]
    path = out_dir / PREDICTIONS_FILE
    write_jsonl(path, rows)
    return path


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows `write_predictions` wrote."""
    return read_jsonl(path)
