"""Label Studio calls through label-studio-sdk, run as a script in the Python that has the SDK.

label-studio-sdk 2.1.2 pins numpy < 2.3 (through opencv-python-headless) and clashes with this project's
environment, so it lives in its own venv (`make label-studio`) and the pipeline runs this file there,
exchanging JSON on stdin/stdout (`finetune.review.label_studio`). It imports only the standard library and
the SDK. The API token arrives in the environment variable TOKEN_ENV, never on the command line.

Request: {"command": "export"|"pull"|"tasks", "url": ..., "timeout": seconds, ...command fields}.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOKEN_ENV = "FINETUNE_LABEL_STUDIO_TOKEN"


def _client(request: dict[str, Any]):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=request["url"], api_key=os.environ[TOKEN_ENV], timeout=request.get("timeout", 60))


def export(request: dict[str, Any]) -> dict[str, Any]:
    """Create the project with the labelling config and import the tasks; returns the project id."""
    client = _client(request)
    project = client.projects.create(
        title=request["title"], description=request["description"], label_config=request["label_config"]
    )
    client.projects.import_tasks(id=project.id, request=request["tasks"])
    return {"project_id": project.id, "tasks": len(request["tasks"])}


def _annotation(a: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "completed_by", "result", "was_cancelled", "updated_at")
    return {k: a.get(k) for k in keep}


def pull(request: dict[str, Any]) -> dict[str, Any]:
    """Every task's data and its annotations (only the fields the pipeline reads: no user names or e-mails)."""
    tasks = []
    for task in _client(request).tasks.list(project=request["project_id"], fields="all"):
        tasks.append(
            {"id": task.id, "data": task.data, "annotations": [_annotation(a) for a in task.annotations or []]}
        )
    return {"tasks": tasks}


def task_data(request: dict[str, Any]) -> dict[str, Any]:
    """The data of every task, exactly as the annotation UI receives it (used to check the blinding)."""
    return {"tasks": [t.data for t in _client(request).tasks.list(project=request["project_id"])]}


COMMANDS = {"export": export, "pull": pull, "tasks": task_data}


def main() -> int:
    request = json.load(sys.stdin)
    try:
        answer = COMMANDS[request["command"]](request)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which raises with the message
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, sys.stdout)
        return 1
    json.dump(answer, sys.stdout, ensure_ascii=False, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
