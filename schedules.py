"""Retraining triggers: a weekly schedule and a sensor on the raw-data files."""

import dagster as dg

from finetune.data.dataset_info import DatasetInfoError
from finetune.data.ingest import IngestError, snapshot_digest, snapshot_raw_files
from jobs import full_pipeline_job
from resources import PipelineSettings

_schedule = PipelineSettings().load().schedule  # read when definitions load: cron lives in finetune.yaml

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=full_pipeline_job,
    cron_schedule=_schedule.cron,
    execution_timezone=_schedule.timezone,
    description=f"Re-run the whole gated chain on schedule ({_schedule.cron} {_schedule.timezone}, schedule.cron).",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)


@dg.sensor(
    job=full_pipeline_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Start a run when raw data files are added or changed (one run per content snapshot).",
)
def raw_data_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings):
    cfg = settings.load()
    try:
        snapshot = snapshot_raw_files([cfg.resolve(p) for p in cfg.paths.raw_data], cfg.ingest)
    except (IngestError, DatasetInfoError) as exc:
        return dg.SkipReason(str(exc))
    digest = snapshot_digest(snapshot)
    if digest == context.cursor:
        return dg.SkipReason(f"raw data unchanged (snapshot {digest})")
    context.update_cursor(digest)
    # run_key makes Dagster refuse a second run for the same content, even if the cursor is lost.
    return dg.RunRequest(run_key=f"raw-{digest}", tags={"raw_data_snapshot": digest, "trigger": "new_raw_data"})
