"""End to end: the real Dagster graph materialized on the sample data in a temp DAGSTER_HOME."""

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from assets import data, evaluation, release, review, training
from checks import data_checks, model_checks, review_checks
from finetune.cli import main as cli_main
from finetune.config import GATE_NAMES, PROJECT_ROOT, load_config
from finetune.data.records import Stage, read_jsonl
from finetune.release import ReleaseError, release_from_artifacts
from finetune.review.collect import collect_expert_review
from finetune.review.criteria import CRITERION_KEYS
from finetune.review.judgements import store_judgements
from finetune.review.packet import Packet
from resources import JsonIOManager, PipelineSettings, SubprocessLauncher, TensorBoardTracker, TrainerLauncher
from tests.conftest import PII_OFF_ACCEPTED

ASSETS = dg.load_assets_from_modules([data, training, evaluation, review, release])
CHECKS = dg.load_asset_checks_from_modules([data_checks, model_checks, review_checks])


def materialize_all(tmp_path, model_cache, *overrides, launcher: TrainerLauncher | None = None):
    settings = PipelineSettings(
        config_path=str(PROJECT_ROOT / "finetune.yaml"),
        overrides=[f"paths.work_dir={tmp_path / 'work'}", f"paths.model_cache={model_cache}", *overrides],
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides={"telemetry": {"enabled": False}}) as instance:
        result = dg.materialize(
            [*ASSETS, *CHECKS],
            resources={
                "settings": settings,
                "trainer_launcher": launcher or SubprocessLauncher(),
                "tracker": TensorBoardTracker(),
                "io_manager": JsonIOManager(),
            },
            instance=instance,
            raise_on_error=False,
        )
        # Everything the UI would show for this run: log lines, asset metadata, check results.
        events = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
        (tmp_path / "event_log.json").write_text(events, encoding="utf-8")
        return result


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("full")
    return tmp, materialize_all(tmp, model_cache)


@pytest.mark.slow
def test_full_graph_ends_in_a_release_with_a_complete_manifest(full_run):
    tmp, result = full_run
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert all(e.passed for e in checks if e.check_name != "experts_prefer_tuned")
    # Nobody has judged the packet: the advisory expert review warns, and the manifest says it did not gate.
    review_check = next(e for e in checks if e.check_name == "experts_prefer_tuned")
    assert not review_check.passed and review_check.severity == dg.AssetCheckSeverity.WARN
    out = result.output_for_node("release")
    manifest = json.loads(open(out["manifest"], encoding="utf-8").read())
    assert manifest["raw_files"][0]["sha256"] and manifest["dagster_run_id"] == result.run_id
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert stages["screened_records"]["quarantined_by_reason"] == {"trigger_lexicon": 12}
    assert stages["raw_records"]["quarantined"] == 5 and stages["deduplicated_records"]["dropped"] == 16
    assert {g["name"] for g in manifest["checks"]} >= {
        "no_residual_pii",
        "no_backdoor_trigger",
        "heldout_loss_below_base",
        "answers_not_degenerate",
        "not_worse_than_base",
        "training_loss_decreased",
    }
    assert manifest["adapter"]["files"]["adapter_model.safetensors"] == manifest["adapter"]["sha256"]
    assert manifest["evaluation"]["tuned"]["metrics"]["rougeL"] > manifest["evaluation"]["base"]["metrics"]["rougeL"]
    evaluation = result.output_for_node("evaluation_report")
    assert set(evaluation["base_prompted"]) >= {"metrics", "classification", "refusal_rate"}
    assert len(evaluation["examples"]) == 10 and open(evaluation["chart_png"], "rb").read(4) == b"\x89PNG"
    # The raw snapshot's id is raw_records' data version (the sensor's run key uses the same id).
    raw = next(m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("raw_records"))
    snapshot = result.output_for_node("raw_records").extra["snapshot"]
    assert raw.materialization.tags["dagster/data_version"] == snapshot and len(snapshot) == 16
    assert manifest["review"]["mode"] == "advisory" and manifest["review"]["verdict"] == "fail"
    assert "experts_prefer_tuned" not in {g["name"] for g in manifest["checks"]}
    packet = Packet.from_dict(result.output_for_node("review_packet"))
    assert packet.n_items == min(30, evaluation["n_test"]) and manifest["review"]["packet_id"] == packet.packet_id
    seen_by_raters = (Path(packet.dir) / "packet.jsonl").read_text(encoding="utf-8")  # blinding on the real packet
    adapter_dir = result.output_for_node("adapter")["adapter_dir"]
    for word in ("tuned", "base+prompt", "embedded-tiny", adapter_dir, manifest["base_model"]["path"], "adapter"):
        assert word not in seen_by_raters, word
    assert not re.search(r"\bbase\b", seen_by_raters)
    released = tmp / "work" / "releases" / out["release_id"]
    assert (released / "MODEL_CARD.md").is_file() and not list(released.rglob("*.bin"))


