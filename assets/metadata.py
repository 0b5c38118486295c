"""Turning stage reports into Dagster metadata the UI renders (counts, tables, images)."""

import base64
from pathlib import Path
from typing import Any

import dagster as dg

from finetune.data.records import StageReport


def stage_metadata(report: StageReport) -> dict[str, Any]:
    """Counts per outcome and per reason, and where the kept/dropped/quarantined files are."""
    c = report.counts
    reasons = {f"dropped: {k}": v for k, v in c.dropped_by_reason.items()}
    reasons |= {f"quarantined: {k}": v for k, v in c.quarantined_by_reason.items()}
    table = "| outcome | records |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in reasons.items())
    return {
        "records_in": c.n_in,
        "kept": c.kept,
        "dropped": c.dropped,
        "quarantined": c.quarantined,
        "reasons": dg.MetadataValue.md(table if reasons else "nothing dropped or quarantined"),
        "artifact_dir": dg.MetadataValue.path(str(report.files.dir)),
    }


def png_markdown(path: str | Path, title: str) -> dg.MetadataValue:
    """Embed a PNG in markdown metadata so the UI shows the picture itself."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")


def duplicate_pairs_table(pairs: list[dict[str, Any]]) -> str:
    """Sample duplicate pairs as a markdown table (texts are PII-redacted snippets)."""
    if not pairs:
        return "no duplicates"

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = "".join(
        f"| {p['reason']} | {p['similarity']} | {cell(p['dropped_text'])} | {cell(p.get('kept_text', ''))} |\n"
        for p in pairs
    )
    return "| reason | similarity | dropped | kept |\n|---|---|---|---|\n" + rows
