import ast
import os
import subprocess
import sys

from finetune.config import GATE_NAMES, PROJECT_ROOT
from finetune.data.records import Stage


def test_finetune_library_never_imports_dagster():
    offenders = []
    for path in (PROJECT_ROOT / "finetune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"dagster", "dagster_pipes"}]
    assert offenders == []


def test_dagster_definitions_validate(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_definitions_hold_every_asset_and_blocking_check():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "raw_records",
        "cleaned_records",
        "deduplicated_records",
        "deidentified_records",
        "screened_records",
        "sft_dataset",
        "base_model",
        "adapter",
        "evaluation_report",
        "review_packet",
        "expert_review",
        "release",
    }
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("deidentified_records", "no_residual_pii") in checks
    assert ("evaluation_report", "no_backdoor_trigger") in checks
    assert ("expert_review", "experts_prefer_tuned") in checks
    # One registry of stage names: every data stage is an asset with its accounting check, in pipeline order.
    assert {key for key, name in checks if name == "records_accounted"} == set(Stage)
    data = [k.to_user_string() for k in graph.toposorted_asset_keys if k.to_user_string() in set(Stage)]
    assert data == list(Stage)
    # One registry of gate names: every check is a registered gate and every gate has its check.
    assert {name for _, name in checks} == set(GATE_NAMES)
