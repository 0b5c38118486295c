"""Jobs, and the headless run behind `finetune run` (the same definitions the UI loads)."""

from __future__ import annotations

import dagster as dg

full_pipeline_job = dg.define_asset_job(
    "full_pipeline", selection=dg.AssetSelection.all(), description="Materialize the whole chain with its checks."
)

# Upstream outputs load from the IO manager's storage, so this runs after a UI/daemon run of the full pipeline
# (`finetune run` keeps outputs in memory: re-run it instead, which rebuilds the same packet and finds the
# judgements collected for it).
expert_review_job = dg.define_asset_job(
    "expert_review_job",
    selection=dg.AssetSelection.assets("expert_review", "release"),
    description="Pull the experts' judgements, re-check experts_prefer_tuned, and release if every gate passes.",
)


def resolved_full_pipeline() -> dg.JobDefinition:
    """The full pipeline job with resources bound, for `dg.reconstructable` (re-execution, execute_job)."""
    from definitions import defs

    return defs.resolve_job_def("full_pipeline")
