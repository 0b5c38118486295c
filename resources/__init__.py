"""Dagster resources: the pipeline settings, the trainer launcher and the metric tracker."""

from resources.json_io import JsonIOManager
from resources.launchers import (
    AccelerateLauncher,
    InProcessLauncher,
    SubprocessLauncher,
    TorchrunLauncher,
    TrainerLauncher,
    launcher_from_env,
)
from resources.settings import PipelineSettings
from resources.trackers import MLflowTracker, NoTracker, TensorBoardTracker, Tracker, tracker_from_env

__all__ = [
    "AccelerateLauncher",
    "InProcessLauncher",
    "JsonIOManager",
    "MLflowTracker",
    "NoTracker",
    "PipelineSettings",
    "SubprocessLauncher",
    "TensorBoardTracker",
    "TorchrunLauncher",
    "Tracker",
    "TrainerLauncher",
    "launcher_from_env",
    "tracker_from_env",
]
