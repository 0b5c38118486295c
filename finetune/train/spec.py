"""The one typed description of a training run: the CLI, the in-process launcher and the Pipes child start here.

It is built once from the validated pipeline config and crosses process boundaries as JSON that
pydantic validates again on the other side, so no process re-reads the YAML or parses strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune.config import PipelineConfig, TrainConfig
from finetune.train.tracking import TrackingSpec

# Settings of `train` that decide when to write a checkpoint or whether to read one, not what is learned.
NOT_WEIGHT_SETTINGS = {"resume", "save_steps"}


class TrainingSpec(BaseModel):
    """Everything one training run needs, and nothing it does not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainConfig = Field(description="The method and its hyper-parameters (the config's `train` section).")
    base_path: str = Field(description="Local folder or hub id of the base model.")
    trust_remote_code: bool = Field(default=False, description="model.trust_remote_code.")
    split_dir: Path = Field(
        description="The sft_dataset stage's folder: its encoded train and val examples, with the template and "
        "cutoff they were encoded with."
    )
    out_dir: Path = Field(description="Where the adapter (or model), loss curve and train_result.json are written.")
    checkpoint_root: Path = Field(description="Checkpoints live under <checkpoint_root>/<run key>.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Where per-step metrics go.")

    def weight_inputs(self) -> dict[str, Any]:
        """What, besides the encoded examples, determines the trained weights: the run key hashes exactly this."""
        return {"train": self.train.model_dump(exclude=NOT_WEIGHT_SETTINGS), "base_path": self.base_path}


def training_spec(
    cfg: PipelineConfig,
    split_dir: str | Path,
    base_path: str,
    out_dir: str | Path,
    tracking: TrackingSpec | None = None,
) -> TrainingSpec:
    """The spec of training on the examples in `split_dir` with the validated `cfg`; checkpoints go under work_dir.

    The SFT settings are not part of it: the cutoff and the template are those the examples were encoded with.
    """
    return TrainingSpec(
        train=cfg.train,
        base_path=base_path,
        trust_remote_code=cfg.model.trust_remote_code,
        split_dir=Path(split_dir),
        out_dir=Path(out_dir),
        checkpoint_root=cfg.work_dir / "checkpoints",  # shared across runs: a re-run with the same inputs resumes
        tracking=tracking or TrackingSpec(),
    )
