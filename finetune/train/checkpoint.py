"""Resumable training checkpoints: trainable tensors and optimizer moments (safetensors), schedule and loop state (JSON).

A checkpoint belongs to one run key (what determines the weights: method and hyper-parameters,
base model, records, ranks): a re-run with identical inputs resumes, any change starts afresh.
Writes go to a temporary folder renamed into place, so a kill mid-write leaves the previous
checkpoint intact. Nothing is pickled, so a planted checkpoint cannot run code when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def run_key(*parts: Any) -> str:
    """A short hash identifying a training run by everything that determines its result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors, by parameter name (a GPU keeps no second copy of them)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors back into the model."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def best_weights_file(folder: Path, step: int) -> Path:
    """Where the best-validation weights of step `step` are kept, beside the checkpoint `folder`."""
    return folder.with_name(folder.name + ".best") / f"step-{step}.safetensors"


def save_best_weights(folder: Path, model, step: int) -> Path:
    """Write the trainable weights as the best so far: on disk, since for full fine-tuning they are a whole model.

    Older best files stay until a checkpoint that no longer refers to them is written.
    """
    path = best_weights_file(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(model), tmp)
    os.replace(tmp, path)
    return path


def _split_optimizer_state(optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's and scheduler's state as tensors (for safetensors) and plain values (for JSON)."""
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in saved["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars, "scheduler": scheduler.state_dict()}


def _restore_optimizer_state(optimizer, scheduler, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in plain["scalars"].items()}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    scheduler.load_state_dict(plain["scheduler"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop: dict[str, Any]) -> None:
    """Atomically replace `folder` with the current training state (`loop` is the JSON-able loop state)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / TRAINABLE_FILE)
    tensors, plain = _split_optimizer_state(optimizer, scheduler)
    save_file(tensors, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"loop": loop, "optimizer": plain}), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        # A kill during the last save's cleanup leaves a half-deleted .old beside a complete folder; a
        # non-empty target would make the rename fail (ENOTEMPTY), so the stale copy goes first.
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    keep = best_weights_file(folder, loop["best_step"])
    for stale in keep.parent.glob("step-*.safetensors"):  # superseded best weights the checkpoint no longer names
        if stale != keep:
            stale.unlink()


def remove_checkpoint(folder: Path) -> None:
    """Delete a finished run's checkpoint and best weights."""
    for path in (folder, *(folder.with_name(folder.name + end) for end in (".old", ".tmp", ".best"))):
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(folder: Path, key: str, model, optimizer, scheduler) -> tuple[dict, Path | None] | None:
    """Restore a checkpoint written for the same run key; returns its loop state and best weights' file, or None."""
    named = folder  # best weights sit beside the checkpoint's own name, whichever copy is read
    state_file = folder / STATE_FILE
    previous = folder.with_name(folder.name + ".old") / STATE_FILE
    if not state_file.is_file() and previous.is_file():  # killed between save_checkpoint's two renames
        folder, state_file = previous.parent, previous
    if not state_file.is_file():
        return None
    saved = json.loads(state_file.read_text(encoding="utf-8"))
    loop = saved["loop"]
    if loop.get("key") != key:
        return None
    load_trainable_state(model, load_file(folder / TRAINABLE_FILE))
    _restore_optimizer_state(optimizer, scheduler, load_file(folder / OPTIMIZER_FILE), saved["optimizer"])
    best = best_weights_file(named, loop["best_step"])
    return loop, best if best.is_file() else None
