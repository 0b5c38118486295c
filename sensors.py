"""The expert review sensor: re-check the review gate (and release) once enough judgements are in."""

import dagster as dg

from finetune.review.collect import review_progress
from finetune.review.packet import ReviewError, load_packet
from jobs import expert_review_job
from resources import PipelineSettings


@dg.sensor(
    job=expert_review_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Pull the latest packet's judgements (Label Studio, or imported sheets); when review.min_items "
    "items by review.min_raters raters are in and something changed, run expert_review_job.",
)
def expert_review_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings):
    cfg = settings.load()
    try:
        progress = review_progress(cfg, load_packet(cfg, "latest"))
    except ReviewError as exc:
        return dg.SkipReason(str(exc))
    if not progress.ready(cfg):
        return dg.SkipReason(
            f"packet {progress.packet_id}: {progress.items_judged}/{cfg.review.min_items} items judged by "
            f"{len(progress.items_per_rater)}/{cfg.review.min_raters} raters {' '.join(progress.notes)}".strip()
        )
    if progress.digest == context.cursor:
        return dg.SkipReason(f"packet {progress.packet_id}: no new judgements")
    context.update_cursor(progress.digest)
    return dg.RunRequest(
        run_key=f"review-{progress.packet_id}-{progress.digest}", tags={"review_packet": progress.packet_id}
    )
