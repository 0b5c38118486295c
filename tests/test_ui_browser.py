"""The Dagster UI in a real browser: Materialize all through the asset graph, then read the gates.

Starts `dagster dev` on a free localhost port (project workspace, temp DAGSTER_HOME and config) and
drives Debian's Chromium with Playwright. Screenshots land in var/test-artifacts/ui/. Skipped, with
the reason, where Chromium or Playwright is missing (`.ci/run` installs both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from local_server import free_port, stop_process_group, wait_for_http

from finetune.config import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = PROJECT_ROOT / "var" / "test-artifacts" / "ui"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)", allow_module_level=True
    )


def _config(tmp: Path, model_cache: Path, extra: str) -> Path:
    sample = PROJECT_ROOT / "data" / "sample"
    path = tmp / "finetune.yaml"
    path.write_text(
        f"paths:\n  raw_data: [{sample / 'instructions.jsonl'}]\n  work_dir: {tmp / 'work'}\n"
        f"  model_cache: {model_cache}\n  pretrain_corpus: {sample / 'pretrain_corpus.txt'}\n"
        f"  ceval_dir: {sample / 'ceval'}\n{extra}",
        encoding="utf-8",
    )
    return path


class DagsterUI:
    """`dagster dev` for this project on a free localhost port, stopped with its whole process group."""

    def __init__(self, tmp: Path, config: Path):
        home = tmp / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "DAGSTER_HOME": str(home), "FINETUNE_CONFIG": str(config)}
        cmd = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
               "-p", self.url.rsplit(":", 1)[1]]  # fmt: skip
        self.log = (tmp / "dagster_dev.log").open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait_for_http(self.url + "/server_info", self.proc, 180):
            return
        self.stop()
        pytest.fail(f"dagster dev did not answer on {self.url} (it exited, or 180 s passed); see {self.log.name}")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.close()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    # The first visit shows a "Join the Dagster community" modal some time after load; dismiss it whenever
    # it gets in the way of an action.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    return page


def _open(page, url: str) -> None:
    page.goto(url, wait_until="networkidle")


def materialize_all_and_wait(page, ui: DagsterUI, shot: str, timeout: float = 600) -> str:
    """Click "Materialize all" on the asset graph and wait on the Runs page until the run ends."""
    _open(page, ui.url + "/asset-groups")
    page.get_by_text("data", exact=True).first.wait_for()  # the asset groups are drawn
    page.screenshot(path=str(SHOTS / f"{shot}-graph.png"))
    page.get_by_role("button", name="Materialize all").click()
    page.get_by_text("Launched run").wait_for(timeout=60_000)
    deadline = time.time() + timeout
    while time.time() < deadline:
        _open(page, ui.url + "/runs")
        page.get_by_text("Launched by").first.wait_for()
        status = page.locator("body").inner_text()  # one run in this fresh instance: its status badge
        if "Success" in status or "Failure" in status:
            page.screenshot(path=str(SHOTS / f"{shot}-runs.png"))
            return "Success" if "Success" in status else "Failure"
        time.sleep(5)
    pytest.fail(f"the run launched from the UI did not finish within {timeout:.0f} s")


def _check_states(page, ui: DagsterUI, asset: str, shot: str) -> dict[str, str]:
    """The check names and the state the Checks tab's list shows under each (Succeeded, Failed, ...)."""
    _open(page, f"{ui.url}/assets/{asset}?view=checks")
    page.get_by_text("Checks (").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / f"{shot}-{asset}-checks.png"))
    lines = [line.strip() for line in page.locator("body").inner_text().splitlines() if line.strip()]
    states = {}
    for name, state in zip(lines, lines[1:], strict=False):
        if state in ("Succeeded", "Failed", "Not evaluated", "Skipped", "Execution failed"):
            states[name] = state
    return states


@contextmanager
def ui_run(tmp_path: Path, model_cache: Path, browser, extra_config: str, shot: str):
    """Start the UI on a config, Materialize all from the asset graph; yield (page, ui, run status)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    ui = DagsterUI(tmp_path, _config(tmp_path, model_cache, extra_config))
    try:
        page = _new_page(browser)
        yield page, ui, materialize_all_and_wait(page, ui, shot)
    finally:
        ui.stop()


def _release_page(page, ui: DagsterUI, shot: str) -> str:
    """The release asset's page text (status and metadata), with a screenshot."""
    _open(page, ui.url + "/assets/release")
    page.get_by_text("Latest materialization").wait_for()
    page.screenshot(path=str(SHOTS / f"{shot}-release.png"))
    return page.locator("body").inner_text()


def test_materialize_all_from_the_ui_ends_in_a_release_with_passed_gates(tmp_path, model_cache, browser):
    with ui_run(tmp_path, model_cache, browser, "", "pass") as (page, ui, status):
        assert status == "Success"
        gates = _check_states(page, ui, "evaluation_report", "pass")
        assert gates == {name: "Succeeded" for name in ("no_backdoor_trigger", "no_pii_regurgitation",
                         "not_worse_than_base", "heldout_loss_below_base", "answers_not_degenerate")}  # fmt: skip
        assert "Passed" in page.locator("body").inner_text()  # the selected check's latest evaluation
        body = _release_page(page, ui, "pass")
        assert "Failed in" not in body and "Never materialized" not in body
        assert "release_id" in body and "model_card" in body  # the release's metadata is shown


def test_a_failing_gate_shows_as_failed_and_the_release_is_skipped(tmp_path, model_cache, browser):
    # With de-identification off the independent PII re-scan must fail and block everything downstream.
    pii_off = (
        "pii:\n  enabled: false\ngates:\n  weakened_settings:\n    pii.enabled: {by: ui@test, reason: gate must fail}\n"
    )
    with ui_run(tmp_path, model_cache, browser, pii_off, "fail") as (page, ui, status):
        assert status == "Failure"
        checks = _check_states(page, ui, "deidentified_records", "fail")
        assert checks.get("no_residual_pii") == "Failed", checks
        body = _release_page(page, ui, "fail")
        assert "Failed in" in body or "Never materialized" in body or "Skipped" in body
        assert "No metadata found" in body and "release_id" not in body
