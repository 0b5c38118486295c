"""Starting Label Studio the safe way: on 127.0.0.1, with telemetry, Sentry and the PyPI version check off.

Label Studio binds 0.0.0.0 and reports to Sentry and its telemetry endpoint unless told otherwise; offline,
an outbound call can stall a request. `finetune review serve` and the tests start it through this one
function so both get the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from finetune.config import PipelineConfig
from finetune.review.packet import ReviewError

OFFLINE_ENV = {
    "SENTRY_DSN": "",  # an empty DSN turns the backend's Sentry client off
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",  # no usage telemetry
    "LATEST_VERSION_CHECK": "false",  # no PyPI request on start
}


def label_studio_command(
    cfg: PipelineConfig, port: int, data_dir: Path, extra: list[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `label-studio start` command line and environment for a local server.

    Raises:
        ReviewError: the Label Studio venv is missing.
    """
    executable = cfg.resolve(cfg.review.label_studio_python).parent / "label-studio"
    if not executable.is_file():
        raise ReviewError(f"{executable} not found; run `make label-studio` (Label Studio gets its own venv)")
    cmd = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port), *(extra or [])]
    env = {**os.environ, **OFFLINE_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)}
    return cmd, env
