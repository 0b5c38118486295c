"""Run the whole chain without the UI: `finetune run` calls this in a child process.

It loads the same Definitions as `dagster dev`, stores runs in the same DAGSTER_HOME,
and ends by naming the release or the blocking check that stopped it.
"""

import argparse
import os
import socket
import sys
from pathlib import Path

from finetune.config import ConfigError, load_config
from finetune.weakening import WeakenedSettingError, require_accepted
from resources.settings import DEFAULT_CONFIG

DAGSTER_YAML = "telemetry:\n  enabled: false\n"
# Who runs a `finetune run`: a later one marks the run failed when this process is gone (SIGKILL, OOM,
# a closed terminal) instead of leaving it STARTED for ever. The start time tells a reused PID apart.
WORKER_TAGS = ("finetune/worker_host", "finetune/worker_pid", "finetune/worker_started")


def ensure_dagster_home(work_dir: Path) -> Path:
    """Use $DAGSTER_HOME, or `<work_dir>/dagster_home`, creating it with telemetry off (no network here)."""
    home = Path(os.environ.get("DAGSTER_HOME") or work_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def worker_tags() -> dict[str, str]:
    """The tags that name this process as the run's worker."""
    return dict(
        zip(WORKER_TAGS, (socket.gethostname(), str(os.getpid()), repr(process_started(os.getpid()))), strict=True)
    )


def mark_dead_runs_failed(instance) -> list[str]:
    """Report failed every STARTED run a `finetune run` on this host began whose worker process is gone.

    Returns the run ids marked. Runs started elsewhere (the UI's run launcher, another host sharing
    PostgreSQL storage) carry no worker tags for this host and are left to Dagster's run monitoring.
    """
    import dagster as dg

    marked = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        host, pid, started = (run.tags.get(tag) for tag in WORKER_TAGS)
        if host != socket.gethostname() or not (pid or "").isdigit():
            continue
        if repr(process_started(int(pid))) == started:
            continue  # still running
        instance.report_run_failed(
            run, message=f"its worker process {pid} on {host} is gone (killed?); marked failed by a later finetune run"
        )
        marked.append(run.run_id)
    return marked


def run_pipeline(config_path: str, overrides: list[str]) -> int:
    """Materialize every asset and check; returns 0 on release, 2 when a gate blocked it or the config is
    refused, 1 on error."""
    config_path = str(Path(config_path).resolve())  # the caller's working directory, before anything else reads it
    try:
        cfg = load_config(config_path, overrides)
        require_accepted(cfg)
    except (ConfigError, WeakenedSettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    home = ensure_dagster_home(cfg.work_dir)
    import dagster as dg

    from definitions import defs

    job = defs.resolve_job_def("full_pipeline")
    run_config = {
        "resources": {"settings": {"config": {"config_path": config_path, "overrides": overrides}}},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with dg.DagsterInstance.get() as instance:
        for run_id in mark_dead_runs_failed(instance):
            print(f"Run {run_id} had been left STARTED by a worker that is gone: marked failed.")
        result = job.execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False, tags=worker_tags()
        )
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    failed_checks = [e for e in failed if e.severity == dg.AssetCheckSeverity.ERROR]
    for check in failed_checks:
        print(
            f"BLOCKED by check '{check.check_name}' on asset '{check.asset_key.to_user_string()}': {check.description}"
        )
    for check in (e for e in failed if e.severity != dg.AssetCheckSeverity.ERROR):  # WARN: reported, not blocking
        print(f"WARNING from check '{check.check_name}' (does not block): {check.description}")
    release = None
    if result.success:
        release = result.output_for_node("release")
    if release:
        print(f"Release: {release['path']}\nManifest: {release['manifest']}")
    elif not failed_checks:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"FAILED step '{event.step_key}': {event.step_failure_data.error.message.strip()}")
    print(
        f"Run id {result.run_id}; DAGSTER_HOME={home}. Inspect it in the UI: make ui (or DAGSTER_HOME={home} dagster dev)"
    )
    if release:
        return 0
    return 2 if failed_checks else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialize the whole gated pipeline headless.")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    return run_pipeline(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
