"""One training spec, three ways to start it: the CLI, the in-process launcher and the Pipes subprocess give
byte-identical adapters; launch commands come from checked values only; the trainer dies with its run;
the run key holds only what changes the weights; only safetensors weights are loaded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.data import sft_dataset
from assets.training import adapter, base_model
from finetune.cli import main as cli_main
from finetune.config import PROJECT_ROOT, ConfigError, SftConfig, TrainConfig, load_config
from finetune.data.records import StageCounts, StageReport, write_jsonl
from finetune.model.loading import load_chat_tokenizer, load_tokenizer
from finetune.sft import encode_split
from finetune.train.examples import EncodedSplit, Encoding, read_split, tokenizer_sha256, write_split
from finetune.train.job import TrainingSpec, training_spec
from finetune.train.launch import accelerate_command, python_command, torchrun_command
from finetune.train.tracking import TrackingSpec
from finetune.train.trainer import write_encoded_splits
from resources import (
    InProcessLauncher,
    NoTracker,
    PipelineSettings,
    SubprocessLauncher,
    TorchrunLauncher,
    launcher_from_env,
)
from tests.test_golden_losses import build_golden_base, golden_records

WRAP = [sys.executable, "-m", "finetune.train.launch"]


def test_launch_commands_are_built_from_checked_values_only(monkeypatch):
    assert python_command() == [sys.executable, "-m", "train_process"]
    assert torchrun_command(2) == [*WRAP, "torchrun", "--standalone", "--nproc-per-node=2", "-m", "train_process"]
    assert torchrun_command(4, nnodes=2, node_rank=1, rdzv_endpoint="node0.lan:29500")[4:-2] == [
        "--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node0.lan:29500",
    ]  # fmt: skip
    assert accelerate_command(2)[3:-2] == [
        "accelerate", "--num_processes=2", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--multi_gpu",
    ]  # fmt: skip
    for bad in (0, -1, True, "2; rm -rf ~"):
        with pytest.raises(ValueError, match="nproc_per_node must be a whole number >= 1"):
            torchrun_command(bad)
    with pytest.raises(ValueError, match="rdzv_endpoint must be host:port"):
        torchrun_command(1, nnodes=2, rdzv_endpoint="x;y")
    with pytest.raises(ValueError, match="node_rank must be in 0..1"):
        torchrun_command(1, nnodes=2, node_rank=2, rdzv_endpoint="a:1")
    assert TorchrunLauncher(nproc_per_node=3).command() == torchrun_command(3)
    with pytest.raises(Exception, match="nproc_per_node"):
        TorchrunLauncher(nproc_per_node=0)
    monkeypatch.setenv("FINETUNE_LAUNCHER", "torchrun")
    monkeypatch.setenv("FINETUNE_NPROC_PER_NODE", "4")
    assert launcher_from_env().command() == torchrun_command(4)
    monkeypatch.setenv("FINETUNE_NPROC_PER_NODE", "4 --master-addr=evil")
    with pytest.raises(ValueError, match="FINETUNE_NPROC_PER_NODE must be a whole number"):
        launcher_from_env()
    monkeypatch.setenv("FINETUNE_LAUNCHER", "bash")
    with pytest.raises(ValueError, match="FINETUNE_LAUNCHER must be one of"):
        launcher_from_env()
    # A command line in the config is refused, naming the setting and where the launcher is chosen instead.
    with pytest.raises(ConfigError, match=r"train.launch_prefix is not a training setting .*FINETUNE_LAUNCHER"):
        load_config(None, ['train.launch_prefix=["sh", "-c", "id"]'])


def test_run_key_holds_what_changes_the_weights_and_nothing_else(tmp_path):
    cfg = load_config(None, [f"paths.work_dir={tmp_path}"])
    spec = training_spec(cfg, tmp_path / "split", "base", tmp_path / "out")
    same = [
        spec.model_copy(update={"tracking": TrackingSpec(kind="tensorboard"), "out_dir": tmp_path / "other"}),
        spec.model_copy(update={"train": TrainConfig(resume=False, save_steps=7)}),
    ]
    assert all(s.weight_inputs() == spec.weight_inputs() for s in same)
    changed = [
        spec.model_copy(update={"train": TrainConfig(learning_rate=1e-3)}),
        spec.model_copy(update={"base_path": "other-base"}),
    ]
    assert all(s.weight_inputs() != spec.weight_inputs() for s in changed)
    # The data's part of the key: the encoded tokens, their labels and the cutoff (template and thinking mode
    # act through the tokens), not the records' ids.
    encoding = Encoding("t" * 64, "{{ m }}", 32)
    split = EncodedSplit(
        ["a", "b"], [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}], encoding
    )
    assert EncodedSplit(["x", "y"], split.examples, encoding).digest() == split.digest()
    other_labels = [{"input_ids": [1, 2, 3], "labels": [-100, -100, 3]}, split.examples[1]]
    moved = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3, 4], "labels": [3, 4]}]
    for other in (
        EncodedSplit(split.record_ids, other_labels, encoding),
        EncodedSplit(split.record_ids, moved, encoding),  # same tokens, cut between examples elsewhere
        EncodedSplit(split.record_ids, split.examples, Encoding("t" * 64, "{{ m }}", 64)),
    ):
        assert other.digest() != split.digest()


def test_spec_crosses_to_the_child_as_json_and_training_reads_only_encoded_examples_of_its_tokenizer(
    golden_base, tiny_base, tmp_path
):
    cfg = load_config(None, [f"paths.work_dir={tmp_path}", "sft.cutoff_len=auto", "sft.template=chatml"])
    split = tmp_path / "split"
    spec = training_spec(cfg, split, golden_base, tmp_path / "out")  # no SFT setting read: they are in the data
    assert TrainingSpec.model_validate(json.loads(json.dumps(spec.model_dump(mode="json")))) == spec
    # A folder of records alone (what sft_dataset wrote before it encoded examples) is refused with the fix.
    split.mkdir()
    write_jsonl(split / "train.jsonl", golden_records())
    tokenizer = load_tokenizer(golden_base)
    with pytest.raises(FileNotFoundError, match=r"train.examples.safetensors not found: .* not train.jsonl records"):
        read_split(split, "train", tokenizer)
    # The stage's tokenizer carries a chat template and has tokenized with offsets; its digest is still the
    # base model's. Another model's tokenizer gets other ids for the same text: its examples are refused.
    chat = load_chat_tokenizer(golden_base, SftConfig(template="chatml"))
    write_split(split, "train", encode_split(chat, golden_records(), 64))
    encoded = read_split(split, "train", tokenizer)
    assert encoded.encoding.cutoff_len == 64 and encoded.encoding.chat_template == chat.chat_template
    assert encoded.record_ids == [r["id"] for r in golden_records()]
    assert encoded.examples[0]["input_ids"] == encode_split(chat, golden_records()[:1], 64).examples[0]["input_ids"]
    write_split(split, "val", encode_split(chat, [], 64))  # sft.val_fraction=0 leaves an empty split
    assert read_split(split, "val", tokenizer).examples == []
    assert tokenizer_sha256(load_tokenizer(tiny_base)) != tokenizer_sha256(tokenizer)
    with pytest.raises(ValueError, match=r"encoded by another tokenizer .* materialize sft_dataset again"):
        read_split(split, "train", load_tokenizer(tiny_base))


@pytest.fixture(scope="module")
def golden_base(tmp_path_factory) -> str:
    return build_golden_base(tmp_path_factory.mktemp("launch-base"))


TRAIN = [
    "train.method=lora",
    "train.max_steps=4",
    "train.batch_size=4",
    "train.early_stopping_patience=0",
    "sft.val_fraction=0",
]  # 16 records leave no validation split: `finetune train` refuses one that is empty


def _materialize_adapter(tmp_path: Path, kept: Path, base: str, launcher) -> dg.MaterializeResult:
    @dg.asset(name="screened_records")
    def screened() -> StageReport:
        return StageReport(StageCounts("screened_records", 16, 16, 0, 0), kept.parent)

    overrides = [f"paths.work_dir={tmp_path / 'work'}", f"model.base={base}", *TRAIN]
    resources = {
        "settings": PipelineSettings(overrides=overrides),
        "trainer_launcher": launcher,
        "tracker": NoTracker(),
    }
    with dg.instance_for_test() as instance:
        run = dg.materialize([screened, base_model, sft_dataset, adapter], resources=resources, instance=instance)
        event = instance.get_latest_materialization_event(dg.AssetKey("adapter"))
        return run.output_for_node("adapter"), event.asset_materialization.metadata


@pytest.mark.slow
def test_cli_in_process_and_pipes_subprocess_train_byte_identical_adapters(golden_base, tmp_path):
    kept = tmp_path / "screened" / "kept.jsonl"
    kept.parent.mkdir()
    write_jsonl(kept, golden_records())
    code = cli_main(["train", "--data", str(kept), "--output", str(tmp_path / "cli"), "--tracker", "none",
                     "--set", f"paths.work_dir={tmp_path / 'work'}", "--set", f"model.base={golden_base}",
                     *(a for item in TRAIN for a in ("--set", item))])  # fmt: skip
    assert code == 0
    cli_weights = (tmp_path / "cli" / "adapter" / "adapter_model.safetensors").read_bytes()
    piped, metadata = _materialize_adapter(tmp_path / "piped", kept, golden_base, SubprocessLauncher())
    in_process, in_process_metadata = _materialize_adapter(tmp_path / "inproc", kept, golden_base, InProcessLauncher())
    for value in (piped, in_process):
        assert Path(value["adapter_dir"], "adapter_model.safetensors").read_bytes() == cli_weights
    # The child reported the materialization itself through Pipes, and the asset relayed it as it came.
    assert set(metadata) == set(in_process_metadata)
    assert {"loss_curve", "peak_rss_gib", "tokens_per_second", "result_file", "train_result"} <= set(metadata)
    assert metadata["train_result"].value["losses"] == piped["losses"] == in_process["losses"]
    written = json.loads(Path(metadata["result_file"].value).read_text(encoding="utf-8"))
    assert written["adapter_sha256"] == piped["adapter_sha256"] == metadata["adapter_sha256"].value
    assert metadata["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")


WORKER = """
import sys
import dagster as dg
from pathlib import Path
from assets.training import adapter
from finetune.data.records import StageCounts, StageReport
from resources import AccelerateLauncher, NoTracker, PipelineSettings, SubprocessLauncher, TorchrunLauncher
split, base, work, launcher = sys.argv[1:5]

