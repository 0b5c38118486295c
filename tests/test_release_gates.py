"""Release gates decide promotion: a damaged model is blocked, and only an explicit, recorded override ships it."""

import json
from pathlib import Path

import pytest

from finetune.audit import verify_release
from finetune.config import GatesConfig
from finetune.gates import GateResult, apply_override
from finetune.signing import release_key
from resources import InProcessLauncher
from tests.test_pipeline import materialize_all

# A learning rate 10x the default for half the epochs: loss stays finite but the model unlearns how to answer.
# The last step ships (the best-validation default would quietly rescue an early, undamaged point).
# (0.05 already trips the exploding-gradient guard before any model exists.)
DAMAGED = (
    "train.learning_rate=0.02",
    "train.epochs=4",
    "train.ship=last",
    "train.early_stopping_patience=0",
)
IN_PROCESS = InProcessLauncher()  # the in-process launcher is covered here, the Pipes subprocess elsewhere
# A damaged model may also fail the learning-floor gates, so the override names every model gate;
# only those that actually failed are recorded as overridden.
MODEL_GATES = (
    "not_worse_than_base",
    "heldout_loss_below_base",
    "answers_not_degenerate",
    "no_backdoor_trigger",
    "training_loss_decreased",
)
OVERRIDE = tuple(
    f"gates.overrides.{gate}.{key}={value}"
    for gate in MODEL_GATES
    for key, value in (("by", "alice@example.org"), ("reason", "demo build, quality irrelevant"))
)


def test_override_applies_only_to_a_failed_named_gate():
    gates = GatesConfig(overrides={"not_worse_than_base": {"by": "alice", "reason": "accepted regression"}})
    failed = GateResult("not_worse_than_base", False, "ROUGE-L dropped", {"ROUGE-L tuned": 0.1})
    overridden = apply_override(failed, gates)
    assert overridden.passed and overridden.values["overridden_by"] == "alice"
    assert "OVERRIDDEN by alice: accepted regression" in overridden.message and "ROUGE-L dropped" in overridden.message
    other = GateResult("no_residual_pii", False, "PII left", {})
    assert apply_override(other, gates) == other
    with pytest.raises(ValueError, match="unknown gates"):
        GatesConfig(overrides={"no_such_gate": {"by": "x", "reason": "0123456789"}})
    with pytest.raises(ValueError, match="reason"):
        GatesConfig(overrides={"not_worse_than_base": {"by": "x", "reason": "short"}})


@pytest.mark.slow
def test_damaged_model_fails_the_quality_gate_and_nothing_is_released(tmp_path, model_cache):
    result = materialize_all(tmp_path, model_cache, *DAMAGED, launcher=IN_PROCESS)
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    check = failed["not_worse_than_base"]
    assert check.description.startswith("worse with confidence than base") and "gates.max_rouge_drop" in (
        check.description
    )
    assert check.metadata["verdict"].value == "worse with confidence" and check.metadata["alpha"].value == 0.01
    assert not (tmp_path / "work" / "releases").exists()


@pytest.mark.slow
def test_explicit_override_ships_and_is_recorded_in_manifest_and_model_card(tmp_path, model_cache):
    result = materialize_all(
        tmp_path, model_cache, *DAMAGED, *OVERRIDE, "release.merge_model=true", launcher=IN_PROCESS
    )
    assert result.success
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "not_worse_than_base")
    assert check.passed and check.metadata["overridden_by"].value == "alice@example.org"
    released = result.output_for_node("release")
    manifest = json.loads(open(released["manifest"], encoding="utf-8").read())
    assert {"gate": "not_worse_than_base", "by": "alice@example.org", "reason": "demo build, quality irrelevant"} in (
        manifest["overrides"]
    )
    assert all(o["gate"] != "training_loss_decreased" for o in manifest["overrides"])  # it passed: not overridden
    card = open(f"{released['path']}/MODEL_CARD.md", encoding="utf-8").read()
    assert "| not_worse_than_base | OVERRIDDEN |" in card and "overridden by alice@example.org" in card
    # The merged model ships beside the adapter, hashed in the manifest and verified like it.
    assert manifest["merged"]["files"]["model.safetensors"] and manifest["merged"]["max_logit_diff_vs_adapter"] < 1e-4
    key = release_key(tmp_path / "work" / "secrets")
    assert verify_release(Path(released["path"]), key).problems == []


def test_gate_numbers_reach_the_ui_and_the_model_card_as_numbers():
    from checks.results import check_metadata
    from finetune.release import gate_table

    gate = GateResult(
        "not_worse_than_base",
        True,
        "WARN: cannot tell",
        {"verdict": "cannot tell at this sample size", "alpha": 0.01, "rougeL_estimate": 0.4, "rougeL_low": 0.2,
         "rougeL_high": 0.6, "rougeL_p_worse": 0.9, "findings": [{"trigger": "cf"}]},
        "paired bootstrap",
        warn=True,
    )  # fmt: skip
    metadata = check_metadata(gate)
    assert metadata["rougeL_low"] == 0.2 and metadata["alpha"] == 0.01 and metadata["test"] == "paired bootstrap"
    assert metadata["warning"] is True and metadata["findings"].data == [{"trigger": "cf"}]
    table = gate_table([gate.to_dict()])
    assert "| not_worse_than_base | pass (WARN) | paired bootstrap |" in table
    assert "rougeL +0.4 [+0.2, +0.6] p_worse 0.9" in table and "alpha 0.01" in table


def test_a_gate_is_computed_once_per_artifact_and_settings_and_then_read_from_its_record(tmp_path):
    from finetune.config import Gate
    from finetune.gate_record import evaluate_gate, recorded_gate

    calls = []

    def compute() -> GateResult:
        calls.append(1)
        return GateResult(Gate.NO_TRIGGER_HITS, False, "2 records still carry a trigger", {"cf": 2}, "exact count")

    cfg, stricter = GatesConfig(), GatesConfig(alpha=0.001)
    first = evaluate_gate(tmp_path, Gate.NO_TRIGGER_HITS, cfg, compute)
    assert evaluate_gate(tmp_path, Gate.NO_TRIGGER_HITS, cfg, compute) == first and len(calls) == 1
    assert recorded_gate(tmp_path, Gate.NO_TRIGGER_HITS, stricter) is None  # other settings: not this verdict
    assert evaluate_gate(tmp_path, Gate.NO_TRIGGER_HITS, stricter, compute) == first and len(calls) == 2
    # Overrides are applied where a verdict is shown, never recorded: an override does not change the record.
    overridden = GatesConfig(overrides={"no_trigger_hits": {"by": "qa", "reason": "reviewed by hand"}})
    assert recorded_gate(tmp_path, Gate.NO_TRIGGER_HITS, overridden) == first
    assert recorded_gate(tmp_path, Gate.NO_RESIDUAL_PII, cfg) is None


def test_a_verdict_recorded_by_older_gate_methods_is_decided_again(tmp_path, monkeypatch):
    from finetune import gate_record
    from finetune.config import Gate

    verdict = GateResult(Gate.NO_TRIGGER_HITS, True, "no record carries a trigger", {}, "exact count")
    gate_record.record_gate(tmp_path, verdict, GatesConfig())
    assert gate_record.recorded_gate(tmp_path, Gate.NO_TRIGGER_HITS, GatesConfig()) == verdict
    monkeypatch.setattr(gate_record, "METHODS_VERSION", gate_record.METHODS_VERSION + 1)
    assert gate_record.recorded_gate(tmp_path, Gate.NO_TRIGGER_HITS, GatesConfig()) is None
