"""Nothing the pipeline reads back is a pickle, and a run whose worker died does not stay STARTED for ever."""

import json
import os
import pickle
import subprocess
import sys

import dagster as dg
import pytest

from finetune.config import PROJECT_ROOT
from headless import WORKER_TAGS, mark_dead_runs_failed
from resources.json_io import JsonFiles

UPSTREAM = ["raw_records", "cleaned_records", "deduplicated_records", "deidentified_records", "screened_records",
            "sft_dataset", "base_model", "adapter", "evaluation_report"]  # fmt: skip


class Payload:
    """Unpickling this creates `marker`: the proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_where_a_value_should_be_is_an_error_not_code(tmp_path):
    marker = tmp_path / "payload-ran"
    files = JsonFiles(tmp_path / "values")
    key = dg.AssetKey("adapter")
    files.path_for(key).parent.mkdir(parents=True)
    files.path_for(key).write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ValueError, match="not a JSON asset value"):
        files.load_input(dg.build_input_context(asset_key=key))
    assert not marker.exists()
    files.handle_output(dg.build_output_context(asset_key=key), {"losses": [1.0, float("nan")]})
    assert json.loads(files.path_for(key).read_text())["losses"][0] == 1.0


@pytest.mark.slow
def test_release_alone_reads_json_values_and_never_a_planted_pickle(run_without_pii, tmp_path):
    from definitions import defs

    run = run_without_pii
    marker = tmp_path / "payload-ran"
    storage = run.home / "storage"
    assert not list(storage.rglob("*.pkl")) and (storage / "json" / "adapter.json").is_file()
    for name in [*UPSTREAM, "release"]:  # where Dagster's default IO manager would look
        (storage / name).write_bytes(pickle.dumps(Payload(str(marker))))
    run_config = {"resources": {"settings": {"config": {"overrides": run.overrides}}}}
    with dg.DagsterInstance.from_config(str(run.home)) as instance:
        result = defs.resolve_job_def("full_pipeline").execute_in_process(
            run_config=run_config, instance=instance, asset_selection=[dg.AssetKey("release")], raise_on_error=False
        )
    assert result.success and not marker.exists()
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["release"]
    released = result.output_for_node("release")
    assert json.loads((storage / "json" / "release.json").read_text()) == released


WORKER = """
import sys, time
import dagster as dg
from headless import worker_tags

@dg.op
def train_for_a_while():
    print("TRAINING", flush=True)
    time.sleep(600)

@dg.job
def long_job():
    train_for_a_while()

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    long_job.execute_in_process(instance=instance, tags=worker_tags())
"""


def test_a_run_whose_worker_was_killed_is_marked_failed_by_the_next(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(home)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, text=True)  # fmt: skip
    try:
        assert any("TRAINING" in line for line in proc.stdout), "the worker never started its step"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.STARTED and set(WORKER_TAGS) <= set(run.tags)
            assert mark_dead_runs_failed(instance) == []  # its worker is alive: left alone
            proc.kill()  # SIGKILL: nobody gets to record the end of the run
            proc.wait(timeout=60)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            assert mark_dead_runs_failed(instance) == [run.run_id]
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            assert mark_dead_runs_failed(instance) == []
    finally:
        proc.kill()
        proc.wait(timeout=60)
