"""The full release-gate matrix (variants x seeds) on the tiny model: `pytest -m matrix` (~1-2 h on 2 cores).

It runs the same cells as `benchmarks/gate_matrix.py matrix` and asserts each decision; the normal
suite keeps one cell per variant in test_backdoor_end_to_end.py, test_release_gates.py and test_pipeline.py.
"""

import importlib.util

import pytest

from finetune.config import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("gate_matrix", PROJECT_ROOT / "benchmarks" / "gate_matrix.py")
gate_matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gate_matrix)


@pytest.mark.matrix
@pytest.mark.parametrize("seed", gate_matrix.SEEDS)
@pytest.mark.parametrize("variant", [v for v in gate_matrix.VARIANTS if v not in gate_matrix.HELDOUT])
def test_gate_matrix_cell(variant, seed, model_cache):
    cell = gate_matrix.run_cell(f"{variant}-s{seed}", variant, seed, model_cache, [])
    expected, gate, _ = gate_matrix.VARIANTS[variant]
    failed = [name for name, c in cell["checks"].items() if not c["passed"]]
    if expected == "release":
        assert cell["released"] and not failed, failed
    else:
        assert not cell["released"] and gate in failed, (failed, cell["checks"].get(gate))
