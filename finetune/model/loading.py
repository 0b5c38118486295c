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


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def looks_like_path(ref: str) -> bool:
    """A model reference meant as a folder: absolute, ./ ../ ~, or more than the one slash of `org/name`."""
    return Path(ref).is_absolute() or ref.startswith((".", "~")) or ref.count("/") > 1 or ref.endswith("/")


def check_model_folder(folder: Path, setting: str = "model.base") -> None:
    """A model folder must hold a config and safetensors weights.

    Raises:
        FileNotFoundError: naming the missing file (weights before the tokenizer: a folder without
            weights otherwise fails later in the tokenizer's loader with an unrelated message).
    """
    present = sorted(p.name for p in folder.iterdir())[:12]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{setting}: {folder} has no config.json, so it is not a Hugging Face model folder (it holds {present})"
        )
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        pickled = [p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern)]
        hint = (
            f"; it has only pickled weights {pickled}, which are never loaded (they can run code): convert them "
            "with `save_pretrained(..., safe_serialization=True)`"
            if pickled
            else f" (it holds {present})"
        )
        raise FileNotFoundError(
            f"{setting}: {folder} has no model weights: expected model.safetensors or sharded "
            f"model-0000N-of-0000M.safetensors with model.safetensors.index.json{hint}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{setting}: {folder} has weights but no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
        )


def resolve_base_model(cfg: PipelineConfig) -> str:
    """Return a path or hub id for `from_pretrained`; builds the embedded model when configured.

    Raises:
        FileNotFoundError: `model.base` names a folder that does not exist or lacks weights, config or tokenizer.
    """
    if cfg.model.base == EMBEDDED:
        return str(build_embedded_model(cfg.resolve(cfg.paths.pretrain_corpus), cfg.resolve(cfg.paths.model_cache)))
    local = cfg.resolve(cfg.model.base)
    if local.is_dir():
        check_model_folder(local)
        return str(local)
    if local.exists() or looks_like_path(cfg.model.base):
        what = "is a file, not a model folder" if local.exists() else "does not exist"
        raise FileNotFoundError(
            f"model.base: {local} {what} (relative paths resolve against the config file's folder, "
            f"{cfg.base_dir}); give a local model folder, a hub id like org/name, or embedded-tiny"
        )
    return cfg.model.base


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


def not_found_locally_or_on_hub(ref: str, err: OSError) -> OSError:
    """The error for a model reference that is no local folder and that the hub did not provide."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OSError(
        f"model {ref!r}: there is no local folder {Path(ref).resolve()} and the Hugging Face hub did not provide "
        f"it ({first}). If you meant a folder, check the path (model.base resolves against the config file's "
        "folder); a hub id needs network access or a filled HF cache"
    )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer with left padding (generation) and a pad token; a chat template is not required
    (token counting and C-Eval need none; `load_chat_tokenizer` is for formatting conversations)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(path).exists():
            raise
        raise not_found_locally_or_on_hub(path, err) from err
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
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if Path(path).exists():
            raise
        raise not_found_locally_or_on_hub(path, err) from err
    if quantize_4bit:
        disable_bnb_cpu_bf16_repack(model)
    model.eval()
    return model
