"""The fine-tuning methods of the seeds: which parameters train, and how the result is saved and reloaded.

Adapter methods (peft): qlora (4-bit nf4 base + LoRA), lora, dora, ia3, prompt_tuning.
Weight methods (plain torch): full, freeze (only the last N decoder layers), bitfit (biases only;
LLaMA-style models have no biases, so their RMSNorm gains are trained instead and the log says so).
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)
from transformers import AutoConfig

from finetune.config import TrainConfig
from finetune.model.loading import load_causal_lm, safetensors_adapter
from finetune.model.tiny import EMBEDDED_PREFIX

ADAPTER_METHODS = ("qlora", "lora", "dora", "ia3", "prompt_tuning")
WEIGHT_METHODS = ("full", "freeze", "bitfit")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
log = logging.getLogger(__name__)


def additional_targets(cfg: TrainConfig, base_path: str) -> list[str] | None:
    """Modules trained in full beside the adapters; `auto` means embeddings and head for the embedded tiny base."""
    if cfg.additional_target == "auto":
        return ["embed_tokens", "lm_head"] if Path(base_path).name.startswith(EMBEDDED_PREFIX) else None
    return cfg.additional_target or None


# IA3 rescales keys/values (or the fused projection holding them) and the feed-forward input (Liu et al. 2022).
# peft's table covers most architectures by model_type; these have fused projections it does not list.
_IA3_EXTRA = {
    "phi3": (["qkv_proj", "down_proj"], ["down_proj"]),
    "chatglm": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "qwen": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}
_IA3_DEFAULT = (["k_proj", "v_proj", "down_proj"], ["down_proj"])  # LLaMA module names


def model_type(base_path: str) -> str:
    """The architecture's `model_type` from the model folder's config ('' when it cannot be read)."""
    try:
        return AutoConfig.from_pretrained(base_path).model_type
    except (OSError, ValueError):
        return ""


def ia3_targets(arch: str) -> tuple[list[str], list[str]]:
    """(target modules, feed-forward modules) of IA3 for an architecture's model_type."""
    if arch in _IA3_EXTRA:
        return _IA3_EXTRA[arch]
    if arch in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        return (
            list(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[arch]),
            list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[arch]),
        )
    return _IA3_DEFAULT


def peft_config(cfg: TrainConfig, base_path: str):
    """The peft config for an adapter method, its target modules chosen for the base's architecture."""
    if cfg.method in ("qlora", "lora", "dora"):
        return LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            use_dora=cfg.method == "dora",
            modules_to_save=additional_targets(cfg, base_path),
            task_type="CAUSAL_LM",
        )
    if cfg.method == "ia3":
        targets, feedforward = ia3_targets(model_type(base_path))
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    return PromptTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens, prompt_tuning_init=PromptTuningInit.RANDOM, task_type="CAUSAL_LM"
    )


def target_shortfalls(model: torch.nn.Module, method: str) -> list[str]:
    """Where an adapter method adapts less than it should: a requested target module kind that is missing
    from some decoder layer (a fused architecture, a renamed module). Empty when every layer has each kind."""
    config = getattr(model, "peft_config", {}).get("default")
    requested = getattr(config, "target_modules", None)
    if not requested or isinstance(requested, str):
        return []
    # "all-linear" comes back from peft as whatever it found, sometimes as full module paths: only kinds count.
    kinds = [t for t in requested if not _LAYER.search(f".{t}.")]
    adapted: dict[str, set[int]] = {kind: set() for kind in kinds}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not (layer := _LAYER.search(name + ".")):
            continue
        for kind in kinds:
            if name.endswith("." + kind):
                adapted[kind].add(int(layer.group(1)))
    n_layers = len({int(m.group(1)) for n, _ in model.named_modules() if (m := _LAYER.search(n + "."))})
    return [
        f"{method}: target module {kind!r} is adapted in {len(layers)} of {n_layers} decoder layers"
        for kind, layers in sorted(adapted.items())
        if len(layers) < n_layers
    ]