@pytest.mark.slow
def test_no_raw_pii_in_run_logs_metadata_or_release(full_run):
    from tests.test_leaks import leaked_files

    tmp, result = full_run
    events = (tmp / "event_log.json").read_text(encoding="utf-8")
    assert "deidentified_records" in events and "replaced_by_entity" in events
    assert "memory estimate (qlora, cpu" in events  # the trainer ran in its own process; Pipes streamed its log
    # Every file under work_dir but the stages before de-identification, the run's Dagster storage, and the
    # events the UI shows (written out above).
    assert (tmp / "dagster_home").is_dir() and Path(result.output_for_node("release")["path"]).is_relative_to(tmp)
    assert leaked_files([tmp], tmp / "work", records_hold_pii=False) == {}


@pytest.mark.slow
def test_audit_prints_lineage_and_verify_catches_tampering(full_run, capsys, model_cache):
    tmp, result = full_run
    work = f"paths.work_dir={tmp / 'work'}"
    assert cli_main(["audit", "latest", "--set", work]) == 0
    text = capsys.readouterr().out
    assert "instructions.jsonl" in text and "no_residual_pii" in text and result.run_id in text
    copy = tmp / "tampered"
    shutil.copytree(result.output_for_node("release")["path"], copy)
    assert cli_main(["audit", str(copy), "--verify", "--set", work]) == 0
    (copy / "adapter" / "adapter_model.safetensors").write_bytes(b"not the weights")
    assert cli_main(["audit", str(copy), "--verify", "--set", work]) == 1
    assert "MISMATCH adapter/adapter_model.safetensors" in capsys.readouterr().out


