"""A memory estimate printed before training, per method: weights + gradients + optimizer + activations + logits."""

from __future__ import annotations

from typing import Any

import torch

GIB = 1024**3
# fp32 copies of a batch x seq x vocab tensor alive at the peak of the loss: the logits upcast for the loss,
# log-softmax's output and the gradient flowing back into the logits.
LOGIT_COPIES = 3


def sequence_bytes(
    config: Any, batch_size: int, seq_len: int, bf16: bool = False, checkpointing: bool = False
) -> dict[str, float]:
    """Bytes that grow with the sequence: activations and logits, from a model config alone.

    activations: Korthikanti et al. (2022), s*b*h*(34 + 5*a*s/h) bytes per layer at 16-bit, doubled for fp32;
    with gradient checkpointing only each layer's 16-bit input (2*s*b*h) is kept, plus one layer's full
    activations during recomputation. logits: b*s*vocab fp32 values, LOGIT_COPIES times; with a
    150k-token vocabulary they outweigh everything else in a small model.
    """
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 1) or 1
    vocab = getattr(config, "vocab_size", 0) or 0
    per_layer = seq_len * batch_size * hidden * (34 + 5 * heads * seq_len / max(hidden, 1)) if hidden else 0
    scale = 1 if bf16 else 2
    activations = (
        scale * (2 * seq_len * batch_size * hidden * layers + per_layer)
        if checkpointing
        else scale * per_layer * layers
    )
    return {"activations": activations, "logits": LOGIT_COPIES * 4 * batch_size * seq_len * vocab}


def estimate_memory(
    model: torch.nn.Module, batch_size: int, seq_len: int, bf16: bool = False, checkpointing: bool = False
) -> dict[str, float]:
    """Rough peak training memory in GiB.

    weights: the bytes actually stored (4-bit weights count as their packed uint8 storage);
    gradients: 4 bytes per trainable parameter; optimizer: AdamW's two fp32 moments, 8 bytes per
    trainable parameter; activations and logits: `sequence_bytes`. Frameworks add workspace.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_sequence = sequence_bytes(getattr(model, "config", None), batch_size, seq_len, bf16, checkpointing)
    parts = {
        "weights_gib": weights / GIB,
        "gradients_gib": 4 * trainable / GIB,
        "optimizer_gib": 8 * trainable / GIB,
        "activations_gib": per_sequence["activations"] / GIB,
        "logits_gib": per_sequence["logits"] / GIB,
    }
    parts["total_gib"] = sum(parts.values())
    return parts


def longest_sequence_within(
    config: Any, batch_size: int, budget_gib: float, bf16: bool = False, checkpointing: bool = False
) -> int:
    """The longest sequence whose activations and logits (`sequence_bytes`) fit `budget_gib`, capped at the
    model's max_position_embeddings when it has one."""
    ceiling = getattr(config, "max_position_embeddings", None) or 1 << 20

    def fits(n: int) -> bool:
        return sum(sequence_bytes(config, batch_size, n, bf16, checkpointing).values()) <= budget_gib * GIB

    lo, hi = 0, ceiling  # the bytes grow with the length, so bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def describe(estimate: dict[str, float]) -> str:
    """An `estimate_memory` result as one log line."""
    m = estimate
    return (
        f"weights {m['weights_gib']:.3f} GiB, gradients {m['gradients_gib']:.3f}, optimizer "
        f"{m['optimizer_gib']:.3f}, activations {m['activations_gib']:.3f} => ~{m['total_gib']:.3f} GiB"
    )
