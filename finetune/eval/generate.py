"""Batched greedy generation through the chat template."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.model.chat_template import stop_token_ids
from finetune.model.conversation import hf_conversation


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    desc: str = "generating",
) -> list[str]:
    """Greedy-decode one response per conversation through the tokenizer's chat template (left-padded
    batches; stops at EOS or the template's end-of-turn token)."""
    model.eval()
    outputs: list[str] = []
    batches = range(0, len(conversations), batch_size)
    stops = stop_token_ids(tokenizer)
    for i in tqdm(batches, desc=desc, unit="batch", disable=None, leave=False):
        # Tool-calling turns (function_call / observation) take the template's shape, as in training.
        prompts = [
            tokenizer.apply_chat_template(
                hf_conversation(tokenizer, c, None)[0], tokenize=False, add_generation_prompt=True
            )
            for c in conversations[i : i + batch_size]
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
        )
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        outputs += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        if progress:
            progress(len(outputs), len(conversations))
    return outputs
