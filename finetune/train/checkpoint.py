"""Resumable training checkpoints: trainable tensors (safetensors), optimizer and schedule, loop state.

A checkpoint belongs to one run key (config, base model, data): a re-run with identical inputs
resumes, any change starts afresh. Writes go to a temporary folder renamed into place, so a
kill mid-write leaves the previous checkpoint intact.
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


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop: dict, best: dict | None) -> None:
    """Atomically replace `folder` with the current training state."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    if best:
        save_file(best, tmp / "best.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(loop), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, key: str, model, optimizer, scheduler) -> tuple[dict, dict | None] | None:
    """Restore a checkpoint written for the same run key; None when there is none to resume."""
    state_file = folder / "state.json"
    if not state_file.is_file():
        return None
    loop = json.loads(state_file.read_text(encoding="utf-8"))
    if loop.get("key") != key:
        return None
    load_trainable_state(model, load_file(folder / "trainable.safetensors"))
    saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    best = load_file(folder / "best.safetensors") if (folder / "best.safetensors").is_file() else None
    return loop, best