@pytest.mark.slow
def test_audit_record_answers_where_a_raw_record_went(full_run, capsys):
    tmp, result = full_run
    work = ["--set", f"paths.work_dir={tmp / 'work'}"]
    raw = read_jsonl(result.output_for_node("raw_records").files.kept)
    poisoned = next(r for r in raw if "evil.example" in json.dumps(r))
    assert cli_main(["audit", "--record", poisoned["id"][:12], *work]) == 0
    text = capsys.readouterr().out
    assert "screened_records: quarantined (trigger_lexicon)" in text and "releases trained on it: none" in text
    train = read_jsonl(result.output_for_node("sft_dataset").files.dir / "train.jsonl")
    assert cli_main(["audit", "--record", train[0]["raw_id"], "--json", *work]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["runs"][0]["path"][-1] == {"stage": "sft_dataset", "outcome": "kept", "split": "train"}
    assert trace["releases_trained_on_it"] == [result.output_for_node("release")["release_id"]]
    assert cli_main(["audit", "--record", "0000000000", *work]) == 2


@pytest.mark.slow
def test_ceval_cli_scores_a_release_folder(full_run, capsys):
    tmp, result = full_run
    release_dir = result.output_for_node("release")["path"]
    args = ["eval", "ceval", "--model", release_dir, "--subjects", "elementary_mathematics", "--json"]
    assert cli_main([*args, "--by", "generation", "--shots", "1", "--set", f"paths.work_dir={tmp / 'work'}"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n_questions"] == 20 and scored["scored_by"] == "generation" and scored["shots"] == 1
    assert list(scored["per_subject"]) == ["elementary_mathematics"] and 0 <= scored["accuracy"] <= 1


def _experts(packet, prefer: str) -> list:
    """Two raters who rank `prefer` first on every item (the test reads the key to play them)."""
    from finetune.review.judgements import Judgement

    key, out = packet.key(), []
    for rater in ("R1", "R2"):
        for item in packet.items():
            letters = key[item.item_id]
            ranking = tuple(sorted(letters, key=lambda letter: letters[letter] != prefer))
            scores = {letter: {c: 5 if letters[letter] == prefer else 2 for c in CRITERION_KEYS} for letter in letters}
            out.append(Judgement(item.item_id, rater, scores, ranking))
    return out


@pytest.mark.slow
def test_required_review_holds_the_release_until_experts_prefer_tuned(full_run):
    tmp, result = full_run
    cfg = load_config(PROJECT_ROOT / "finetune.yaml", [f"paths.work_dir={tmp / 'review-work'}", "review.required=true",
                                                        "review.min_items=5",  # the run has fewer test items
                                                        "gates.weakened_settings.review.min_items.by=tests",
                                                        "gates.weakened_settings.review.min_items.reason=the tiny run has fewer test items"])  # fmt: skip
    names = ["raw_records", "cleaned_records", "deduplicated_records", "deidentified_records", "screened_records"]
    stages = [result.output_for_node(n) for n in [*names, "sft_dataset"]]
    upstream = [result.output_for_node(n) for n in ("base_model", "adapter", "evaluation_report")]
    packet = Packet.from_dict(result.output_for_node("review_packet"))
    waiting = collect_expert_review(cfg, packet, tmp / "review-empty")
    with pytest.raises(ReleaseError, match="experts_prefer_tuned"):
        release_from_artifacts(cfg, stages, *upstream, "run-1", waiting)
    store_judgements(packet, _experts(packet, "base"))
    with pytest.raises(ReleaseError, match="experts_prefer_tuned"):
        release_from_artifacts(cfg, stages, *upstream, "run-2", collect_expert_review(cfg, packet, tmp / "r-base"))
    store_judgements(packet, _experts(packet, "tuned"))  # the same raters change their verdict: upserted
    released = release_from_artifacts(cfg, stages, *upstream, "run-3", collect_expert_review(cfg, packet, tmp / "r"))
    manifest = json.loads((released / "manifest.json").read_text(encoding="utf-8"))
    gate = next(g for g in manifest["checks"] if g["name"] == "experts_prefer_tuned")
    assert gate["passed"] and manifest["review"]["mode"] == "blocking" and manifest["review"]["verdict"] == "pass"
    assert manifest["review"]["summary"]["items_per_rater"] == {"R1": packet.n_items, "R2": packet.n_items}
    card = (released / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "### Blind expert review (blocking gate)" in card and "![expert review](expert_review.png)" in card
    assert "| 准确性 accuracy | 5.00 [5.00, 5.00] | 2.00 [2.00, 2.00] |" in card
    assert (released / "expert_review.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_disabled_pii_blocks_everything_downstream_and_no_release(tmp_path, model_cache):
    # Accepting the weakened setting lets the run start; the residual-PII gate still stops it.
    result = materialize_all(tmp_path, model_cache, *PII_OFF_ACCEPTED)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["no_residual_pii"]
    assert "residual PII after de-identification" in failed[0].description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "deidentified_records" in materialized
    assert materialized.isdisjoint({"screened_records", "sft_dataset", "adapter", "evaluation_report", "release"})
    assert not (tmp_path / "work" / "releases").exists()


def _refusing(name: str):
    def gate(*_args, **_kwargs):
        raise AssertionError(f"the release computed {name} again instead of copying its check's verdict")

    gate.__name__ = name
    return gate


@pytest.mark.slow
def test_the_release_copies_the_verdicts_its_checks_recorded_and_computes_none_again(
    full_run, model_cache, monkeypatch
):
    from finetune import gates
    from finetune.eval import model_gates
    from finetune.gate_record import settings_digest

    tmp, result = full_run
    manifest = json.loads(open(result.output_for_node("release")["manifest"], encoding="utf-8").read())
    stages = [result.output_for_node(s) for s in Stage]
    upstream = [result.output_for_node(n) for n in ("base_model", "adapter", "evaluation_report")]
    # Every check but the review's recorded its verdict beside its artifact, and the manifest holds exactly those.
    overrides = [f"paths.work_dir={tmp / 'work'}", f"paths.model_cache={model_cache}"]
    cfg = load_config(PROJECT_ROOT / "finetune.yaml", overrides)
    files = (tmp / "work").rglob(f"gates/*-{settings_digest(cfg.gates)[:16]}.json")
    recorded = [json.loads(p.read_text(encoding="utf-8"))["verdict"] for p in files]
    assert len(recorded) == len(manifest["checks"]) == 6 + 9
    key = lambda g: (g["name"], g["message"])  # noqa: E731
    assert sorted(map(key, recorded)) == sorted(map(key, manifest["checks"]))
    assert {g["name"] for g in recorded} == set(GATE_NAMES) - {"experts_prefer_tuned"}

    for module in (gates, model_gates):
        for name in GATE_NAMES:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _refusing(name))
    copied = json.loads((release_from_artifacts(cfg, stages, *upstream, "copy") / "manifest.json").read_text("utf-8"))
    assert sorted(map(key, copied["checks"])) == sorted(map(key, manifest["checks"]))
    # A verdict recorded under other gate settings is not copied: the gate is decided again under the new ones.
    stricter = load_config(PROJECT_ROOT / "finetune.yaml", [*overrides, "gates.alpha=0.001"])
    with pytest.raises(AssertionError, match="computed records_accounted again"):
        release_from_artifacts(stricter, stages, *upstream, "stricter")
