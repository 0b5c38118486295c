"""The blind review through a real Label Studio server, its SDK, and a browser.

Starts `label-studio` (its own venv, `make label-studio`) on a free 127.0.0.1 port with a temporary data dir,
telemetry, Sentry and the version check off, and outbound HTTP pointed at a closed local port so nothing can
hang offline. The pipeline exports a packet through label-studio-sdk, two raters join through the invite link
and annotate through the SDK, and the pipeline pulls, unblinds and gates. Skipped, with the reason, where that
venv could not be installed.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from local_server import free_port, stop_process_group, wait_for_http

from finetune.config import PROJECT_ROOT, load_config
from finetune.review.collect import collect_expert_review
from finetune.review.gate import experts_prefer_tuned
from finetune.review.label_studio import LabelStudioBridge, export_to_label_studio
from finetune.review.packet import build_packet
from finetune.review.server import label_studio_command
from tests.review_sim import FORBIDDEN, judge, label_studio_result, tiny_evaluation

pytestmark = pytest.mark.slow
LS_PYTHON = load_config().resolve(load_config().review.label_studio_python)
SHOTS = PROJECT_ROOT / "var" / "test-artifacts" / "review"
_probe = (
    subprocess.run([str(LS_PYTHON), "-c", "import label_studio, label_studio_sdk"], capture_output=True, timeout=120)
    if LS_PYTHON.is_file()
    else None
)
if _probe is None or _probe.returncode:
    pytest.skip(
        f"Label Studio is not installed in {LS_PYTHON.parent.parent} (make label-studio; make test runs it)",
        allow_module_level=True,
    )


class LabelStudioServer:
    """`label-studio start` on 127.0.0.1 with a fresh data dir and an admin whose API token we choose."""

    def __init__(self, tmp: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.admin, self.password, self.token = "reviewer@example.org", secrets.token_hex(8), secrets.token_hex(20)
        admin = ["--username", self.admin, "--password", self.password, "--user-token", self.token,
                 "--enable-legacy-api-token"]  # fmt: skip
        cmd, env = label_studio_command(load_config(), int(self.url.rsplit(":", 1)[1]), tmp / "ls-data", admin)
        dead = "http://127.0.0.1:9"  # nothing listens there: an outbound call would fail at once, never hang
        env |= {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": "127.0.0.1,localhost"}
        self.log = (tmp / "label_studio.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_for_http(self.url + "/health", self.proc, 240):
            return
        self.stop()
        pytest.fail(f"label-studio did not answer on {self.url}; see {self.log.name}")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ls = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    yield ls
    ls.stop()


@pytest.fixture(scope="module")
def projects(server, tmp_path_factory):
    """Two packets exported to Label Studio: in one the tuned answers are right, in the other the base ones."""
    tmp, out = tmp_path_factory.mktemp("review"), {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LABEL_STUDIO_API_KEY", server.token)
        for good in ("tuned", "base"):
            cfg = load_config(PROJECT_ROOT / "finetune.yaml", [f"paths.work_dir={tmp / good}",
                              f"review.label_studio_url={server.url}", "review.items=12", "review.min_items=10"])  # fmt: skip
            preds, labels, right = tiny_evaluation(tmp / f"eval{len(out)}", n=18, good=good)
            packet = build_packet(cfg, preds, labels)
            project = export_to_label_studio(cfg, packet)
            tasks = LabelStudioBridge(cfg).call("pull", project_id=project.project_id)["tasks"]
            out[good] = Exported(cfg, packet, project, tasks, right)
        yield out, env


@dataclass
class Exported:
    cfg: Any
    packet: Any
    project: Any
    tasks: list[dict]
    right: dict[str, str]


def annotate(server, exported: list[Exported], seed: int) -> dict:
    """Two raters judge every task they are shown (its data only), through the SDK, each as their own user."""
    rng, raters = random.Random(seed), []
    for n in (1, 2):
        annotations = []
        for ex in exported:
            for task in ex.tasks:
                answers = {letter: task["data"][f"answer_{letter.lower()}"] for letter in "ABC"}
                result = label_studio_result(*judge(task["data"]["prompt"], answers, ex.right, rng))
                annotations.append({"task": task["id"], "result": result})
        raters.append({"email": f"expert{n}@example.org", "password": f"expert-{n}-pass", "annotations": annotations})
    request = {"url": server.url, "admin_token": server.token, "raters": raters}
    proc = subprocess.run([str(LS_PYTHON), str(PROJECT_ROOT / "tests" / "label_studio_raters.py")],
                          input=json.dumps(request, ensure_ascii=False), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4/IPv6 sockets listening on `port`, read from /proc/net (no packet sent)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_label_studio_listens_on_loopback_only(server):
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("no /proc/net/tcp on this system to read listening sockets from")
    assert _listening_addresses(int(server.url.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1, little-endian hex


def test_label_studio_tasks_name_no_arm_model_or_path(projects):
    exported, _ = projects
    for ex in exported.values():
        tasks = json.dumps([t["data"] for t in ex.tasks], ensure_ascii=False)  # exactly what the UI receives
        assert len(ex.tasks) == 12 and "ranking_items" in tasks
        for word in (*FORBIDDEN, ex.packet.evaluation_dir, str(ex.cfg.work_dir)):
            assert word not in tasks, word
        assert not re.search(r"\bbase\b", tasks)


def test_raters_in_label_studio_decide_the_gate(server, projects, tmp_path):
    exported, _ = projects
    users = annotate(server, [exported["tuned"], exported["base"]], seed=0)
    verdicts = {}
    for good, ex in exported.items():
        summary = collect_expert_review(ex.cfg, ex.packet, tmp_path / good)  # pulls, unblinds, summarizes
        assert summary.items_per_rater == {f"ls-{uid}": 12 for uid in users.values()}
        assert "pulled 24 judgements from Label Studio" in summary.notes[0]
        verdicts[good] = experts_prefer_tuned(summary, ex.cfg.review)
        if good == "tuned":
            tuned, base = summary.criteria["tuned"]["accuracy"], summary.criteria["base"]["accuracy"]
            assert tuned.low > base.high  # the intervals separate
            assert summary.agreement["ranking"] is not None and summary.agreement["ranking"] > 0.5
    assert verdicts["tuned"].passed, verdicts["tuned"].message
    assert not verdicts["base"].passed and "experts do not prefer tuned over base" in verdicts["base"].message


@pytest.mark.browser
def test_a_task_in_the_label_studio_ui_shows_three_blind_answers_and_five_criteria(server, projects):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; make test does)")
    ex = projects[0]["tuned"]
    task = next(t for t in ex.tasks if "判断情感" in t["data"]["prompt"])  # Chinese prompt and answers
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server.url) else (
            outside.append(r.request.url), r.abort()))  # fmt: skip
        page.goto(server.url + "/user/login/")
        page.fill("input[name=email]", server.admin)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{server.url}/projects/{ex.project.project_id}/data?task={task['id']}", wait_until="networkidle")
        page.get_by_text("幻觉减少 fewer hallucinations").first.wait_for(timeout=60_000)
        shot = SHOTS / "label-studio-task.png"
        page.screenshot(path=str(shot), full_page=True)
        body = page.locator("body").inner_text()
        browser.close()
    for text in ("相关性", "准确性", "专业性", "风格符合度", "幻觉减少", "回答 A", "回答 B", "回答 C",
                 task["data"]["prompt"], task["data"]["answer_a"]):  # fmt: skip
        assert text in body, text
    for word in FORBIDDEN:
        assert word not in body, word
    assert outside == [], f"the Label Studio page tried to reach the outside: {outside}"
    assert shot.stat().st_size > 50_000
