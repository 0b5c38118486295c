"""The training loop's behaviour: validation and early stopping, best checkpoint, resume after a real kill,
TensorBoard events and the memory estimate."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from assets.training import adapter
from finetune.config import PROJECT_ROOT, SftConfig, TrainConfig
from finetune.data.records import StageCounts, StageReport
from finetune.train.memory import estimate_memory
from finetune.train.methods import build_trainable_model
from finetune.train.tracking import TrackingSpec
from finetune.train.trainer import train_adapter, write_encoded_splits
from resources import NoTracker, PipelineSettings, TorchrunLauncher
from tests.test_model_training import _records


def test_validation_every_n_steps_keeps_the_best_and_stops_early(tiny_base, tmp_path):
    rows = _records(64)
    # A learning rate this high overfits 16 examples within a few steps, so validation loss turns up.
    cfg = TrainConfig(
        method="lora", epochs=30, batch_size=8, learning_rate=3e-2, eval_steps=2, early_stopping_patience=2
    )
    tensorboard = TrackingSpec(kind="tensorboard")
    result = train_adapter(rows[:16], rows[48:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None,
                           tracking=tensorboard)  # fmt: skip
    history = result.extra["val_history"]
    assert result.extra["stopped_early"] and result.steps < result.extra["total_steps"] == 60
    assert [s for s, _ in history] == list(range(2, result.steps + 1, 2))
    best_step, best_val = min(history, key=lambda h: h[1])
    assert result.extra["best_step"] == best_step and abs(result.val_loss_after - best_val) < 1e-5
    assert history[-1][1] > best_val  # the shipped weights are the best point, not the last one
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_memory_estimate_orders_methods_sensibly(tiny_base):
    qlora, lora, full = (
        estimate_memory(build_trainable_model(tiny_base, TrainConfig(method=m, additional_target=[])), 8, 64)
        for m in ("qlora", "lora", "full")
    )
    assert qlora["weights_gib"] < lora["weights_gib"] and lora["optimizer_gib"] < full["optimizer_gib"]
    assert full["total_gib"] > lora["total_gib"] > 0


TRAIN_SCRIPT = """
import sys, time
from pathlib import Path
from finetune.config import SftConfig, TrainConfig
from finetune.data.records import read_jsonl
from finetune.train.tracking import TrackingSpec
from finetune.train.trainer import train_adapter
rows = read_jsonl(Path(sys.argv[1]))
slow = sys.argv[4] == "slow"
def log(line):
    print(line, flush=True)
    if slow and line.startswith("step "):
        time.sleep(1.5)  # leave time to be killed between checkpoints
