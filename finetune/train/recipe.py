"""Supervised fine-tuning, one run read top to bottom: setup, train, validate, save, cleanup.

The shape is torchtune's single-device LoRA recipe. What differs per method (which parameters
train, how the result is saved and reloaded) is in `methods.py`; how global batches split over
ranks and micro-batches is in `distributed.py`; encoded examples are read and become tensors in
`examples.py`; the checks that stop a diverging or silently idle run are in `guards.py`.
Everything a run needs comes in one `TrainingSpec`, and it gives back one `TrainResult` (`job.py`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from finetune.data.records import sha256_file, write_json
from finetune.model.loading import load_tokenizer
from finetune.process_memory import peak_rss_mib
from finetune.train import guards
from finetune.train.checkpoint import (
    best_weights_file,
    load_checkpoint,
    load_trainable_state,
    remove_checkpoint,
    run_key,
    save_best_weights,
    save_checkpoint,
)
from finetune.train.distributed import (
    BatchPlan,
    barrier,
    current_ranks,
    gradient_sync,
    process_group,
    rank_slice,
    reduce_sum,
    wrap_data_parallel,
)
from finetune.train.examples import (
    EncodedSplit,
    collate,
    epoch_batches,
    pack_examples,
    read_split,
    real_tokens,
    trained_tokens,
)
from finetune.train.job import RESULT_FILE, TrainingSpec, TrainResult
from finetune.train.memory import describe, estimate_memory
from finetune.train.methods import (
    autocast,
    build_trainable_model,
    dtype_name,
    training_device,
    training_dtype,
    weights_file,
)
from finetune.train.tracking import TENSORBOARD_DIR, MetricSinks, save_loss_curve

Log = Callable[[str], None]


@dataclass
class LoopState:
    """Where the training loop stands; checkpointed as JSON and restored on resume."""

    key: str
    step: int = 0
    losses: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    tokens: int = 0
    with_grad: list[str] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: int = 0
    train_seconds: float = 0.0

    @classmethod
    def from_dict(cls, saved: dict) -> LoopState:
        return cls(**{**saved, "val": [(int(s), float(v)) for s, v in saved["val"]]})


class SFTRecipe:
    """One fine-tuning run of `spec.train.method` on `spec`'s splits; call setup, train, save, cleanup in order."""

    def __init__(self, spec: TrainingSpec, log: Log = print):
        self.spec, self.cfg = spec, spec.train
        self.ranks = current_ranks()  # more than one under torchrun: each rank trains on its share of every batch
        self.log = log if self.ranks.is_main else _silent
        self.started = time.perf_counter()

    def setup(self) -> None:
        """Read the encoded examples, build the model and optimizer, and resume from a checkpoint of the same run key."""
        spec, cfg = self.spec, self.cfg
        self.device = training_device(cfg)
        self.dtype = training_dtype(cfg, self.device)
        self.tokenizer = load_tokenizer(spec.base_path, spec.trust_remote_code)
        train, val = self._read_examples()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.model = build_trainable_model(spec.base_path, cfg, spec.trust_remote_code)
        self.trained = wrap_data_parallel(self.model, self.ranks, self.device)  # backward through DDP averages
        self._estimate_memory()
        # Evaluating before training is deliberate: it is what triggers bitsandbytes' CPU
        # repack bug, so the gradient check proves the workaround still holds.
        self.val_before = self.mean_loss(self.val_ex)
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.initial = {n: tensor_digest(p) for n, p in self.trainable.items()}
        self.plan = BatchPlan(
            len(self.train_ex), cfg.batch_size, cfg.gradient_accumulation_steps, cfg.epochs, cfg.max_steps, self.ranks
        )
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        total = self.plan.total_steps
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.warmup_ratio * total), total)
        key = run_key(spec.weight_inputs(), train.digest(), val.digest(), self.ranks.world_size)
        self.checkpoint_dir = spec.checkpoint_root / key
        self.state, self.best_file = LoopState(key=key), None
        self._resume()
        params = {
            **cfg.model_dump(),
            "cutoff_len": self.cutoff_len,
            "base": spec.base_path,
            "world_size": self.ranks.world_size,
        }
        self.tracker = MetricSinks(spec.tracking, spec.out_dir, params, enabled=self.ranks.is_main)

    def _read_examples(self) -> tuple[EncodedSplit, EncodedSplit]:
        """The train and val examples the sft_dataset stage encoded with this base model's tokenizer, packed if asked."""
        train, val = (read_split(self.spec.split_dir, name, self.tokenizer) for name in ("train", "val"))
        self.tokenizer.chat_template = train.encoding.chat_template  # saved with the adapter: what rendered its data
        self.cutoff_len = train.encoding.cutoff_len
        self.train_ex, self.val_ex = train.examples, val.examples
        if self.cfg.packing:
            self.train_ex = pack_examples(self.train_ex, self.cutoff_len)
            self.log(
                f"packing: {len(train.examples)} training examples in {len(self.train_ex)} sequences of up to "
                f"{self.cutoff_len} tokens"
            )
        return train, val

    def _estimate_memory(self) -> None:
        longest = max((len(e["input_ids"]) for e in self.train_ex), default=1)
        bf16 = self.dtype == torch.bfloat16
        self.memory = estimate_memory(self.model, self.cfg.batch_size, longest, bf16, self.cfg.gradient_checkpointing)
        where = f"{self.cfg.method}, {self.device}, {dtype_name(self.dtype)}"
        self.log(f"memory estimate ({where}): {describe(self.memory)}")

    def _resume(self) -> None:
        if not self.cfg.resume:
            return
        restored = load_checkpoint(self.checkpoint_dir, self.state.key, self.model, self.optimizer, self.scheduler)
        if restored:
            saved, self.best_file = restored
            self.state = LoopState.from_dict(saved)
            self.state.resumed_from = self.state.step
            self.log(
                f"resuming from checkpoint at step {self.state.step}/{self.plan.total_steps} ({self.checkpoint_dir})"
            )

    def train(self) -> None:
        """Optimizer steps until the planned step count or early stopping; validates and checkpoints on schedule."""
        cfg, plan, state = self.cfg, self.plan, self.state
        eval_every = cfg.eval_steps or plan.steps_per_epoch
        save_every = cfg.save_steps or eval_every
        self.log(
            f"training {cfg.method}: {len(self.train_ex)} examples, {plan.total_steps} steps, "
            f"{len(self.trainable)} trainable tensors"
            + (f", {self.ranks.world_size} data-parallel ranks" if self.ranks.distributed else "")
        )
        with_grad = set(state.with_grad)
        bar = tqdm(
            total=plan.total_steps,
            initial=state.step,
            desc=f"training {cfg.method}",
            unit="step",
            disable=None if self.ranks.is_main else True,
        )
        batches: list[list[int]] | None = None
        while state.step < plan.total_steps and not state.stopped_early:
            tick = time.perf_counter()
            epoch, index = divmod(state.step, plan.steps_per_epoch)
            if index == 0 or batches is None:  # shuffle once per epoch (and once after resuming)
                batches = epoch_batches(len(self.train_ex), plan.global_batch, cfg.seed, epoch)
            loss, tokens, grad_norm = self._optimizer_step(batches[index], with_grad)
            state.losses.append(loss)
            state.tokens += tokens
            state.step += 1
            guards.check_not_collapsed(state.losses, state.step)
            seconds = time.perf_counter() - tick
            state.train_seconds += seconds
            self._track_step(loss, grad_norm, tokens / max(seconds, 1e-9))
            bar.update(1)
            if state.step % eval_every == 0 or state.step == plan.total_steps:
                self.validate()
            if state.step % save_every == 0 and state.step < plan.total_steps:
                state.with_grad = sorted(with_grad)
                self._checkpoint()
        bar.close()
        state.with_grad = sorted(with_grad)
        guards.check_every_tensor_learned(self.trainable, with_grad)

    def _optimizer_step(self, group: list[int], with_grad: set[str]) -> tuple[float, int, float]:
        """One optimizer step over a global batch; returns its mean loss, non-padding tokens and gradient norm."""
        self.model.train()
        micro_batches = self.plan.micro_batches(group)
        step_loss, tokens = 0.0, 0
        for i, micro in enumerate(micro_batches):  # gradient accumulation
            # A rank whose share ran out still joins DDP's gradient exchange, with a zero-weighted batch.
            examples = [self.train_ex[j] for j in micro.indices or group[:1]]
            batch = collate(examples, self.tokenizer.pad_token_id, self.device)
            with gradient_sync(self.trained, i == len(micro_batches) - 1, self.ranks):
                with autocast(self.device, self.dtype):
                    loss = self.trained(**batch).loss
                (loss * micro.loss_weight).backward()
            step_loss += loss.item() * micro.share
            tokens += real_tokens(examples) if micro.indices else 0
        step_loss, tokens = reduce_sum([step_loss, tokens], self.ranks, self.device)
        step = self.state.step + 1
        guards.check_loss_finite(step_loss, step, self.cfg.learning_rate)  # after the reduction: all ranks stop
        with_grad.update(guards.names_with_gradient(self.trainable))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable.values(), self.cfg.max_grad_norm))
        guards.check_grad_norm(grad_norm, step, self.cfg.learning_rate)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, int(tokens), grad_norm

    def _track_step(self, loss: float, grad_norm: float, tokens_per_s: float) -> None:
        step = self.state.step
        self.tracker.scalar("train/loss", loss, step)
        self.tracker.scalar("train/lr", self.scheduler.get_last_lr()[0], step)
        self.tracker.scalar("train/grad_norm", grad_norm, step)
        self.tracker.scalar("train/tokens_per_s", tokens_per_s, step)  # the result's non-padding count

    @torch.no_grad()
    def mean_loss(self, examples: list[dict], batch_size: int = 16) -> float:
        """Token-weighted mean loss over examples (NaN when there are none); ranks each score a share."""
        if not examples:
            return float("nan")
        self.model.eval()
        mine = [examples[i] for i in rank_slice(range(len(examples)), self.ranks)]
        total, count = 0.0, 0
        for i in range(0, len(mine), batch_size):
            batch = collate(mine[i : i + batch_size], self.tokenizer.pad_token_id, self.device)
            n = trained_tokens(batch)
            with autocast(self.device, self.dtype):
                total += self.model(**batch).loss.item() * n
            count += n
        total, count = reduce_sum([total, count], self.ranks, self.device)
        return total / max(count, 1)

    def validate(self) -> None:
        """Score the validation split, keep the best weights, and count validations without improvement."""
        state, cfg = self.state, self.cfg
        if not self.val_ex:
            return
        val_loss = self.mean_loss(self.val_ex)
        state.val.append((state.step, val_loss))
        self.tracker.scalar("val/loss", val_loss, state.step)
        recent = state.losses[-10:]
        if val_loss < state.best_val - 1e-6:
            state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
            if cfg.ship == "best":  # ship=last never reads them back
                if self.ranks.is_main:
                    save_best_weights(self.checkpoint_dir, self.model, state.step)
                barrier(self.ranks)
                self.best_file = best_weights_file(self.checkpoint_dir, state.step)
        else:
            state.bad_evals += 1
            state.stopped_early = bool(cfg.early_stopping_patience) and state.bad_evals >= cfg.early_stopping_patience
        self.log(
            f"step {state.step}/{self.plan.total_steps} train loss {sum(recent) / len(recent):.4f} val loss "
            f"{val_loss:.4f} (best {state.best_val:.4f} at step {state.best_step})"
            + (" - stopping early" if state.stopped_early else "")
        )

    def _checkpoint(self) -> None:
        if self.ranks.is_main:
            save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, asdict(self.state))
        barrier(self.ranks)

    def save(self) -> TrainResult:
        """Ship the best (or last) weights as safetensors under out_dir/adapter and write train_result.json."""
        spec, state = self.spec, self.state
        if self.best_file is not None and self.cfg.ship == "best":  # the best validation point, not the last step
            load_trainable_state(self.model, load_file(self.best_file))
        changed = sum(1 for n, p in self.trainable.items() if tensor_digest(p) != self.initial[n])
        val_after = self.mean_loss(self.val_ex)
        self.tracker.summary({"final_val_loss": state.best_val if math.isfinite(state.best_val) else float("nan")})
        adapter_dir = spec.out_dir / "adapter"  # adapter files, or the full model for full/freeze/bitfit
        curve = spec.out_dir / "loss_curve.png"
        if self.ranks.is_main:  # every rank holds the same weights; one writes them
            self.model.save_pretrained(adapter_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(adapter_dir)
            save_loss_curve(state.losses, curve, [(0, self.val_before), *state.val])
            remove_checkpoint(self.checkpoint_dir)  # finished: the output replaces the checkpoint
        barrier(self.ranks)
        result = TrainResult(
            adapter_dir=str(adapter_dir),
            adapter_sha256=sha256_file(weights_file(adapter_dir)),
            method=self.cfg.method,
            steps=state.step,
            losses=state.losses,
            val_loss_before=self.val_before,
            val_loss_after=val_after,
            trainable_params=sum(p.numel() for p in self.trainable.values()),
            total_params=sum(p.numel() for p in self.model.parameters()),
            params_with_grad=len(state.with_grad),
            params_changed=changed,
            seconds=time.perf_counter() - self.started,
            # Optimisation steps only (no loading, reading examples or validation), as HF Trainer's train_runtime.
            tokens_per_second=state.tokens / max(state.train_seconds, 1e-9),
            loss_curve_png=str(curve),
            extra=self._extra(),
        )
        if self.ranks.is_main:
            write_json(spec.out_dir / RESULT_FILE, result.to_dict())
        barrier(self.ranks)
        return result

    def _extra(self) -> dict:
        state, cuda = self.state, self.device == "cuda"
        return {
            "trainable_tensors": len(self.trainable),
            "val_history": state.val,
            "best_step": state.best_step,
            "stopped_early": state.stopped_early,
            "resumed_from_step": state.resumed_from,
            "total_steps": self.plan.total_steps,
            "memory_estimate": self.memory,
            "device": self.device,
            "world_size": self.ranks.world_size,
            "dtype": dtype_name(self.dtype),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else 0.0,
            "peak_rss_gib": peak_rss_mib() / 1024,  # the process's whole life: includes loading and reading examples
            "tensorboard_dir": str(self.spec.out_dir / TENSORBOARD_DIR) if self.tracker.tensorboard else "",
            "mlflow_run_id": self.tracker.mlflow_run_id,
            "run_key": state.key,
        }

    def cleanup(self, failed: bool = False) -> None:
        """Close the metric sinks (an MLflow run must not stay RUNNING after a crash)."""
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.close(failed=failed)


def run_training(spec: TrainingSpec, log: Log = print) -> TrainResult:
    """Run one training job: joins the process group when started by torchrun / accelerate launch.

    Raises:
        TrainingError: NaN/inf or collapsed loss, exploding gradients, or a trainable tensor without gradient.
    """
    with process_group(use_cuda=training_device(spec.train) == "cuda"):
        recipe = SFTRecipe(spec, log)
        try:
            recipe.setup()
            recipe.train()
            result = recipe.save()
        except BaseException:
            recipe.cleanup(failed=True)
            raise
        recipe.cleanup()
        return result


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """A hash of a tensor's bytes (any dtype, any device): tells whether training changed it.

    Digests rather than copies: a copy of every trainable tensor doubles the weights' memory for full fine-tuning.
    """
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).digest()


def _silent(_: str) -> None:
    """The log of ranks other than 0: one copy of each line is enough."""
