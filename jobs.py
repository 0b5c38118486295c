"""Jobs, and the headless run behind `finetune run` (the same definitions the UI loads)."""

from __future__ import annotations

import dagster as dg

full_pipeline_job = dg.define_asset_job(
    "full_pipeline", selection=dg.AssetSelection.all(), description="Materialize the whole chain with its checks."
)


def resolved_full_pipeline() -> dg.JobDefinition:
    """The full pipeline job with resources bound, for `dg.reconstructable` (re-execution, execute_job)."""
    from definitions import defs

    return defs.resolve_job_def("full_pipeline")
