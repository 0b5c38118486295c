"""Dagster entry point: wires assets, checks, resources and jobs (workspace.yaml points here)."""

import os

import dagster as dg

from assets import data, evaluation, release, review, training
from checks import data_checks, model_checks, review_checks
from jobs import expert_review_job, full_pipeline_job
from resources import JsonIOManager, PipelineSettings
from schedules import raw_data_sensor, weekly_retrain
from sensors import expert_review_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, training, evaluation, review, release]),
    asset_checks=dg.load_asset_checks_from_modules([data_checks, model_checks, review_checks]),
    jobs=[full_pipeline_job, expert_review_job],
    schedules=[weekly_retrain],
    sensors=[raw_data_sensor, expert_review_sensor],
    resources={
        "settings": PipelineSettings(),
        # The training asset launches its trainer through this client; swap in dagster-k8s'
        # PipesK8sClient (same interface) to train in a pod on a GPU node.
        "pipes_client": dg.PipesSubprocessClient(),
        # Asset values travel as JSON files (resources/json_io.py): Dagster's default would pickle them.
        "io_manager": JsonIOManager(),
    },
    # One process per run by default: the chain is sequential and a process per step would spend most of
    # its time importing torch. FINETUNE_EXECUTOR=multiprocess runs independent steps side by side.
    executor=dg.multiprocess_executor
    if os.environ.get("FINETUNE_EXECUTOR") == "multiprocess"
    else dg.in_process_executor,
)
