"""Turning a finetune GateResult into a Dagster AssetCheckResult."""

import dagster as dg

from finetune.gates import GateResult


def to_check_result(gate: GateResult) -> dg.AssetCheckResult:
    """Carry the verdict, the message and every number (actual, threshold, base) into the UI."""
    metadata = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in gate.values.items()}
    return dg.AssetCheckResult(passed=gate.passed, description=gate.message, metadata=metadata)
