"""What a training run produced: the result record, its loss curve, and the metadata it reports to an orchestrator."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "train_result.json"


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


RESULT_ENTRY = "train_result"  # the metadata entry holding the whole TrainResult


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
