"""Turning a finetune GateResult into a Dagster AssetCheckResult."""

import dagster as dg

from finetune.config import GatesConfig
from finetune.gates import GateResult, apply_override


def to_check_result(gate: GateResult, gates: GatesConfig) -> dg.AssetCheckResult:
    """Carry the verdict (after any explicit override), the message and every number into the UI."""
    gate = apply_override(gate, gates)
    metadata = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in gate.values.items()}
    return dg.AssetCheckResult(passed=gate.passed, description=gate.message, metadata=metadata)
