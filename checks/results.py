"""Turning a finetune GateResult into a Dagster AssetCheckResult."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from finetune.config import Gate, GatesConfig
from finetune.gate_record import record_gate
from finetune.gates import GateResult, apply_override
from resources import PipelineSettings


def check_metadata(gate: GateResult) -> dict[str, Any]:
    """Numbers stay numbers (the UI charts them across runs); lists and dicts become JSON; the test is named."""
    metadata: dict[str, Any] = {}
    for key, value in gate.values.items():
        if isinstance(value, bool | int | float | str):
            metadata[key] = value
        elif value is None:
            continue
        else:
            metadata[key] = dg.MetadataValue.json(value)
    if gate.method:
        metadata["test"] = gate.method
    metadata["warning"] = gate.warn
    return metadata


def to_check_result(gate: GateResult, gates: GatesConfig, folder: str | Path | None) -> dg.AssetCheckResult:
    """Record the verdict beside the artifact it judged in `folder` (the release copies it from there), and
    carry it (after any explicit override), its message and every number into the UI (a pass the data could
    not confirm says WARN in its description and `warning` metadata).

    The review gate passes no folder: its verdict changes as judgements arrive, and the release decides it
    from the judgements it is given.
    """
    if folder is not None:
        record_gate(Path(folder), gate, gates)
    gate = apply_override(gate, gates)
    return dg.AssetCheckResult(passed=gate.passed, description=gate.message, metadata=check_metadata(gate))


def report_gate_check(
    asset: dg.AssetsDefinition, gate: Callable[[dict[str, Any], GatesConfig], GateResult], description: str
) -> dg.AssetChecksDefinition:
    """A blocking check, named after the gate, that applies it to the asset's report and the configured thresholds."""

    # The gate function's name must be a registered Gate: a renamed function fails here, not in a release.
    @dg.asset_check(asset=asset, name=Gate(gate.__name__).value, blocking=True, description=description)
    def _check(settings: PipelineSettings, report: dict) -> dg.AssetCheckResult:
        cfg = settings.load().gates
        return to_check_result(gate(report, cfg), cfg, report["dir"])

    return _check
