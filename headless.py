"""Run the whole chain without the UI: `finetune run` calls this in a child process.

It loads the same Definitions as `dagster dev`, stores runs in the same DAGSTER_HOME,
and ends by naming the release or the blocking check that stopped it.
"""

import argparse
import os
import sys
from pathlib import Path

from finetune.config import load_config
from resources.settings import DEFAULT_CONFIG

DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def ensure_dagster_home(work_dir: Path) -> Path:
    """Use $DAGSTER_HOME, or `<work_dir>/dagster_home`, creating it with telemetry off (no network here)."""
    home = Path(os.environ.get("DAGSTER_HOME") or work_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_pipeline(config_path: str, overrides: list[str]) -> int:
    """Materialize every asset and check; returns 0 on release, 2 when a gate blocked it, 1 on error."""
    cfg = load_config(config_path, overrides)
    home = ensure_dagster_home(cfg.work_dir)
    import dagster as dg

    from definitions import defs

    job = defs.resolve_job_def("full_pipeline")
    run_config = {
        "resources": {"settings": {"config": {"config_path": str(config_path), "overrides": overrides}}},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
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
