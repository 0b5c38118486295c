"""QLoRA / LoRA supervised fine-tuning: a small, readable training loop over response-only labels."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from finetune.config import SftConfig, TrainConfig
from finetune.data.records import Record, sha256_file, write_json
from finetune.model.loading import load_chat_tokenizer
from finetune.process_memory import peak_rss_mib
from finetune.sft import IGNORE_INDEX, tokenize_record
from finetune.train.checkpoint import (
    best_weights_file,
    load_checkpoint,
    load_trainable_state,
    remove_checkpoint,
    run_key,
    save_best_weights,
    save_checkpoint,
)
from finetune.train.distributed import SINGLE, Ranks, barrier, current_ranks, rank_slice, reduce_sum, wrap_data_parallel
from finetune.train.memory import estimate_memory
from finetune.train.methods import build_trainable_model, training_device, training_dtype, weights_file
from finetune.train.tracking import MetricSinks


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


def autocast(device: str, dtype: torch.dtype):
    """bf16 mixed precision when asked for, a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """Move a collated batch to the model's device."""
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module,
    examples: list[dict],
    pad_id: int,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    ranks: Ranks = SINGLE,
) -> float:
    """Token-weighted mean loss over examples (NaN when there are none); ranks each score a share."""
    if not examples:
        return float("nan")
    model.eval()
    mine = [examples[i] for i in rank_slice(range(len(examples)), ranks)]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i : i + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with autocast(device, dtype):
            total += model(**to_device(batch, device)).loss.item() * n
        count += n
    total, count = reduce_sum([total, count], ranks, device)
    return total / max(count, 1)


def save_loss_curve(losses: list[float], path: Path, val: list[tuple[int, float]] | None = None) -> None:
    """Plot the per-step training loss and the validation losses to a PNG (train vs val shows overfitting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, label="train loss", linewidth=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:orange", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Guards against silent failures: a loss that collapses to ~0 means the answer leaks into the input
# or nearly every token is masked; an exploding gradient norm means the run is diverging.
LOSS_COLLAPSE = 1e-4
COLLAPSE_STEPS = 5
GRAD_NORM_LIMIT = 1e4


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """A hash of a tensor's bytes (any dtype, any device): tells whether training changed it."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).digest()


