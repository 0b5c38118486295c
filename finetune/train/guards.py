"""Guards against silent training failures, each raising TrainingError with the setting to change.

A loss that collapses to ~0 means the answer leaks into the input or nearly every token is masked; a NaN
loss or an exploding gradient norm means the run diverges; a trainable tensor that never gets a gradient
means training silently does nothing to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

LOSS_COLLAPSE = 1e-4
COLLAPSE_STEPS = 5
GRAD_NORM_LIMIT = 1e4


class TrainingError(RuntimeError):
    """Training produced a result that must not be used (no trained token, NaN loss, dead gradients)."""


def check_loss_finite(loss: float, step: int, learning_rate: float) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} at step {step}; lower train.learning_rate (now {learning_rate})")


def check_grad_norm(grad_norm: float, step: int, learning_rate: float) -> None:
    if not math.isfinite(grad_norm) or grad_norm > GRAD_NORM_LIMIT:
        raise TrainingError(
            f"gradient norm {grad_norm:.3g} at step {step} (limit {GRAD_NORM_LIMIT:g}): training diverges; "
            f"lower train.learning_rate (now {learning_rate})"
        )


def check_not_collapsed(losses: list[float], step: int) -> None:
    if len(losses) >= COLLAPSE_STEPS and max(losses[-COLLAPSE_STEPS:]) < LOSS_COLLAPSE:
        raise TrainingError(
            f"loss collapsed below {LOSS_COLLAPSE} for {COLLAPSE_STEPS} steps at step {step}: the answer is "
            "probably visible in the input or almost every token is masked; check the mask preview"
        )


def check_every_tensor_learned(trainable: Iterable[str], with_grad: set[str]) -> None:
    names = list(trainable)
    missing = sorted(set(names) - with_grad)
    if missing:
        raise TrainingError(
            f"{len(missing)} of {len(names)} trainable tensors never received a gradient "
            f"(first: {missing[0]}); training would silently do nothing"
        )


def names_with_gradient(trainable: dict[str, torch.nn.Parameter]) -> set[str]:
    """The trainable tensors whose gradient after this backward pass is non-zero."""
    return {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
