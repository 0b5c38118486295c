"""A setting weaker than shipped is an override: refused before the first asset unless accepted on record
with `by` and `reason`, and listed in the manifest and the model card when accepted."""

import json

import dagster as dg
import pytest
from pydantic import BaseModel, Field

from finetune.config import PROJECT_ROOT, ConfigError, PipelineConfig, load_config
from finetune.weakening import (
    RULES,
    WeakenedSettingError,
    find_weakenings,
    marked_settings,
    require_accepted,
    weakened_settings,
)
from tests.conftest import PII_OFF_ACCEPTED

ISSUE_COMMAND = [  # the red team's command line
    "pii.enabled=false",
    "gates.max_residual_pii=100000",
    "screen.enabled=false",
    "screen.mining=false",
    "pii.entities=[EMAIL_ADDRESS, CN_MOBILE_PHONE]",
    "pii.score_threshold=0.9",
    "screen.cluster_allow=['.*']",
    "screen.lexicon_file=''",
    "eval.probe_prompts=16",
]


def _names(overrides: list[str]) -> set[str]:
    return {w["setting"] for w in weakened_settings(load_config(None, overrides))}


def test_every_marker_is_known_and_the_shipped_config_weakens_nothing():
    marked = marked_settings(PipelineConfig)
    assert set(marked.values()) <= set(RULES)
    assert {"pii.enabled", "pii.entities", "pii.score_threshold", "screen.enabled", "screen.mining"} <= set(marked)
    assert all(f"gates.{name}" in marked for name in PipelineConfig().gates.model_fields if name.startswith("max_"))
    assert weakened_settings(load_config(PROJECT_ROOT / "finetune.yaml")) == []


def test_each_rule_flags_the_weaker_direction_only():
    assert _names(ISSUE_COMMAND) == {o.split("=")[0] for o in ISSUE_COMMAND}
    # The stricter direction of every one of them is no weakening.
    stricter = ["pii.score_threshold=0.3", "gates.max_poisoned_share=0.1", "eval.probe_prompts=80",
                "screen.cluster_allow=[]", "screen.min_cluster_size=2", "screen.max_prompt_similarity=0.5"]  # fmt: skip
    assert _names(stricter) == set()
    [entities] = weakened_settings(load_config(None, ["pii.entities=[EMAIL_ADDRESS]"]))
    assert "without ['ADDRESS', 'API_KEY'" in entities["description"]


def test_the_mechanism_reads_field_metadata_only():
    # A setting another engineer adds is covered by its marker alone, with no list of names to update.
    class NewGate(BaseModel):
        alpha: float = Field(default=0.05, json_schema_extra={"weakens": "higher"})
        power: float = Field(default=0.8, json_schema_extra={"weakens": "lower"})
        untouched: float = 1.0

    [w] = find_weakenings(NewGate(alpha=0.2, power=0.9, untouched=7.0), NewGate())
    assert (w.setting, w.shipped, w.value) == ("alpha", 0.05, 0.2)

    class Typo(BaseModel):
        x: int = Field(default=0, json_schema_extra={"weakens": "bigger"})

    with pytest.raises(ValueError, match="bigger"):
        marked_settings(Typo)


def test_refusal_names_the_setting_and_acceptance_records_who_and_why(tmp_path):
    with pytest.raises(WeakenedSettingError, match=r"pii\.enabled = false .*gates\.weakened_settings\.pii\.enabled"):
        require_accepted(load_config(None, ["pii.enabled=false"]))
    [row] = require_accepted(load_config(None, list(PII_OFF_ACCEPTED)))
    assert row["by"] == "privacy@example.org" and row["reason"].startswith("leak test")
    # The YAML spelling with a dotted key is the same acceptance.
    (tmp_path / "c.yaml").write_text(
        "pii: {enabled: false}\ngates:\n  weakened_settings:\n    pii.enabled: {by: a@b.c, reason: accepted in yaml}\n"
    )
    assert require_accepted(load_config(tmp_path / "c.yaml"))[0]["by"] == "a@b.c"
    with pytest.raises(ConfigError, match="protect no gate"):
        load_config(None, ["gates.weakened_settings.train.epochs.by=x", "gates.weakened_settings.train.epochs.reason=0123456789"])  # fmt: skip
    with pytest.raises(WeakenedSettingError, match="screen.enabled"):  # one acceptance covers one setting only
        require_accepted(load_config(None, [*PII_OFF_ACCEPTED, "screen.enabled=false"]))


def test_finetune_run_refuses_before_dagster_starts(tmp_path, capsys):
    from headless import run_pipeline
    from resources.settings import DEFAULT_CONFIG

    work = tmp_path / "work"
    assert run_pipeline(DEFAULT_CONFIG, [f"paths.work_dir={work}", *ISSUE_COMMAND]) == 2
    err = capsys.readouterr().err
    assert "refusing to run" in err and "gates.max_residual_pii = 100000" in err and "screen.mining" in err
    assert not work.exists()  # no Dagster home, no artifact, no run


def test_a_run_from_the_ui_is_refused_before_its_first_asset(tmp_path, model_cache):
    from tests.test_pipeline import materialize_all

    result = materialize_all(tmp_path, model_cache, "screen.payloads=false")
    assert not result.success and not result.get_asset_materialization_events()
    # Refused while the run initialises its resources, so no step starts.
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE)
    assert "refusing to run" in str(failure.event_specific_data) and "screen.payloads = false" in str(
        failure.event_specific_data
    )
    assert not any(e.is_step_start for e in result.all_events)
    assert not (tmp_path / "work" / "artifacts").exists()


@pytest.mark.slow
def test_an_accepted_weakening_is_listed_in_manifest_model_card_and_audit(run_without_pii, capsys):
    from finetune.cli import main

    release = run_without_pii.release()
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    [row] = manifest["weakened_settings"]
    assert row["setting"] == "pii.enabled" and row["value"] is False and row["by"] == "privacy@example.org"
    card = (release / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "`pii.enabled = false (shipped true; false turns a detector or gate off)`, accepted by privacy@" in card
    assert "PII de-identification was OFF" in card and "every gate passed on its own" not in card
    assert main(["audit", "latest", "--set", f"paths.work_dir={run_without_pii.work}"]) == 0
    assert "pii.enabled = false" in capsys.readouterr().out
