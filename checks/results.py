"""Turning a finetune GateResult into a Dagster AssetCheckResult."""

from collections.abc import Callable
from typing import Any

import dagster as dg

from finetune.config import GatesConfig
from finetune.gates import GateResult, apply_override
from resources import PipelineSettings


def to_check_result(gate: GateResult, gates: GatesConfig) -> dg.AssetCheckResult:
    """Carry the verdict (after any explicit override), the message and every number into the UI."""
    gate = apply_override(gate, gates)
    metadata = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in gate.values.items()}
    return dg.AssetCheckResult(passed=gate.passed, description=gate.message, metadata=metadata)


def report_gate_check(
    asset: dg.AssetsDefinition, gate: Callable[[dict[str, Any], GatesConfig], GateResult], description: str
) -> dg.AssetChecksDefinition:
    """A blocking check, named after the gate, that applies it to the asset's report and the configured thresholds."""

    @dg.asset_check(asset=asset, name=gate.__name__, blocking=True, description=description)
    def _check(settings: PipelineSettings, report: dict) -> dg.AssetCheckResult:
        cfg = settings.load().gates
        return to_check_result(gate(report, cfg), cfg)

    return _check
