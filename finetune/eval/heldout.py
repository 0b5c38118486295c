"""Per-example held-out loss: the mean negative log-likelihood of each test record's response tokens."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from finetune.data.records import Record
from finetune.sft import IGNORE_INDEX, tokenize_conversation


@torch.no_grad()
def heldout_losses(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[Record],
    cutoff_len: int,
    batch_size: int = 16,
) -> list[float]:
    """One loss per record, over the tokens training learns from (assistant turns), so tuned and base are
    compared example by example. A record with no response token inside `cutoff_len` is left out (NaN)."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = [tokenize_conversation(tokenizer, r["messages"], cutoff_len) for r in records]
    losses: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
            mask[i, : len(e["input_ids"])] = 1
        # Prompt tuning prepends virtual tokens to the logits: keep the positions of the real tokens.
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:].float()
        target = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counted = (target != IGNORE_INDEX).sum(dim=1)
        per_example = nll.sum(dim=1) / counted.clamp(min=1)
        losses += [float(x) if n else float("nan") for x, n in zip(per_example.tolist(), counted.tolist(), strict=True)]
    return losses
