"""Each gate computed once: the check records its verdict beside the artifact it judged, the release copies it.

A Dagster check computes its gate from the artifact's written files and records the verdict in the
artifact's folder (`gates/<gate>-<settings>.json`, one file per gate, so checks that run at the same time
never write the same file). The release and its manifest read those records (`evaluate_gate`) instead of
computing the gates a second time, so the verdict a user saw in the UI is the one the release holds.

A verdict depends on the artifact, on the `gates` settings (thresholds, alpha) and on the gates' methods,
so each record is named by a digest of the settings and `METHODS_VERSION`, overrides aside (an override is
applied where a verdict is shown, never recorded): a release under other settings, or by newer methods,
decides the gate again and records that beside the first. With no usable record (a release built outside
Dagster, a check that did not run), the gate is computed then and recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.config import Gate, GatesConfig
from finetune.data.records import write_json
from finetune.gates import GateResult

GATES_FOLDER = "gates"
# Part of every record's name: bump it when a gate's test or the meaning of a figure it records changes
# (2: `detectable_asr` became the attack success rate flagged with 80% power), so that a release of an
# artifact judged by older code decides its gates again instead of showing old figures under new labels.
METHODS_VERSION = 2


def settings_digest(cfg: GatesConfig) -> str:
    """Digest of the settings a verdict depends on (overrides aside) and of the gates' methods version."""
    settings = cfg.model_dump(mode="json", exclude={"overrides"}) | {"_methods_version": METHODS_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def gate_file(folder: Path, name: Gate, cfg: GatesConfig) -> Path:
    return Path(folder) / GATES_FOLDER / f"{name.value}-{settings_digest(cfg)[:16]}.json"


def record_gate(folder: Path, result: GateResult, cfg: GatesConfig) -> GateResult:
    """Record a gate's verdict (before any override) in the folder of the artifact it judged."""
    path = gate_file(folder, result.name, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"gates_settings_sha256": settings_digest(cfg), "verdict": result.to_dict()})
    return result


def recorded_gate(folder: Path, name: Gate, cfg: GatesConfig) -> GateResult | None:
    """The verdict recorded for `name` under these settings, or None."""
    path = gate_file(folder, name, cfg)
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if record.get("gates_settings_sha256") != settings_digest(cfg):
        return None
    verdict = record["verdict"]
    return GateResult(**{**verdict, "name": Gate(verdict["name"])})


def evaluate_gate(folder: Path, name: Gate, cfg: GatesConfig, compute: Callable[[], GateResult]) -> GateResult:
    """The verdict a check recorded for this artifact, or `compute()` recorded now when none was."""
    recorded = recorded_gate(folder, name, cfg)
    return recorded if recorded is not None else record_gate(folder, compute(), cfg)


def training_folder(train: dict[str, Any]) -> Path:
    """The adapter asset's folder (the adapter itself is the `adapter` folder inside it, copied into releases)."""
    return Path(train["adapter_dir"]).parent