def pack_examples(examples: list[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Greedily concatenate tokenized examples, in order, into sequences of at most `max_len` tokens.

    Labels travel with their tokens, so exactly the same tokens are trained as without packing.
    """
    packed: list[dict[str, list[int]]] = []
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        if packed and len(packed[-1]["input_ids"]) + len(ids) <= max_len:
            packed[-1]["input_ids"] += ids
            packed[-1]["labels"] += labels
        else:
            packed.append({"input_ids": list(ids), "labels": list(labels)})
    return packed


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    # The order of each epoch depends only on (seed, epoch), so a resumed run sees the same batches.
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_adapter(
    train: list[Record],
    val: list[Record],
    base_path: str,
    cfg: TrainConfig,
    sft: SftConfig,
    out_dir: Path,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
    checkpoint_root: Path | None = None,
) -> TrainResult:
    """Fine-tune with `cfg.method` and save the best-validation result as safetensors under `out_dir/adapter`.

    Validates every `eval_steps` (or epoch), keeps the best weights, stops early after
    `early_stopping_patience` validations without improvement, and checkpoints under
    `checkpoint_root/<run key>` so an identical re-run resumes where a killed one stopped.

    Raises:
        TrainingError: NaN/inf or collapsed loss, exploding gradients, or a trainable tensor without gradient.
    """
    started = time.perf_counter()
    tokenizer: PreTrainedTokenizerBase = load_chat_tokenizer(base_path, sft, trust_remote_code)
    train_ex = [tokenize_record(tokenizer, r, sft.cutoff_len) for r in train]
    val_ex = [tokenize_record(tokenizer, r, sft.cutoff_len) for r in val]
    for record, example in zip([*train, *val], [*train_ex, *val_ex], strict=True):
        if all(label == IGNORE_INDEX for label in example["labels"]):  # its loss would be NaN
            raise TrainingError(
                f"record {record['id']} has no response token within sft.cutoff_len={sft.cutoff_len}; "
                "raise the cutoff or drop it (the sft_dataset stage drops such records as no_trainable_tokens)"
            )
    if cfg.packing:
        unpacked = len(train_ex)
        train_ex = pack_examples(train_ex, sft.cutoff_len)
        log(f"packing: {unpacked} training examples in {len(train_ex)} sequences of up to {sft.cutoff_len} tokens")
    device = training_device(cfg)
    dtype = training_dtype(cfg, device)
    ranks = current_ranks()  # more than one under torchrun: each rank trains on its share of every batch
    if not ranks.is_main:
        log = _silent
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_trainable_model(base_path, cfg, trust_remote_code)
    trained = wrap_data_parallel(model, ranks, device)  # forward through DDP so backward averages gradients
    pad_id = tokenizer.pad_token_id
    longest = max((len(e["input_ids"]) for e in train_ex), default=1)
    memory = estimate_memory(model, cfg.batch_size, longest, dtype == torch.bfloat16, cfg.gradient_checkpointing)
    log(
        f"memory estimate ({cfg.method}, {device}, {str(dtype).removeprefix('torch.')}): weights {memory['weights_gib']:.3f} GiB, gradients "
        f"{memory['gradients_gib']:.3f}, optimizer {memory['optimizer_gib']:.3f}, activations "
        f"{memory['activations_gib']:.3f} => ~{memory['total_gib']:.3f} GiB"
    )

    # Evaluating before training is deliberate: it is what triggers bitsandbytes' CPU
    # repack bug, so the gradient check below proves the workaround still holds.
    val_before = mean_loss(model, val_ex, pad_id, device=device, dtype=dtype, ranks=ranks)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # Digests rather than copies: a copy of every trainable tensor doubles the weights' memory for full fine-tuning.
    initial = {n: tensor_digest(p) for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * ranks.world_size  # the global batch
    micro_steps = math.ceil(per_step / ranks.world_size / cfg.batch_size)  # the same number on every rank
    steps_per_epoch = math.ceil(len(train_ex) / per_step)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    eval_every = cfg.eval_steps or steps_per_epoch
    save_every = cfg.save_steps or eval_every

    key = run_key(
        cfg.model_dump(),
        sft.model_dump(),
        base_path,
        [r["id"] for r in train],
        [r["id"] for r in val],
        ranks.world_size,
    )
    ckpt = (checkpoint_root or out_dir / "checkpoints") / key
    loop = {"key": key, "step": 0, "losses": [], "val": [], "best_val": math.inf, "best_step": 0, "bad_evals": 0}
    loop |= {"tokens": 0, "with_grad": [], "stopped_early": False, "resumed_from": 0, "train_seconds": 0.0}
    best: Path | None = None  # the best-validation weights' file
    restored = load_checkpoint(ckpt, key, model, optimizer, scheduler) if cfg.resume else None
    if restored:
        loop, best = restored
        loop["resumed_from"] = loop["step"]
        log(f"resuming from checkpoint at step {loop['step']}/{total_steps} ({ckpt})")
    params = {**cfg.model_dump(), "cutoff_len": sft.cutoff_len, "base": base_path, "world_size": ranks.world_size}
    writer = MetricSinks(cfg if ranks.is_main else TrainConfig(tensorboard=False), out_dir, params)
    with_grad = set(loop["with_grad"])
    log(
        f"training {cfg.method}: {len(train_ex)} examples, {total_steps} steps, {len(trainable)} trainable tensors"
        + (f", {ranks.world_size} data-parallel ranks" if ranks.distributed else "")
    )
    bar = tqdm(
        total=total_steps,
        initial=loop["step"],
        desc=f"training {cfg.method}",
        unit="step",
        disable=None if ranks.is_main else True,
    )
    epoch_batches: list[list[int]] | None = None
    try:
        while loop["step"] < total_steps and not loop["stopped_early"]:
            tick = time.perf_counter()
            step = loop["step"]
            epoch, index = divmod(step, steps_per_epoch)
            if index == 0 or epoch_batches is None:  # shuffle once per epoch (and once after resuming)
                epoch_batches = _batches(len(train_ex), per_step, cfg.seed, epoch)
            model.train()
            group = epoch_batches[index]
            mine = rank_slice(group, ranks)
            step_loss, batch_tokens = 0.0, 0
            for micro in range(micro_steps):  # gradient accumulation over micro-batches
                part = mine[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]
                if not part and not ranks.distributed:
                    break
                # A rank whose share ran out still joins DDP's gradient exchange, with a zero-weighted batch.
                batch = collate([train_ex[j] for j in part or group[:1]], pad_id)
                # DDP averages over ranks; scaling by world_size makes the sum over ranks the global batch mean.
                weight = len(part) / len(group) * ranks.world_size
                sync = (
                    contextlib.nullcontext() if micro == micro_steps - 1 or not ranks.distributed else trained.no_sync()
                )
                with sync:
                    with autocast(device, dtype):
                        loss = trained(**to_device(batch, device)).loss
                    (loss * weight).backward()
                step_loss += loss.item() * len(part) / len(group)
                batch_tokens += int(batch["attention_mask"].sum()) if part else 0
            step_loss, tokens = reduce_sum([step_loss, batch_tokens], ranks, device)
            batch_tokens = int(tokens)
            if not math.isfinite(step_loss):  # checked after the reduction, so every rank stops together
                raise TrainingError(
                    f"loss is {step_loss} at step {step + 1}; lower train.learning_rate (now {cfg.learning_rate})"
                )
            with_grad.update(n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable.values(), cfg.max_grad_norm))
            if not math.isfinite(grad_norm) or grad_norm > GRAD_NORM_LIMIT:
                raise TrainingError(
                    f"gradient norm {grad_norm:.3g} at step {step + 1} (limit {GRAD_NORM_LIMIT:g}): training diverges; "
                    f"lower train.learning_rate (now {cfg.learning_rate})"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loop["losses"].append(step_loss)
            loop["tokens"] += batch_tokens
            loop["step"] = step = step + 1
            if len(loop["losses"]) >= COLLAPSE_STEPS and max(loop["losses"][-COLLAPSE_STEPS:]) < LOSS_COLLAPSE:
                raise TrainingError(
                    f"loss collapsed below {LOSS_COLLAPSE} for {COLLAPSE_STEPS} steps at step {step}: the answer is "
                    "probably visible in the input or almost every token is masked; check the mask preview"
                )
            now = time.perf_counter()
            loop["train_seconds"] += now - tick
            _scalars(
                writer,
                step,
                step_loss,
                scheduler.get_last_lr()[0],
                grad_norm,
                batch_tokens / max(now - tick, 1e-9),  # the same non-padding count as the result's tokens/s
            )
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                improved = _validate(model, val_ex, pad_id, loop, cfg, writer, log, total_steps, device, dtype, ranks)
                if improved and cfg.ship == "best":  # ship=last never reads them back
                    if ranks.is_main:
                        save_best_weights(ckpt, model, step)
                    barrier(ranks)
                    best = best_weights_file(ckpt, step)
            if step % save_every == 0 and step < total_steps:
                loop["with_grad"] = sorted(with_grad)
                if ranks.is_main:
                    save_checkpoint(ckpt, model, optimizer, scheduler, loop)
                barrier(ranks)
    except BaseException:
        writer.close(failed=True)  # an MLflow run must not stay RUNNING after a crash
        raise
    bar.close()
    writer.summary({"final_val_loss": loop["best_val"] if math.isfinite(loop["best_val"]) else float("nan")})
    writer.close()

    missing = sorted(set(trainable) - with_grad)
    if missing:
        raise TrainingError(
            f"{len(missing)} of {len(trainable)} trainable tensors never received a gradient "
            f"(first: {missing[0]}); training would silently do nothing"
        )
    if best is not None and cfg.ship == "best":  # the best validation point rather than the last step
        load_trainable_state(model, load_file(best))
    changed = sum(1 for n, p in trainable.items() if tensor_digest(p) != initial[n])
    val_after = mean_loss(model, val_ex, pad_id, device=device, dtype=dtype, ranks=ranks)
    seconds = time.perf_counter() - started

    adapter_dir = out_dir / "adapter"  # adapter files, or the full model for full/freeze/bitfit
    curve = out_dir / "loss_curve.png"
    if ranks.is_main:  # every rank holds the same weights; one writes them
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        save_loss_curve(loop["losses"], curve, [(0, val_before), *loop["val"]])
        remove_checkpoint(ckpt)  # finished: the output replaces the checkpoint
    barrier(ranks)
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        adapter_sha256=sha256_file(weights_file(adapter_dir)),
        method=cfg.method,
        steps=loop["step"],
        losses=loop["losses"],
        val_loss_before=val_before,
        val_loss_after=val_after,
        trainable_params=sum(p.numel() for p in trainable.values()),
        total_params=sum(p.numel() for p in model.parameters()),
        params_with_grad=len(with_grad),
        params_changed=changed,
        seconds=seconds,
        # Optimisation steps only (no loading, tokenising or validation), as HF Trainer's train_runtime.
        tokens_per_second=loop["tokens"] / max(loop["train_seconds"], 1e-9),
        loss_curve_png=str(curve),
        extra={
            "trainable_tensors": len(trainable),
            "val_history": loop["val"],
            "best_step": loop["best_step"],
            "stopped_early": loop["stopped_early"],
            "resumed_from_step": loop["resumed_from"],
            "total_steps": total_steps,
            "memory_estimate": memory,
            "device": device,
            "world_size": ranks.world_size,
            "dtype": str(dtype).removeprefix("torch."),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else 0.0,
            # The process's whole life, so it includes loading and tokenising.
            "peak_rss_gib": peak_rss_mib() / 1024,
            "tensorboard_dir": str(out_dir / "tensorboard") if cfg.tensorboard else "",
            "mlflow_run_id": writer.mlflow_run_id,
        },
    )
    if ranks.is_main:
        write_json(out_dir / "train_result.json", result.to_dict())
    barrier(ranks)
    return result


def _silent(_: str) -> None:
    """The log of ranks other than 0: one copy of each line is enough."""


def _validate(model, val_ex, pad_id, loop, cfg: TrainConfig, writer, log, total_steps, device, dtype, ranks) -> bool:
    """Score the validation split, update early stopping; True when this is the best point so far."""
    step = loop["step"]
    if not val_ex:
        return False
    val_loss = mean_loss(model, val_ex, pad_id, device=device, dtype=dtype, ranks=ranks)
    loop["val"].append((step, val_loss))
    writer.scalar("val/loss", val_loss, step)
    train_recent = sum(loop["losses"][-10:]) / len(loop["losses"][-10:])
    improved = val_loss < loop["best_val"] - 1e-6
    if improved:
        loop["best_val"], loop["best_step"], loop["bad_evals"] = val_loss, step, 0
    else:
        loop["bad_evals"] += 1
        if cfg.early_stopping_patience and loop["bad_evals"] >= cfg.early_stopping_patience:
            loop["stopped_early"] = True
    log(
        f"step {step}/{total_steps} train loss {train_recent:.4f} val loss {val_loss:.4f} "
        f"(best {loop['best_val']:.4f} at step {loop['best_step']})"
        + (" - stopping early" if loop["stopped_early"] else "")
    )
    return improved


def _scalars(writer: MetricSinks, step: int, loss: float, lr: float, grad_norm: float, tokens_per_s: float) -> None:
    writer.scalar("train/loss", loss, step)
    writer.scalar("train/lr", lr, step)
    writer.scalar("train/grad_norm", grad_norm, step)
    writer.scalar("train/tokens_per_s", tokens_per_s, step)


def load_train_result(out_dir: Path) -> TrainResult:
    """Read a saved TrainResult."""
    return TrainResult(**json.loads((out_dir / "train_result.json").read_text()))
