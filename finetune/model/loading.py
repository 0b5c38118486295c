"""Resolve and load the configured base model (embedded tiny default, local path or hub id)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finetune.config import PipelineConfig, SftConfig
from finetune.model.chat_template import apply_template
from finetune.model.tiny import build_embedded_model

EMBEDDED = "embedded-tiny"


def resolve_base_model(cfg: PipelineConfig) -> str:
    """Return a path or hub id for `from_pretrained`; builds the embedded model when configured."""
    if cfg.model.base == EMBEDDED:
        return str(build_embedded_model(cfg.resolve(cfg.paths.pretrain_corpus), cfg.resolve(cfg.paths.model_cache)))
    local = cfg.resolve(cfg.model.base)
    return str(local) if local.exists() else cfg.model.base


def model_hash(path: str) -> str:
    """sha256 over a local model folder's weight files (empty string for a hub id not on disk)."""
    folder = Path(path)
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer with left padding (generation) and a pad token; a chat template is not required
    (token counting and C-Eval need none; `load_chat_tokenizer` is for formatting conversations)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_chat_tokenizer(path: str, sft: SftConfig, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """`load_tokenizer` with the chat template `sft.template` names (the model's own when empty).

    Raises:
        ValueError: `sft.template` is unknown, or empty while the model ships no template.
    """
    tokenizer = load_tokenizer(path, trust_remote_code)
    apply_template(tokenizer, sft.template, sft.enable_thinking)
    return tokenizer


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def safetensors_adapter(folder: str | Path) -> str:
    """`folder` as peft's from_pretrained takes it, after checking that its weights are safetensors.

    peft has no use_safetensors switch: given only adapter_model.bin it unpickles that file.

    Raises:
        FileNotFoundError: the folder has no adapter_model.safetensors.
    """
    weights = Path(folder) / ADAPTER_WEIGHTS
    if not weights.is_file():
        found = sorted(p.name for p in Path(folder).glob("adapter_model.*")) if Path(folder).is_dir() else []
        raise FileNotFoundError(
            f"adapter folder {folder} has no {ADAPTER_WEIGHTS} (found: {', '.join(found) or 'nothing'}); only "
            "safetensors weights are loaded - convert a pickled adapter with safetensors.torch.save_file"
        )
    return str(folder)


def disable_bnb_cpu_bf16_repack(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 weight repack on CPU; returns the number of layers touched.

    After any no-grad forward, that repack left every LoRA tensor without a gradient
    (bitsandbytes 0.50.2, see ENV_NOTES): training then silently does nothing.
    """
    import bitsandbytes as bnb

    touched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def load_causal_lm(
    path: str,
    quantize_4bit: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load a causal LM on `device` in `dtype`; with `quantize_4bit`, as nf4 double-quantised weights computing in `dtype`."""
    # Safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when it is loaded.
    kwargs: dict = {"trust_remote_code": trust_remote_code, "dtype": dtype, "use_safetensors": True}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantize_4bit or device != "cpu":
        # Under torchrun each rank has set its own GPU as the current one.
        kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantize_4bit:
        disable_bnb_cpu_bf16_repack(model)
    model.eval()
    return model
