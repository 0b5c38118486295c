"""One training job described by a JSON-able spec: what the training asset hands to its (sub)process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig, load_config
from finetune.data.records import read_jsonl
from finetune.sft import sft_settings
from finetune.train.distributed import end_process_group, launched_world_size, start_process_group
from finetune.train.methods import training_device
from finetune.train.trainer import TrainResult, train_adapter

ENTRY_MODULE = "train_process"


def training_spec(config_path: str, overrides: list[str], split_dir: str, base_path: str, out_dir: str) -> dict:
    """Everything the training process needs, as plain strings (it travels as Dagster Pipes extras)."""
    return {
        "config_path": config_path,
        "overrides": list(overrides),
        "split_dir": split_dir,
        "base_path": base_path,
        "out_dir": out_dir,
    }


def run_training_job(spec: dict[str, Any], log: Callable[[str], None] = print) -> TrainResult:
    """Load the config and splits named by `spec` and train; the same call in-process and in a subprocess."""
    cfg = load_config(Path(spec["config_path"]), spec["overrides"])
    split_dir = Path(spec["split_dir"])
    distributed = launched_world_size() > 1
    if distributed:  # started by torchrun / accelerate launch with several processes
        start_process_group(use_cuda=training_device(cfg.train) == "cuda")
    try:
        return train_adapter(
            read_jsonl(split_dir / "train.jsonl"),
            read_jsonl(split_dir / "val.jsonl"),
            spec["base_path"],
            cfg.train,
            sft_settings(split_dir, cfg.sft),  # sft.cutoff_len auto: the cutoff the sft_dataset stage chose
            Path(spec["out_dir"]),
            cfg.model.trust_remote_code,
            log=log,
            checkpoint_root=cfg.work_dir / "checkpoints",  # shared across runs: a re-run with the same inputs resumes
        )
    finally:
        if distributed:
            end_process_group()


def launch_command(cfg: TrainConfig) -> list[str]:
    """The command that starts the training process: plain Python, or behind torchrun / accelerate launch."""
    if cfg.launch_prefix:
        return [*cfg.launch_prefix, "-m", ENTRY_MODULE]
    return [sys.executable, "-m", ENTRY_MODULE]
