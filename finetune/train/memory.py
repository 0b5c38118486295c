"""A memory estimate printed before training, per method: weights + gradients + optimizer + activations."""

from __future__ import annotations

import torch


def estimate_memory(
    model: torch.nn.Module, batch_size: int, seq_len: int, bf16: bool = False, checkpointing: bool = False
) -> dict[str, float]:
    """Rough peak training memory in GiB.

    weights: the bytes actually stored (4-bit weights count as their packed uint8 storage);
    gradients: 4 bytes per trainable parameter; optimizer: AdamW's two fp32 moments, 8 bytes per
    trainable parameter; activations: Korthikanti et al. (2022), s*b*h*(34 + 5*a*s/h) bytes per
    layer at 16-bit, doubled for fp32; with gradient checkpointing only each layer's 16-bit input
    (2*s*b*h) is kept, plus one layer's full activations during recomputation. Frameworks add workspace.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0)
    layers = getattr(config, "num_hidden_layers", 0)
    heads = getattr(config, "num_attention_heads", 1)
    per_layer = seq_len * batch_size * hidden * (34 + 5 * heads * seq_len / max(hidden, 1)) if hidden else 0
    scale = 1 if bf16 else 2
    activations = (
        scale * (2 * seq_len * batch_size * hidden * layers + per_layer)
        if checkpointing
        else (scale * per_layer * layers)
    )
    gib = 1024**3
    parts = {
        "weights_gib": weights / gib,
        "gradients_gib": 4 * trainable / gib,
        "optimizer_gib": 8 * trainable / gib,
        "activations_gib": activations / gib,
    }
    parts["total_gib"] = sum(parts.values())
    return parts
