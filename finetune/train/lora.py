"""QLoRA / LoRA supervised fine-tuning: a small, readable training loop over response-only labels."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from finetune.config import SftConfig, TrainConfig
from finetune.data.records import Record, sha256_file, write_json
from finetune.model.loading import load_tokenizer
from finetune.sft import IGNORE_INDEX, tokenize_conversation
from finetune.train.methods import build_trainable_model, weights_file


class TrainingError(RuntimeError):
    """Training produced a result that must not be used (NaN loss, dead gradients)."""


@dataclass
class TrainResult:
    """What a training run produced and the numbers the training gates read."""

    adapter_dir: str
    adapter_sha256: str
    method: str
    steps: int
    losses: list[float]
    val_loss_before: float
    val_loss_after: float
    trainable_params: int
    total_params: int
    params_with_grad: int
    params_changed: int
    seconds: float
    tokens_per_second: float
    loss_curve_png: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get label -100 and attention 0."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """Token-weighted mean loss over examples (NaN when there are none)."""
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)


def save_loss_curve(losses: list[float], path: Path, val: tuple[float, float] | None = None) -> None:
    """Plot the per-step training loss (and val loss before/after) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, label="train loss")
    if val is not None:
        ax.scatter([0, len(losses)], list(val), color="tab:orange", label="val loss", zorder=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_adapter(
    train: list[Record],
    val: list[Record],
    base_path: str,
    cfg: TrainConfig,
    sft: SftConfig,
    out_dir: Path,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune LoRA adapters on `train` and save them as safetensors under `out_dir/adapter`.

    Raises:
        TrainingError: the loss became NaN/inf, or a trainable parameter got no gradient.
    """
    started = time.perf_counter()
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(base_path, trust_remote_code)
    train_ex = [tokenize_conversation(tokenizer, r["messages"], sft.cutoff_len) for r in train]
    val_ex = [tokenize_conversation(tokenizer, r["messages"], sft.cutoff_len) for r in val]
    model = build_trainable_model(base_path, cfg, trust_remote_code)
    pad_id = tokenizer.pad_token_id

    # Evaluating before training is deliberate: it is what triggers bitsandbytes' CPU
    # repack bug, so the gradient check below proves the workaround still holds.
    val_before = mean_loss(model, val_ex, pad_id)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    initial = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    rng = random.Random(cfg.seed)
    losses: list[float] = []
    with_grad: set[str] = set()
    tokens = 0
    step = 0
    log(f"training {cfg.method}: {len(train_ex)} examples, {total_steps} steps, {len(trainable)} trainable tensors")
    while step < total_steps:
        order = list(range(len(train_ex)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            if step >= total_steps:
                break
            model.train()
            batch = collate([train_ex[j] for j in order[i : i + cfg.batch_size]], pad_id)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss.item()} at step {step + 1}; lower train.learning_rate (now {cfg.learning_rate})"
                )
            loss.backward()
            with_grad.update(n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0)
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step % max(1, total_steps // 10) == 0 or step == total_steps:
                log(f"step {step}/{total_steps} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e}")

    missing = sorted(set(trainable) - with_grad)
    if missing:
        raise TrainingError(
            f"{len(missing)} of {len(trainable)} trainable tensors never received a gradient "
            f"(first: {missing[0]}); training would silently do nothing"
        )
    changed = sum(1 for n, p in trainable.items() if not torch.equal(p.detach(), initial[n]))
    val_after = mean_loss(model, val_ex, pad_id)
    seconds = time.perf_counter() - started

    adapter_dir = out_dir / "adapter"  # adapter files, or the full model for full/freeze/bitfit
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    curve = out_dir / "loss_curve.png"
    save_loss_curve(losses, curve, (val_before, val_after))
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        adapter_sha256=sha256_file(weights_file(adapter_dir)),
        method=cfg.method,
        steps=step,
        losses=losses,
        val_loss_before=val_before,
        val_loss_after=val_after,
        trainable_params=sum(p.numel() for p in trainable.values()),
        total_params=sum(p.numel() for p in model.parameters()),
        params_with_grad=len(with_grad),
        params_changed=changed,
        seconds=seconds,
        tokens_per_second=tokens / seconds,
        loss_curve_png=str(curve),
        extra={"trainable_tensors": len(trainable)},
    )
    write_json(out_dir / "train_result.json", result.to_dict())
    return result


def load_train_result(out_dir: Path) -> TrainResult:
    """Read a saved TrainResult."""
    return TrainResult(**json.loads((out_dir / "train_result.json").read_text()))
