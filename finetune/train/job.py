"""A training job's two ends: the `TrainingSpec` it is given and the `TrainResult` it gives back.

The CLI, the in-process launcher and the Pipes child all start from one spec, built once from the
validated pipeline config; it crosses process boundaries as JSON that pydantic validates again on
the other side, so no process re-reads the YAML or parses strings. The result comes back the same
way, as the materialization metadata the Pipes child reports (`result_metadata`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune.config import PipelineConfig, TrainConfig
from finetune.train.tracking import TrackingSpec

RESULT_FILE = "train_result.json"
RESULT_ENTRY = "train_result"  # the metadata entry holding the whole TrainResult

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


@dataclass
class TrainResult:
    """What a training run produced and the numbers the training gates read."""

    adapter_dir: str
    adapter_sha256: str
    method: str
    steps: int
    losses: list[float]
    val_loss_before: float
    val_loss_after: float
    trainable_params: int
    total_params: int
    params_with_grad: int
    params_changed: int
    seconds: float
    tokens_per_second: float
    loss_curve_png: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def load_train_result(out_dir: Path) -> TrainResult:
    """Read the TrainResult a run wrote to `out_dir`."""
    return TrainResult(**json.loads((Path(out_dir) / RESULT_FILE).read_text(encoding="utf-8")))


def result_metadata(result: TrainResult) -> dict[str, dict[str, Any]]:
    """The materialization metadata of a training run, typed as Dagster Pipes carries it ({raw_value, type}).

    Plain JSON, so the library stays free of Dagster: the Pipes child reports it as is, and an
    in-process launcher converts it with the same types.
    """
    extra = result.extra
    entries: dict[str, tuple[Any, str]] = {
        "method": (result.method, "text"),
        "steps": (result.steps, "int"),
        "loss_first": (result.losses[0], "float"),
        "loss_last": (result.losses[-1], "float"),
        "val_loss_before": (result.val_loss_before, "float"),
        "val_loss_after": (result.val_loss_after, "float"),
        "trainable_params": (result.trainable_params, "int"),
        "tokens_per_second": (result.tokens_per_second, "float"),
        "peak_rss_gib": (extra["peak_rss_gib"], "float"),
        "peak_gpu_memory_gib": (extra["peak_gpu_memory_gib"], "float"),
        "memory_estimate_gib": (extra["memory_estimate"]["total_gib"], "float"),
        "adapter_sha256": (result.adapter_sha256, "text"),
        "resumed_from_step": (extra["resumed_from_step"], "int"),
        "world_size": (extra["world_size"], "int"),
        "adapter_dir": (result.adapter_dir, "path"),
        "result_file": (str(Path(result.adapter_dir).parent / RESULT_FILE), "path"),
        "loss_curve": (_png_markdown(result.loss_curve_png, "loss curve"), "md"),
        RESULT_ENTRY: (result.to_dict(), "json"),
    }
    return {name: {"raw_value": value, "type": kind} for name, (value, kind) in entries.items()}


def _png_markdown(path: str, title: str) -> str:
    """A PNG embedded in markdown, so the UI shows the picture itself."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"
