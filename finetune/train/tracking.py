"""Where a run's training metrics go: nowhere, TensorBoard event files, or an MLflow run; and the loss-curve PNG
that every run draws from the same losses.

Which tracker a run uses is an operational choice (a Dagster resource, a `finetune train` option):
it travels in the training spec but never in the checkpoint's run key, so switching it between a
crash and the resume still resumes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# MLflow metric names allow letters, digits and _ - . / and spaces; TensorBoard's tags already fit.
_MLFLOW_NAME = re.compile(r"[^\w\-./ ]")
TENSORBOARD_DIR = "tensorboard"


class TrackingSpec(BaseModel):
    """Which metric sink a training run writes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "tensorboard", "mlflow"] = Field(
        default="none", description="none, TensorBoard events under <output>/tensorboard, or an MLflow run."
    )
    mlflow_tracking_uri: str = Field(
        default="", description="MLflow tracking URI (e.g. http://127.0.0.1:5000 or sqlite:///mlflow.db)."
    )
    mlflow_experiment: str = Field(default="gated-finetune", description="MLflow experiment name.")

    @model_validator(mode="after")
    def _mlflow_needs_a_uri(self) -> TrackingSpec:
        if self.kind == "mlflow" and not self.mlflow_tracking_uri:
            raise ValueError(
                "the mlflow tracker needs a tracking URI, got ''; set MLFLOW_TRACKING_URI (or the tracker "
                "resource's tracking_uri, or `finetune train --mlflow-uri`), or choose the tensorboard/none tracker"
            )
        return self


class MetricSinks:
    """Fans scalars out to the chosen sink; a no-op for `none` and on ranks other than 0."""

    def __init__(self, tracking: TrackingSpec, out_dir: Path, params: dict[str, Any], enabled: bool = True):
        self.tensorboard = None
        self.mlflow = None
        self.run = None
        if enabled and tracking.kind == "tensorboard":
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / TENSORBOARD_DIR))
        if enabled and tracking.kind == "mlflow":
            self.mlflow = _import_mlflow()
            self.mlflow.set_tracking_uri(tracking.mlflow_tracking_uri)
            self.mlflow.set_experiment(tracking.mlflow_experiment)
            self.run = self.mlflow.start_run(run_name=out_dir.name)
            self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

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
        """Flush and close; an MLflow run is marked FAILED after a crash rather than left RUNNING."""
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None
        if self.mlflow:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.mlflow = None

    @property
    def mlflow_run_id(self) -> str:
        return self.run.info.run_id if self.run else ""


def save_loss_curve(losses: list[float], path: Path, val: list[tuple[int, float]] | None = None) -> None:
    """Plot the per-step training loss and the validation losses to a PNG (train vs val shows overfitting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, label="train loss", linewidth=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:orange", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _import_mlflow():
    try:
        import mlflow
    except ImportError as exc:
        raise RuntimeError(
            "the mlflow tracker is chosen but mlflow is not installed: pip install mlflow-skinny "
            "(or mlflow), or choose the tensorboard/none tracker"
        ) from exc
    return mlflow
