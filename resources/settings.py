"""The resource every asset uses to read the typed pipeline config and place its artifacts."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from finetune.config import PROJECT_ROOT, PipelineConfig, load_config
from finetune.weakening import require_accepted

DEFAULT_CONFIG = str(PROJECT_ROOT / "finetune.yaml")


class PipelineSettings(dg.ConfigurableResource):
    """Which finetune.yaml to use and which `key=value` overrides to apply (editable in the launchpad)."""

    config_path: str = Field(
        default_factory=lambda: os.environ.get("FINETUNE_CONFIG", DEFAULT_CONFIG),
        description="Path of the pipeline YAML (env FINETUNE_CONFIG, default finetune.yaml at the project root).",
    )
    overrides: list[str] = Field(default=[], description="Dotted overrides, e.g. ['train.epochs=2'].")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Before a run's first asset: a setting weaker than shipped needs an acceptance on record
        # (gates.weakened_settings). Sensors and schedules only read the config, so they are not refused.
        if context.dagster_run is not None:
            require_accepted(self.load())

    def load(self) -> PipelineConfig:
        """The validated config for this run."""
        return load_config(self.config_path, self.overrides)

    def stage_dir(self, stage: str, run_id: str) -> Path:
        """A fresh folder per stage and run, so runs never overwrite each other's artifacts."""
        return self.load().stage_dir(stage, run_id)
