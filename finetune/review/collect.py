"""Bringing judgements back into the pipeline: import from a sheet or Label Studio, unblind, summarize."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from finetune.config import PipelineConfig
from finetune.data.records import sha256_file, write_json
from finetune.review.judgements import Collected, read_judgements, store_judgements, unblind
from finetune.review.label_studio import exported_project, pull_from_label_studio
from finetune.review.packet import Packet, ReviewError
from finetune.review.render import save_review_chart
from finetune.review.sheets import import_sheet
from finetune.review.stats import ReviewSummary, summarize

SUMMARY_FILE = "expert_review.json"
CHART_FILE = "expert_review.png"


def import_judgements(cfg: PipelineConfig, packet: Packet, sheets: list[Path]) -> Collected:
    """Store the judgements of filled sheets, or (no sheets given) of the packet's Label Studio project.

    Raises:
        ReviewError: nothing to import from, or a source is unreadable.
    """
    if sheets:
        collected = Collected()
        for path in sheets:
            one = import_sheet(path)
            collected.judgements += one.judgements
            collected.problems += one.problems
            collected.unanswered += one.unanswered
    else:
        project = exported_project(packet)
        if project is None:
            raise ReviewError(
                f"packet {packet.packet_id} was never exported to Label Studio; pass the filled sheet(s) "
                "(finetune review import latest FILE.xlsx) or export it first (--to URL)"
            )
        collected = pull_from_label_studio(cfg, project)
    store_judgements(packet, collected.judgements)
    return collected


def collect_expert_review(cfg: PipelineConfig, packet: Packet, out_dir: Path) -> ReviewSummary:
    """Pull fresh annotations when the packet lives in Label Studio, then unblind and summarize all stored ones.

    An unreachable server is a note, not a crash: the judgements stored by earlier pulls and imports still
    count, and the gate decides whether that is enough.
    """
    notes, problems = [], []
    if exported_project(packet) is not None:
        try:
            pulled = import_judgements(cfg, packet, [])
            project = exported_project(packet)
            notes.append(
                f"pulled {len(pulled.judgements)} judgements from Label Studio project {project.project_id} "
                f"({pulled.unanswered} tasks not yet annotated)"
            )
            problems = pulled.problems
        except ReviewError as err:
            notes.append(f"could not pull from Label Studio ({err}); using the judgements stored before")
    judgements = read_judgements(packet)
    review = cfg.review
    summary = summarize(
        packet.packet_id,
        packet.n_items,
        unblind(judgements, packet.key()),
        review.confidence,
        review.bootstrap_resamples,
        review.seed,
    )
    sources = sorted({j.source for j in judgements})
    notes.append(f"{len(judgements)} judgements stored" + (f" from {', '.join(sources)}" if sources else ""))
    summary.notes, summary.problems = notes, problems
    summary.key_sha256 = sha256_file(Path(packet.key_file))
    out_dir.mkdir(parents=True, exist_ok=True)
    if summary.judgements:
        summary.chart_png = str(save_review_chart(summary, out_dir / CHART_FILE))
    write_json(out_dir / SUMMARY_FILE, summary.to_dict())
    return summary


@dataclass(frozen=True)
class ReviewProgress:
    """How far the raters are with one packet (what `finetune review status` prints and the sensor waits on)."""

    packet_id: str
    n_items: int
    items_judged: int
    items_per_rater: dict[str, int]
    digest: str  # changes whenever a stored judgement changes
    label_studio: str  # "<url> project <id>", or "" when the packet was not exported there
    notes: tuple[str, ...] = ()

    def ready(self, cfg: PipelineConfig) -> bool:
        """Enough items and raters for experts_prefer_tuned to decide."""
        return self.items_judged >= cfg.review.min_items and len(self.items_per_rater) >= cfg.review.min_raters


def review_progress(cfg: PipelineConfig, packet: Packet, pull: bool = True) -> ReviewProgress:
    """Count the stored judgements, after pulling fresh ones from Label Studio when the packet is there."""
    project, notes = exported_project(packet), []
    if pull and project is not None:
        try:
            import_judgements(cfg, packet, [])
        except ReviewError as err:
            notes.append(f"could not pull from Label Studio: {err}")
    judgements = read_judgements(packet)
    blob = json.dumps([j.to_dict() for j in judgements], sort_keys=True, ensure_ascii=False).encode()
    return ReviewProgress(
        packet.packet_id,
        packet.n_items,
        len({j.item_id for j in judgements}),
        dict(sorted(Counter(j.rater for j in judgements).items())),
        hashlib.sha256(blob).hexdigest()[:16],
        f"{project.url} project {project.project_id}" if project else "",
        tuple(notes),
    )
