"""Dagster entry point: wires assets, checks, resources and jobs (workspace.yaml points here)."""

import os

import dagster as dg

from assets import data, evaluation, release, review, training
from checks import data_checks, model_checks, review_checks
from jobs import expert_review_job, full_pipeline_job
from resources import JsonIOManager, PipelineSettings, launcher_from_env, tracker_from_env
from schedules import raw_data_sensor, weekly_retrain
from sensors import expert_review_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, training, evaluation, review, release]),
    asset_checks=dg.load_asset_checks_from_modules([data_checks, model_checks, review_checks]),
    jobs=[full_pipeline_job, expert_review_job],
    schedules=[weekly_retrain],
    sensors=[raw_data_sensor, expert_review_sensor],
    # FINETUNE_LAUNCHER picks how the trainer starts (subprocess, in_process, torchrun, accelerate) and
    # FINETUNE_TRACKER where its metrics go (tensorboard, mlflow, none); both are editable in the launchpad.
    resources={
        "settings": PipelineSettings(),
        "trainer_launcher": launcher_from_env(),
        "tracker": tracker_from_env(),
        # Asset values travel as JSON files (resources/json_io.py): Dagster's default would pickle them.
        "io_manager": JsonIOManager(),
    },
    # One process per run by default: the chain is sequential and a process per step would spend most of
    # its time importing torch. FINETUNE_EXECUTOR=multiprocess runs independent steps side by side.
    executor=dg.multiprocess_executor
    if os.environ.get("FINETUNE_EXECUTOR") == "multiprocess"
    else dg.in_process_executor,
)
