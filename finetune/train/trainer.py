"""Training's public face: train on records held in memory, and the result that evaluation and release read.

The run itself is `finetune.train.recipe` (setup, train, validate, save, cleanup), started from one
`TrainingSpec`; this module adds the convenience of passing records instead of the sft_dataset stage's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from finetune.config import SftConfig, TrainConfig
from finetune.data.records import Record
from finetune.model.loading import load_chat_tokenizer
from finetune.sft import encode_split
from finetune.train.examples import write_split
from finetune.train.guards import TrainingError
from finetune.train.job import RESULT_FILE, TrainingSpec, TrainResult, load_train_result
from finetune.train.recipe import run_training
from finetune.train.tracking import TrackingSpec, save_loss_curve

__all__ = [
    "RESULT_FILE",
    "TrainResult",
    "TrainingError",
    "load_train_result",
    "save_loss_curve",
    "train_adapter",
    "write_encoded_splits",
]


def train_adapter(
    train: list[Record],
    val: list[Record],
    base_path: str,
    cfg: TrainConfig,
    sft: SftConfig,
    out_dir: Path,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
    checkpoint_root: Path | None = None,
    tracking: TrackingSpec | None = None,
) -> TrainResult:
    """Fine-tune with `cfg.method` on in-memory splits; the result is saved under `out_dir/adapter`.

    The splits are encoded with the base model's tokenizer and `sft.template`, written to `out_dir/splits`
    as the sft_dataset stage writes them, and trained through the same `TrainingSpec` as every other entry
    point. Checkpoints go under `checkpoint_root/<run key>` (default `out_dir/checkpoints`).

    Raises:
        ValueError: a record has no trained token within the cutoff.
        TrainingError: NaN/inf or collapsed loss, exploding gradients, or a trainable tensor without gradient.
    """
    split_dir = write_encoded_splits(
        Path(out_dir) / "splits", {"train": train, "val": val}, base_path, sft, trust_remote_code
    )
    spec = TrainingSpec(
        train=cfg,
        base_path=base_path,
        trust_remote_code=trust_remote_code,
        split_dir=split_dir,
        out_dir=Path(out_dir),
        checkpoint_root=checkpoint_root or Path(out_dir) / "checkpoints",
        tracking=tracking or TrackingSpec(),
    )
    return run_training(spec, log=log)


def write_encoded_splits(
    folder: Path, splits: dict[str, list[Record]], base_path: str, sft: SftConfig, trust_remote_code: bool = False
) -> Path:
    """Encode in-memory splits as the sft_dataset stage does (the base model's tokenizer, `sft.template`, a numeric
    `sft.cutoff_len`) and write them to `folder`, which training then reads.

    Raises:
        ValueError: a record has no trained token within the cutoff, or the cutoff is `auto`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_chat_tokenizer(base_path, sft, trust_remote_code)
    for name, records in splits.items():
        write_split(folder, name, encode_split(tokenizer, records, _numeric_cutoff(sft)))
    return folder


def _numeric_cutoff(sft: SftConfig) -> int:
    if sft.cutoff_len == "auto":
        raise ValueError(
            "sft.cutoff_len is auto, but train_adapter gets records, not the sft_dataset stage that resolves it; "
            "pass the cutoff that stage chose (its report's cutoff_len) or a number"
        )
    return sft.cutoff_len