@dg.asset(name="sft_dataset")
def split_files() -> StageReport:
    return StageReport(StageCounts("sft_dataset", 0, 0, 0, 0), Path(split))

@dg.asset(name="base_model")
def tiny() -> dict:
    return {"path": base}

launchers = {"subprocess": SubprocessLauncher(), "torchrun": TorchrunLauncher(nproc_per_node=2),
             "accelerate": AccelerateLauncher(num_processes=2)}
launch = launchers[launcher]
overrides = [f"paths.work_dir={work}", "train.method=lora", "train.epochs=100000", "train.batch_size=2",
             "train.early_stopping_patience=0", "train.eval_steps=1000000"]
resources = {"settings": PipelineSettings(overrides=overrides), "trainer_launcher": launch, "tracker": NoTracker()}
with dg.instance_for_test() as instance:
    dg.materialize([split_files, tiny, adapter], resources=resources, instance=instance)
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize(
    "launcher", ["subprocess", *(pytest.param(name, marks=pytest.mark.slow) for name in ("torchrun", "accelerate"))]
)
def test_sigkill_of_the_run_worker_takes_the_trainer_with_it(golden_base, tmp_path, launcher):
    """Under torchrun and accelerate the trainer is a launcher agent and two ranks: all must go."""
    split = tmp_path / "split"
    rows = golden_records()
    write_encoded_splits(split, {"train": rows[:12], "val": rows[12:]}, golden_base, SftConfig())
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    worker = subprocess.Popen(
        [sys.executable, str(script), str(split), golden_base, str(tmp_path / "work"), launcher],
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    trainers: set[int] = set()
    try:
        seen, deadline = [], time.time() + 240
        for line in worker.stdout:  # the trainer's own log line, relayed through Pipes: it is training
            seen.append(line)
            if "training lora:" in line or time.time() > deadline:
                break
        trainers = _descendants(worker.pid)
        assert any("training lora:" in line for line in seen), "".join(seen[-30:])
        assert len(trainers) >= (1 if launcher == "subprocess" else 3)  # a launcher agent and two ranks
        os.kill(worker.pid, signal.SIGKILL)  # the worker alone, as an OOM killer or `kill -9` would
        worker.wait()
        deadline = time.time() + 30
        while any(_alive(pid) for pid in trainers) and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in trainers if _alive(pid)], "the trainer outlived its run worker"
    finally:  # never leave a trainer behind, even when the test fails: only the processes this test started
        for pid in [worker.pid, *trainers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_only_safetensors_weights_are_loaded(golden_base, tmp_path):
    import torch

    from finetune.model.loading import load_causal_lm
    from finetune.train.methods import load_tuned

    pickled_adapter = tmp_path / "adapter"
    pickled_adapter.mkdir()
    (pickled_adapter / "adapter_config.json").write_text("{}")
    torch.save({}, pickled_adapter / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="has no adapter_model.safetensors .found: adapter_model.bin"):
        load_tuned(golden_base, pickled_adapter)
    pickled_model = tmp_path / "model"
    pickled_model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled_model / name).write_bytes((Path(golden_base) / name).read_bytes())
    torch.save(load_causal_lm(golden_base).state_dict(), pickled_model / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_causal_lm(str(pickled_model))
