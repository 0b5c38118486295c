"""Where the trainer sends its per-step metrics: no tracker, TensorBoard event files, or an MLflow server.

An operational choice, so a resource rather than a training setting: it never enters the
checkpoint's run key, and switching it between a crash and the re-run still resumes.
"""

import os
from abc import ABC, abstractmethod

import dagster as dg
from pydantic import Field

from finetune.train.tracking import TrackingSpec

TRACKER_ENV = "FINETUNE_TRACKER"


class Tracker(dg.ConfigurableResource, ABC):
    """The metric sink of a training run."""

    @abstractmethod
    def tracking(self) -> TrackingSpec:
        """What the trainer needs to know to write there."""


class NoTracker(Tracker):
    """Metrics stay in the asset's metadata and train_result.json only."""

    def tracking(self) -> TrackingSpec:
        return TrackingSpec(kind="none")


class TensorBoardTracker(Tracker):
    """Loss, lr, grad norm and tokens/s as TensorBoard events under the adapter's artifact folder."""

    def tracking(self) -> TrackingSpec:
        return TrackingSpec(kind="tensorboard")


class MLflowTracker(Tracker):
    """Params and per-step metrics logged to an MLflow tracking server (needs `pip install mlflow-skinny`)."""

    tracking_uri: str = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", ""),
        description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI), e.g. http://127.0.0.1:5000.",
    )
    experiment: str = Field(default="gated-finetune", description="MLflow experiment name.")

    def tracking(self) -> TrackingSpec:
        return TrackingSpec(kind="mlflow", mlflow_tracking_uri=self.tracking_uri, mlflow_experiment=self.experiment)


TRACKERS: dict[str, type[Tracker]] = {"none": NoTracker, "tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}


def tracker_from_env() -> Tracker:
    """The tracker named by $FINETUNE_TRACKER (default tensorboard)."""
    name = os.environ.get(TRACKER_ENV, "tensorboard")
    if name not in TRACKERS:
        raise ValueError(f"{TRACKER_ENV} must be one of {', '.join(TRACKERS)}, got {name!r}")
    return TRACKERS[name]()
