"""A run killed in the middle of a stage is re-executed from failure (Dagster re-execution) without
re-running finished stages, corrupting artifacts or losing records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from finetune.config import PROJECT_ROOT
from jobs import resolved_full_pipeline

RUN_SCRIPT = """
import json, sys
import dagster as dg
from jobs import resolved_full_pipeline
with dg.DagsterInstance.get() as instance:
    dg.execute_job(dg.reconstructable(resolved_full_pipeline), instance, run_config=json.loads(sys.argv[1]))
"""


def _run_config(tmp_path: Path, model_cache: Path) -> dict:
    overrides = [
        f"paths.work_dir={tmp_path / 'work'}",
        f"paths.model_cache={model_cache}",
        "train.epochs=30",
        "train.early_stopping_patience=0",
    ]
    # The definitions' in-process executor; their JSON IO manager persists each step's output, which is
    # what re-execution reads back.
    return {"resources": {"settings": {"config": {"overrides": overrides}}}}


@pytest.mark.slow
def test_run_killed_during_training_reexecutes_from_failure(tmp_path, model_cache, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    run_config = _run_config(tmp_path, model_cache)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, json.dumps(run_config)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    deadline, seen = time.time() + 300, []
    for line in proc.stdout:
        seen.append(line)
        if " step 36/" in line or time.time() > deadline:
            break  # inside the training loop, with the checkpoint of step 18 complete
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: executor, step processes, trainer
    proc.wait()
    assert any(" step 36/" in line for line in seen), "".join(seen[-30:])

    with dg.DagsterInstance.get() as instance:
        (killed,) = instance.get_runs()
        assert killed.status == dg.DagsterRunStatus.STARTED  # nobody got to record the end
        instance.report_run_failed(killed)  # what run monitoring / the UI's "mark as failed" does
        options = dg.ReexecutionOptions.from_failure(killed.run_id, instance)
        result = dg.execute_job(
            dg.reconstructable(resolved_full_pipeline), instance, run_config=run_config, reexecution_options=options
        )
        assert result.success
        trained = instance.get_latest_materialization_event(dg.AssetKey("adapter")).asset_materialization.metadata
        # The killed trainer's checkpoint was picked up, and the run still ends at the planned step count.
        assert 0 < trained["resumed_from_step"].value < trained["steps"].value == 30 * 18
        rerun_steps = {s.step_key for s in instance.get_run_step_stats(result.run_id)}
    assert "adapter" in rerun_steps and "release" in rerun_steps
    assert not rerun_steps & {"raw_records", "cleaned_records", "deduplicated_records"}  # finished stages kept

    artifacts = tmp_path / "work" / "artifacts"
    assert not list(artifacts.rglob("*.tmp")), "a killed write left a temp file behind"
    for stage in ("raw_records", "cleaned_records", "deduplicated_records", "deidentified_records"):
        (run_dir,) = (artifacts / stage).iterdir()  # written once, by the killed run, and reused
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        rows = sum(1 for _ in (run_dir / "kept.jsonl").open(encoding="utf-8"))
        assert rows == report["kept"] and report["in"] == report["kept"] + report["dropped"] + report["quarantined"]


MULTIPROCESS_SCRIPT = """
import json, sys
import dagster as dg
from jobs import resolved_full_pipeline
selection = [dg.AssetKey("raw_records")]  # the asset and its accounting check: two steps, two processes
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(dg.reconstructable(resolved_full_pipeline), instance, run_config=json.loads(sys.argv[1]),
                            asset_selection=selection)
    steps = {s.step_key: s.status.value for s in instance.get_run_step_stats(result.run_id)}
    pids = {e.dagster_event.pid for e in instance.all_logs(result.run_id) if e.is_dagster_event and e.dagster_event.is_step_start}
    print("RESULT", json.dumps({"success": result.success, "steps": steps, "pids": len(pids)}))
"""


@pytest.mark.slow
def test_multiprocess_executor_runs_steps_in_their_own_processes(tmp_path, model_cache):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "DAGSTER_HOME": str(home),
        "FINETUNE_EXECUTOR": "multiprocess",
    }
    run_config = _run_config(tmp_path, model_cache) | {"execution": {"config": {"max_concurrent": 2}}}
    out = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT, json.dumps(run_config)], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, out.stderr[-3000:]
    result = json.loads(line[7:])
    assert result["success"] and result["steps"]["raw_records"] == "SUCCESS"
    assert result["pids"] == len(result["steps"]) >= 2  # one process per step
