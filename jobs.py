"""Jobs, and the headless run behind `finetune run` (the same definitions the UI loads)."""

from __future__ import annotations

import dagster as dg

full_pipeline_job = dg.define_asset_job(
    "full_pipeline", selection=dg.AssetSelection.all(), description="Materialize the whole chain with its checks."
)
