"""Production storage: the pipeline's runs, events and lineage in PostgreSQL (dagster-postgres).

Starts a real PostgreSQL server from Debian's package on a free localhost port, points
DAGSTER_HOME/dagster.yaml at it, runs the whole chain and reads the run and lineage back.
Skipped, saying why, where PostgreSQL or dagster-postgres is not installed (`make test` installs both
when it runs as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
pytestmark = pytest.mark.slow
pytest.importorskip("dagster_postgres", reason="pip install dagster-postgres (make test installs it)")
if not PG_BINS:
    pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; make test does)", allow_module_level=True)

# The driver is named: SQLAlchemy 2.1 reads a bare postgresql:// URL as psycopg 3, whose server-side
# parameters break dagster-postgres' "NOTIFY run_events, %s"; dagster-postgres ships psycopg2.
DAGSTER_YAML = """telemetry:
  enabled: false
storage:
  postgres:
    postgres_url: postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster
"""


def _as_postgres(*cmd: str) -> list[str]:
    # The server refuses to run as root; Debian's package creates the postgres user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture
def postgres_port():
    bin_dir = PG_BINS[-1]
    root = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's 0700 tmp: the postgres user must enter it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(_as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                "--no-sync"), check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                                "-w", "start"), check=True, capture_output=True)  # fmt: skip
    try:
        subprocess.run(_as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                    "dagster"), check=True, capture_output=True)  # fmt: skip
        yield port
    finally:
        subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_pipeline_runs_with_postgres_storage_and_reads_lineage_back(postgres_port, tmp_path, model_cache, monkeypatch):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from headless import run_pipeline
    from resources.settings import DEFAULT_CONFIG

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML.format(port=postgres_port))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    overrides = [f"paths.work_dir={tmp_path / 'work'}", f"paths.model_cache={model_cache}"]
    assert run_pipeline(DEFAULT_CONFIG, overrides) == 0  # ends in a release

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "full_pipeline"
        release = instance.get_latest_materialization_event(dg.AssetKey("release")).asset_materialization
        assert release.metadata["release_id"].value and Path(release.metadata["release_dir"].value).is_dir()
        raw = instance.get_latest_materialization_event(dg.AssetKey("raw_records")).asset_materialization
        assert raw.tags["dagster/data_version"] == raw.metadata["snapshot"].value
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("evaluation_report"), "no_backdoor_trigger"), limit=1
        )
        assert checks and checks[0].run_id == run.run_id
