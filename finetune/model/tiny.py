"""The embedded default base model: a tiny Llama plus a byte-level BPE tokenizer, built offline.

No PyPI package ships a small pretrained causal LM and nothing may be downloaded, so the
default base is built here from a config, deterministically, and briefly pre-trained on a
bundled corpus so that "tuned vs base" compares against a model that knows something.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BUILDER_VERSION = "1"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML layout; the {% generation %} markers let apply_chat_template return an assistant mask.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_ARCH = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
VOCAB_SIZE = 1500
PRETRAIN = {"steps": 300, "batch_size": 16, "block": 64, "lr": 3e-3, "seed": 0}


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (any UTF-8 text encodes; nothing is ever unknown)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def _pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, lines: list[str]) -> list[float]:
    ids: list[int] = []
    for line in lines:
        ids += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.pad_token_id]
    block = PRETRAIN["block"]
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(PRETRAIN["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.01)
    steps = PRETRAIN["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (PRETRAIN["batch_size"],), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def embedded_fingerprint(corpus: Path) -> str:
    """Hash of everything the embedded model depends on, used as its cache key."""
    spec = json.dumps({"v": BUILDER_VERSION, "arch": TINY_ARCH, "vocab": VOCAB_SIZE, "pretrain": PRETRAIN})
    digest = hashlib.sha256(spec.encode())
    digest.update(corpus.read_bytes())
    return digest.hexdigest()[:12]


EMBEDDED_PREFIX = "embedded-tiny-"


def build_embedded_model(corpus: Path, cache_dir: Path) -> Path:
    """Build (or reuse from cache) the tiny base model and tokenizer; returns its folder.

    The folder is written under a temp name and renamed, so a killed build never leaves a
    half-written model that later runs would load.
    """
    if not corpus.is_file():
        raise FileNotFoundError(
            f"pre-training corpus for the embedded model not found: {corpus} (paths.pretrain_corpus)"
        )
    target = cache_dir / f"{EMBEDDED_PREFIX}{embedded_fingerprint(corpus)}"
    if (target / "model.safetensors").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    torch.manual_seed(PRETRAIN["seed"])
    tokenizer = train_tokenizer(lines)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **TINY_ARCH,
    )
    model = LlamaForCausalLM(config)
    losses = _pretrain(model, tokenizer, lines)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(
            json.dumps({"pretrain_loss_first": losses[0], "pretrain_loss_last": losses[-1], **PRETRAIN}, indent=2)
        )
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
