"""Merge a LoRA adapter into a full-precision copy of its base and prove the merge changed nothing.

The silent failure this guards against: a merged model that quietly behaves like the base
(adapter not applied, wrong base, dtype mix-up). The merged model's logits must equal the
base+adapter logits on a few prompts before the merged weights are written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from finetune.model.loading import load_causal_lm, load_tokenizer, safetensors_adapter

PROBE_TEXTS = ["法国的首都是哪里？", "What is the opposite of hot?", "计算3加4等于多少？"]


class MergeError(RuntimeError):
    """The merged model does not reproduce base+adapter."""


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return model(**enc).logits.float()


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, atol: float = 1e-4) -> dict:
    """Write `out_dir` (safetensors + tokenizer + config) loadable with AutoModelForCausalLM.from_pretrained."""
    # Training saved its tokenizer, with the chat template it formatted with, beside the adapter.
    has_tokenizer = (Path(adapter_dir) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base_path)
    with_adapter = PeftModel.from_pretrained(load_causal_lm(base_path), safetensors_adapter(adapter_dir)).eval()
    expected = _logits(with_adapter, tokenizer, PROBE_TEXTS)
    base_logits = _logits(load_causal_lm(base_path).eval(), tokenizer, PROBE_TEXTS)
    merged = with_adapter.merge_and_unload().eval()
    got = _logits(merged, tokenizer, PROBE_TEXTS)
    diff = (got - expected).abs().max().item()
    if diff > atol:
        raise MergeError(f"merged logits differ from base+adapter by {diff:.2e} (> {atol}); not writing {out_dir}")
    moved = (expected - base_logits).abs().max().item()
    if moved == 0.0:
        raise MergeError("the adapter does not change the base model's logits at all; refusing to ship a no-op merge")
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"max_logit_diff_vs_adapter": diff, "max_logit_change_vs_base": moved}