def _select_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    names = [n for n, _ in model.named_parameters()]
    if cfg.method == "full":
        chosen = set(names)
    elif cfg.method == "freeze":
        layers = sorted({int(m.group(1)) for n in names if (m := _LAYER.search(n))})
        last = set(layers[-cfg.freeze_trainable_layers :])
        chosen = {n for n in names if (m := _LAYER.search(n)) and int(m.group(1)) in last}
    else:
        chosen = {n for n in names if n.endswith(".bias")}
        if not chosen:
            log.warning("bitfit: the model has no bias parameters (LLaMA-style); training its norm gains instead")
            chosen = {n for n in names if "norm" in n}
    for name, param in model.named_parameters():
        param.requires_grad = name in chosen


def resolve_device(choice: str, setting: str = "train.device") -> str:
    """`cuda` or `cpu` for a device setting (auto = cuda when torch sees a GPU)."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{setting} is cuda but this torch ({torch.__version__}) sees no CUDA GPU; "
            f"set {setting}: auto or cpu, or install a CUDA build of torch"
        )
    return choice


def training_device(cfg: TrainConfig) -> str:
    """The device training runs on."""
    return resolve_device(cfg.device)


def training_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    """The compute dtype: bf16 on a GPU and fp32 on CPU unless `train.precision` says otherwise."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.precision]


def autocast(device: str, dtype: torch.dtype):
    """bf16 mixed precision when asked for, a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_trainable_model(base_path: str, cfg: TrainConfig, trust_remote_code: bool = False) -> torch.nn.Module:
    """Load the base (4-bit for qlora) on the training device and make exactly the method's parameters trainable.

    Adapter methods keep the frozen base in the compute dtype (bf16 on a GPU); weight methods load
    fp32 weights so that the trained tensors and AdamW's moments keep full precision.
    """
    device = training_device(cfg)
    dtype = training_dtype(cfg, device)
    model = load_causal_lm(
        base_path,
        quantize_4bit=cfg.method == "qlora",
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=torch.float32 if cfg.method in WEIGHT_METHODS else dtype,
    )
    checkpointing = {"use_reentrant": False}  # the reentrant variant needs inputs that require grad
    if cfg.method in WEIGHT_METHODS:
        _select_weights(model, cfg)
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
        return model
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=checkpointing
        )
    elif cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    torch.manual_seed(cfg.seed)
    kinds = _module_kinds(model)
    model = get_peft_model(model, peft_config(cfg, base_path))
    for problem in target_shortfalls(model, cfg.method):
        log.warning("%s; this model's linear modules are %s (train.method)", problem, kinds)
    return model


def _module_kinds(model: torch.nn.Module) -> list[str]:
    """The distinct names of the linear modules inside decoder layers (what target_modules can match)."""
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _LAYER.search(n)}
    )


def weights_file(folder: Path) -> Path:
    """The safetensors file of a training output (adapter weights or a full model)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")


def is_adapter(folder: Path) -> bool:
    """True if a training output is a peft adapter (loaded on top of its base)."""
    return (Path(folder) / "adapter_config.json").is_file()


def load_tuned(
    base_path: str,
    folder: Path,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Reload a training output (not quantised): base + adapter, or the saved full model."""
    if is_adapter(folder):
        base = load_causal_lm(base_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype)
        return PeftModel.from_pretrained(base, safetensors_adapter(folder))
    return load_causal_lm(str(folder), trust_remote_code=trust_remote_code, device=device, dtype=dtype)


def load_adapters(base_path: str, adapters: dict[str, Path], trust_remote_code: bool = False) -> PeftModel:
    """One base with several named adapters (one per task); switch with `model.set_adapter(name)`.

    The base weights are loaded once; each adapter adds only its own tensors.
    """
    names = list(adapters)
    if not names:
        raise ValueError("load_adapters needs at least one adapter")
    base = load_causal_lm(base_path, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, safetensors_adapter(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(safetensors_adapter(adapters[name]), adapter_name=name)
    return model
