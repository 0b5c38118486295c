"""Where per-step training metrics go: TensorBoard event files and, optionally, an MLflow run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig

# MLflow metric names allow letters, digits and _ - . / and spaces; TensorBoard's tags already fit.
_MLFLOW_NAME = re.compile(r"[^\w\-./ ]")


class MetricSinks:
    """Fans scalars out to the configured sinks; a no-op when none is configured."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, params: dict[str, Any]):
        self.tensorboard = None
        self.mlflow = None
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        if cfg.mlflow_tracking_uri:
            try:
                import mlflow
            except ImportError as exc:
                raise RuntimeError(
                    "train.mlflow_tracking_uri is set but mlflow is not installed: pip install mlflow-skinny "
                    "(or mlflow), or leave train.mlflow_tracking_uri empty"
                ) from exc
            mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
            mlflow.set_experiment(cfg.mlflow_experiment)
            self.mlflow = mlflow
            self.run = mlflow.start_run(run_name=out_dir.name)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tensorboard:
            self.tensorboard.add_scalar(name, value, step)
        if self.mlflow:
            self.mlflow.log_metric(_MLFLOW_NAME.sub("_", name), value, step=step)

    def summary(self, values: dict[str, float]) -> None:
        """Final numbers of the run (MLflow only; TensorBoard has the curves)."""
        if self.mlflow:
            self.mlflow.log_metrics(values)

    def close(self, failed: bool = False) -> None:
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")

    @property
    def mlflow_run_id(self) -> str:
        return self.run.info.run_id if self.mlflow else ""