cfg = TrainConfig(method="lora", epochs=6, batch_size=8, eval_steps=3, early_stopping_patience=0)
tracking = TrackingSpec(kind=sys.argv[5])
result = train_adapter(rows[:40], rows[40:], sys.argv[2], cfg, SftConfig(), Path(sys.argv[3]), log=log, tracking=tracking)
print("DONE", result.steps, result.extra["resumed_from_step"], result.adapter_sha256, flush=True)
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_ends_at_the_same_step(tiny_base, tmp_path):
    """Killed with SIGKILL mid-training, then re-run with TensorBoard turned on: where metrics go is not part
    of the run key, so the re-run still resumes, and ends with the weights of an uninterrupted run."""
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in _records(48)) + "\n", encoding="utf-8")
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, str(script), str(data), tiny_base, str(tmp_path / "out")]
    proc = subprocess.Popen([*cmd, "slow", "none"], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until a checkpoint past step 3 exists, then kill hard
        if line.startswith("step 6/") or time.time() > deadline:
            break
    checkpoints = list((tmp_path / "out" / "checkpoints").glob("*/state.json"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoints, "no checkpoint was written before the kill"
    killed_at = json.loads(checkpoints[0].read_text())["loop"]["step"]
    assert 3 <= killed_at < 30
    assert not (tmp_path / "out" / "tensorboard").exists()
    resumed = subprocess.run([*cmd, "fast", "tensorboard"], capture_output=True, text=True, env=env, check=True).stdout
    assert f"resuming from checkpoint at step {killed_at}/30" in resumed
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))  # the new tracker is in use
    done = resumed.strip().splitlines()[-1].split()
    assert done[:3] == ["DONE", "30", str(killed_at)]
    fresh = subprocess.run(
        [*cmd[:-1], str(tmp_path / "fresh"), "fast", "none"], capture_output=True, text=True, env=env, check=True
    )
    # Same data order, same optimizer state: the resumed run ends with the same weights as an uninterrupted one.
    assert fresh.stdout.strip().splitlines()[-1].split()[3] == done[3]
    assert not list((tmp_path / "out" / "checkpoints").glob("*/state.json"))  # cleaned up once finished


def test_checkpoints_keep_best_weights_on_disk_and_survive_a_kill_between_renames(tiny_base, tmp_path):
    import torch

    from finetune.train.checkpoint import load_checkpoint, remove_checkpoint, save_best_weights, save_checkpoint

    model = build_trainable_model(tiny_base, TrainConfig(method="lora", additional_target=[]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    folder = tmp_path / "run-key"
    for step in (3, 6):
        best = save_best_weights(folder, model, step)
        save_checkpoint(folder, model, optimizer, scheduler, {"key": "k", "step": step, "best_step": step})
    assert [f.name for f in best.parent.iterdir()] == ["step-6.safetensors"]  # step 3's is no longer named
    folder.rename(folder.with_name("run-key.old"))  # as if killed between save_checkpoint's two renames
    loop, restored_best = load_checkpoint(folder, "k", model, optimizer, scheduler)
    assert loop["step"] == 6 and restored_best == best
    # Killed during the cleanup after the renames: a complete folder beside a half-deleted .old.
    save_checkpoint(folder, model, optimizer, scheduler, {"key": "k", "step": 9, "best_step": 6})
    stale = folder.with_name("run-key.old")
    stale.mkdir()
    (stale / "state.json").write_text("{}", encoding="utf-8")
    save_checkpoint(folder, model, optimizer, scheduler, {"key": "k", "step": 12, "best_step": 6})
    assert load_checkpoint(folder, "k", model, optimizer, scheduler)[0]["step"] == 12 and not stale.exists()
    remove_checkpoint(folder)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_like_one_process_with_accumulation(tiny_base, tmp_path):
    """The adapter asset launches `torchrun --nproc-per-node=2` through Pipes (Gloo on CPU): each rank
    trains on half of every global batch, so the run matches one process accumulating two micro-batches."""
    rows = _records(21)
    # 13 examples in global batches of 4: the last batch has one example, so rank 1 sits that step out.
    split = write_encoded_splits(tmp_path / "split", {"train": rows[:13], "val": rows[13:]}, tiny_base, SftConfig())
    common = dict(method="lora", max_steps=4, batch_size=2, early_stopping_patience=0, ship="last")
    overrides = [f"paths.work_dir={tmp_path / 'work'}", *(f"train.{k}={v}" for k, v in common.items())]

    @dg.asset(name="sft_dataset")
    def split_files() -> StageReport:
        return StageReport(StageCounts("sft_dataset", 0, 0, 0, 0), Path(split))

    @dg.asset(name="base_model")
    def tiny() -> dict:
        return {"path": tiny_base}

    resources = {
        "settings": PipelineSettings(overrides=overrides),
        "trainer_launcher": TorchrunLauncher(nproc_per_node=2),
        "tracker": NoTracker(),
    }
    with dg.instance_for_test() as instance:
        run = dg.materialize([split_files, tiny, adapter], resources=resources, instance=instance)
        logs = [e.user_message for e in instance.all_logs(run.run_id)]
    ddp = run.output_for_node("adapter")
    single = train_adapter(
        rows[:13], rows[13:], tiny_base, TrainConfig(gradient_accumulation_steps=2, **common), SftConfig(),
        tmp_path / "single", log=lambda _: None,
    )  # fmt: skip
    assert ddp["extra"]["world_size"] == 2 and single.extra["world_size"] == 1
    assert ddp["steps"] == single.steps == 4
    # Same micro-batches, gradients averaged by DDP instead of accumulated: the same training.
    assert ddp["losses"] == pytest.approx(single.losses, abs=1e-4)
    assert ddp["val_loss_after"] == pytest.approx(single.val_loss_after, abs=1e-4)
    assert ddp["val_loss_after"] < ddp["val_loss_before"] == pytest.approx(single.val_loss_before, abs=1e-5)
    # Rank 0 alone talks to Dagster and writes: one copy of each log line, one adapter.
    assert sum("2 data-parallel ranks" in m for m in logs) == 1
    assert Path(ddp["adapter_dir"], "adapter_model.safetensors").is_file()


def test_gradient_accumulation_takes_one_optimizer_step_per_effective_batch(tiny_base, tmp_path):
    rows = _records(40)
    quiet = {"log": lambda _: None}
    cfg = dict(method="lora", epochs=2, learning_rate=1e-2, early_stopping_patience=0)
    plain = train_adapter(
        rows[:32], rows[32:], tiny_base, TrainConfig(batch_size=8, **cfg), SftConfig(), tmp_path / "a", **quiet
    )
    accum = train_adapter(
        rows[:32],
        rows[32:],
        tiny_base,
        TrainConfig(batch_size=4, gradient_accumulation_steps=2, **cfg),
        SftConfig(),
        tmp_path / "b",
        **quiet,
    )
    assert plain.steps == accum.steps == 8  # 32 examples / effective batch 8, two epochs
    # The same examples form each step; only the token weighting inside a micro-batch differs.
    assert abs(plain.losses[0] - accum.losses[0]) < 0.05
    assert accum.val_loss_after < accum.val_loss_before


def test_gradient_checkpointing_gives_the_same_training_as_without(tiny_base, tmp_path):
    rows = _records(24)
    cfg = dict(method="lora", max_steps=3, batch_size=8, early_stopping_patience=0, ship="last")
    quiet = {"log": lambda _: None}
    plain = train_adapter(rows[:16], rows[16:], tiny_base, TrainConfig(**cfg), SftConfig(), tmp_path / "a", **quiet)
    recomputed = train_adapter(
        rows[:16],
        rows[16:],
        tiny_base,
        TrainConfig(gradient_checkpointing=True, **cfg),
        SftConfig(),
        tmp_path / "b",
        **quiet,
    )
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)
    assert recomputed.val_loss_after == pytest.approx(plain.val_loss_after, rel=1e-5)


def test_training_device_and_precision_resolve_and_refuse_a_missing_gpu(monkeypatch):
    import torch

    from finetune.train.methods import training_device, training_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device(TrainConfig()) == "cpu" and training_dtype(TrainConfig(), "cpu") == torch.float32
    assert training_dtype(TrainConfig(precision="bf16"), "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        training_device(TrainConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device(TrainConfig()) == "cuda" and training_dtype(TrainConfig(), "cuda") == torch.bfloat16


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_training_on_a_gpu_learns_and_reports_peak_memory(tiny_base, tmp_path, method):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device machine; CI has none)")
    rows = _records(40)
    cfg = TrainConfig(method=method, epochs=3, batch_size=8, early_stopping_patience=0)
    result = train_adapter(rows[:32], rows[32:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None)
    assert result.extra["device"] == "cuda" and result.extra["dtype"] == "bfloat16"
    assert result.extra["peak_gpu_memory_gib"] > 0
    assert result.val_loss_after < result.val_loss_before
    assert result.params_with_grad == result.extra["trainable_tensors"]


def test_packing_trains_the_same_tokens_in_fewer_sequences(tiny_base, tmp_path):
    from finetune.model.loading import load_tokenizer
    from finetune.sft import IGNORE_INDEX, tokenize_conversation
    from finetune.train.examples import pack_examples

    rows = _records(40)
    tok = load_tokenizer(tiny_base)
    examples = [tokenize_conversation(tok, r["messages"], 256) for r in rows[:32]]
    packed = pack_examples(examples, 256)
    assert len(packed) < len(examples) and all(len(p["input_ids"]) <= 256 for p in packed)
    trained = [t for e in examples for t, lab in zip(e["input_ids"], e["labels"], strict=True) if lab != IGNORE_INDEX]
    assert [lab for p in packed for lab in p["labels"] if lab != IGNORE_INDEX] == trained
    cfg = TrainConfig(method="lora", epochs=4, batch_size=4, packing=True, early_stopping_patience=0)
    result = train_adapter(rows[:32], rows[32:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None)
    assert result.steps == 4 * math.ceil(len(packed) / 4) and result.val_loss_after < result.val_loss_before


def _per_example_losses(model, batch, spans) -> list[torch.Tensor]:
    """Mean next-token loss of each (row, start, end) span of a batch's trained tokens."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none"
    )
    trained = batch["labels"][:, 1:] != -100
    return [losses[row, start : end - 1][trained[row, start : end - 1]].mean() for row, start, end in spans]


def test_packed_examples_attend_only_to_themselves_and_keep_their_unpacked_loss(tiny_base):
    from finetune.model.loading import load_causal_lm, load_tokenizer
    from finetune.sft import tokenize_conversation
    from finetune.train.examples import collate, pack_examples

    tok, model = load_tokenizer(tiny_base), load_causal_lm(tiny_base).eval()
    examples = [tokenize_conversation(tok, r["messages"], 256) for r in _records(12)]
    packed = pack_examples(examples, 256)
    assert len(packed) < len(examples)
    spans, at, row = [], 0, 0
    for e in examples:  # where each example sits in the packed batch
        if at + len(e["input_ids"]) > len(packed[row]["input_ids"]):
            row, at = row + 1, 0
        spans.append((row, at, at + len(e["input_ids"])))
        at += len(e["input_ids"])
    with torch.no_grad():
        alone = [_per_example_losses(model, collate([e], tok.pad_token_id), [(0, 0, len(e["input_ids"]))])[0]
                 for e in examples]  # fmt: skip
        together = _per_example_losses(model, collate(packed, tok.pad_token_id), spans)
        # The same sequences without positions and with a full causal mask: examples see the ones before them.
        blind = [{"input_ids": p["input_ids"], "labels": p["labels"]} for p in packed]
        contaminated = _per_example_losses(model, collate(blind, tok.pad_token_id), spans)
    torch.testing.assert_close(torch.stack(together), torch.stack(alone), rtol=1e-4, atol=1e-5)
    later = [i for i, (_, start, _) in enumerate(spans) if start > 0]
    assert later and not torch.allclose(torch.stack(contaminated)[later], torch.stack(alone)[later], atol=1e-3)


def test_packing_is_refused_for_prompt_tuning():
    with pytest.raises(ValueError, match="packing does not work with train.method=prompt_tuning"):
        TrainConfig(method="prompt_tuning", packing=True)


def test_mlflow_gets_params_and_per_step_metrics_when_configured(tiny_base, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install mlflow-skinny (make test installs it)")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store needs no server or database
    uri = (tmp_path / "mlruns").as_uri()
    rows = _records(24)
    cfg = TrainConfig(method="lora", max_steps=4, batch_size=8, eval_steps=2, early_stopping_patience=0)
    tracking = TrackingSpec(kind="mlflow", mlflow_tracking_uri=uri, mlflow_experiment="unit")
    result = train_adapter(rows[:16], rows[16:], tiny_base, cfg, SftConfig(), tmp_path / "out", log=lambda _: None,
                           tracking=tracking)  # fmt: skip
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.extra["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "lora"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses == pytest.approx(result.losses)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [2, 4]
