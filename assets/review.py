"""The blind expert review: the packet raters judge, and their unblinded verdict."""

import json
from pathlib import Path

import dagster as dg

from assets.metadata import png_markdown
from finetune.review.collect import collect_expert_review
from finetune.review.gate import experts_prefer_tuned
from finetune.review.packet import Packet, build_packet
from finetune.review.render import review_markdown
from finetune.review.stats import ReviewSummary
from resources import PipelineSettings


@dg.asset(
    description="Blind review packet: review.items test prompts stratified over labels/tasks, the tuned, base and "
    "base+prompt answers shuffled per item as A/B/C, PII re-scanned; the key is kept apart from what raters see.",
    group_name="review",
    owners=["team:ml"],
    code_version="1",
)
def review_packet(context: dg.AssetExecutionContext, settings: PipelineSettings, evaluation_report: dict) -> dg.Output:
    cfg = settings.load()
    packet = build_packet(cfg, Path(evaluation_report["predictions_file"]), evaluation_report["labels"], context.run_id)
    return dg.Output(
        packet,
        metadata={
            "packet_id": packet.packet_id,
            "items": packet.n_items,
            "strata": dg.MetadataValue.json(packet.strata),
            "pii_redacted_by_entity": dg.MetadataValue.json(packet.pii_redacted),
            "packet_dir": dg.MetadataValue.path(packet.dir),
            "next_step": dg.MetadataValue.md(
                f"`finetune review export {packet.packet_id} --to http://127.0.0.1:8080` or `--csv review.xlsx`"
            ),
        },
    )


@dg.asset(
    description="Expert judgements of the packet (pulled from Label Studio or imported sheets), unblinded: "
    "per-criterion means with bootstrap CIs, tuned's win/tie/loss vs base and base+prompt, Krippendorff's alpha.",
    group_name="review",
    owners=["team:ml"],
    code_version="1",
)
def expert_review(context: dg.AssetExecutionContext, settings: PipelineSettings, review_packet: Packet) -> dg.Output:
    cfg = settings.load()
    summary: ReviewSummary = collect_expert_review(
        cfg, review_packet, settings.stage_dir("expert_review", context.run_id)
    )
    verdict = experts_prefer_tuned(summary, cfg.review)
    metadata = {
        "packet_id": summary.packet_id,
        "items_judged": summary.items_judged,
        "raters": summary.raters,
        "judgements": summary.judgements,
        "review_required": cfg.review.required,
        "summary": dg.MetadataValue.md(review_markdown(summary, verdict.message)),
        "items_per_rater": dg.MetadataValue.json(summary.items_per_rater),
        "agreement_alpha": dg.MetadataValue.json(summary.agreement),
        "unusable_annotations": dg.MetadataValue.json(summary.problems[:20]),
        "notes": dg.MetadataValue.json(summary.notes),
    }
    if summary.chart_png:
        metadata["chart"] = png_markdown(summary.chart_png, "expert review")
    context.log.info(json.dumps(summary.notes, ensure_ascii=False))
    return dg.Output(summary, metadata=metadata)
