"""Label Studio as the annotation tool: export a packet as a project, pull its annotations back.

The SDK calls run in `review.label_studio_python` (see `ls_client.py` for why); this module builds the
requests, keeps the project's id beside the packet (`label_studio.json`) and turns annotations into
judgements. Raters are recorded by their Label Studio user id (`ls-<id>`), never by name or e-mail.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import PipelineConfig
from finetune.review import ls_client
from finetune.review.judgements import Collected, make_judgement
from finetune.review.label_config import COMMENT, RANKING, label_config, ranking_items
from finetune.review.packet import Packet, ReviewError

PROJECT_FILE = "label_studio.json"
DESCRIPTION = (
    "盲评：三个回答 (A/B/C) 来自不同系统，顺序随机。请按五项标准给每个回答打 1-5 分，从好到差排序，可写评语。\n"
    "Blind review: answers A/B/C come from different systems in random order. Rate each on the five criteria "
    "(1-5), rank them best to worst, and add a comment if you like."
)


@dataclass(frozen=True)
class LabelStudioProject:
    """Where a packet was exported to."""

    url: str
    project_id: int


class LabelStudioBridge:
    """Runs `ls_client.py` in the Python that has label-studio-sdk; the token goes through the environment."""

    def __init__(self, cfg: PipelineConfig, url: str = ""):
        review = cfg.review
        self.url = (url or review.label_studio_url).rstrip("/")
        if not self.url:
            raise ReviewError("no Label Studio URL: pass --to URL or set review.label_studio_url in finetune.yaml")
        self.python = cfg.resolve(review.label_studio_python)
        self.token_env, self.timeout = review.label_studio_api_key_env, review.timeout_s
        if not self.python.is_file():
            raise ReviewError(
                f"review.label_studio_python {self.python} does not exist; run `make label-studio` (its own venv) "
                "or point it at a Python with label-studio-sdk==2.1.2"
            )
        if not os.environ.get(self.token_env):
            raise ReviewError(
                f"${self.token_env} is empty: export your Label Studio API token (Account & Settings) "
                "in that variable (review.label_studio_api_key_env names it)"
            )

    def call(self, command: str, **fields: Any) -> dict[str, Any]:
        """One request; raises ReviewError with Label Studio's message when it fails or does not answer."""
        request = {"command": command, "url": self.url, "timeout": self.timeout, **fields}
        env = {**os.environ, ls_client.TOKEN_ENV: os.environ[self.token_env]}
        try:
            proc = subprocess.run(
                [str(self.python), ls_client.__file__],
                input=json.dumps(request, ensure_ascii=False),
                capture_output=True,
                text=True,
                env=env,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise ReviewError(f"Label Studio at {self.url} did not answer within {self.timeout:.0f} s") from err
        try:
            answer = json.loads(proc.stdout or "{}")
        except json.JSONDecodeError:
            answer = {"error": proc.stderr.strip()[-500:] or f"exit status {proc.returncode}"}
        if proc.returncode or "error" in answer:
            raise ReviewError(f"Label Studio {command} at {self.url} failed: {answer.get('error', proc.stderr[-500:])}")
        return answer


def export_to_label_studio(cfg: PipelineConfig, packet: Packet, url: str = "") -> LabelStudioProject:
    """Create a project holding the packet's tasks; remembers it so `pull` and the expert_review asset find it."""
    bridge = LabelStudioBridge(cfg, url)
    tasks = [item.task_data() | {"ranking_items": ranking_items()} for item in packet.items()]
    answer = bridge.call(
        "export",
        title=f"Blind review {packet.packet_id}",
        description=DESCRIPTION,
        label_config=label_config(),
        tasks=tasks,
    )
    project = LabelStudioProject(bridge.url, int(answer["project_id"]))
    (Path(packet.dir) / PROJECT_FILE).write_text(json.dumps(project.__dict__), encoding="utf-8")
    return project


def exported_project(packet: Packet) -> LabelStudioProject | None:
    """The project this packet was exported to, if any."""
    path = Path(packet.dir) / PROJECT_FILE
    return LabelStudioProject(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def pull_from_label_studio(cfg: PipelineConfig, project: LabelStudioProject) -> Collected:
    """Submitted (not skipped) annotations as judgements; a rater's latest annotation of a task counts."""
    answer = LabelStudioBridge(cfg, project.url).call("pull", project_id=project.project_id)
    return annotations_to_judgements(answer["tasks"], f"label-studio:{project.project_id}")


def annotations_to_judgements(tasks: list[dict[str, Any]], source: str) -> Collected:
    """Turn pulled tasks into judgements; an incomplete annotation becomes a problem naming task and field."""
    collected = Collected()
    for task in tasks:
        latest: dict[Any, dict[str, Any]] = {}
        for a in sorted(task["annotations"], key=lambda a: str(a.get("updated_at"))):  # ISO times sort in order
            if not a.get("was_cancelled"):
                latest[a["completed_by"]] = a
        if not latest:
            collected.unanswered += 1
        for user, a in sorted(latest.items(), key=lambda kv: str(kv[0])):
            results = {r["from_name"]: r.get("value", {}) for r in a.get("result") or []}
            fields = {name: value.get("rating") for name, value in results.items() if "rating" in value}
            ranking = results.get(RANKING, {}).get("ranker", {}).get(RANKING)
            comment = " ".join(results.get(COMMENT, {}).get("text", []))
            where = f"Label Studio task {task['id']} annotation {a['id']}"
            try:
                judgement = make_judgement(task["data"]["item"], f"ls-{user}", fields, ranking, comment, source, where)
            except ReviewError as err:
                collected.problems.append(str(err))
                continue
            collected.judgements.append(judgement)
    return collected
