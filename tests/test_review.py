"""Blind expert review without a server: packet, blinding, PII re-scan, sheet round trip, statistics, gate."""

import csv
import re
import stat
from pathlib import Path

import dagster as dg
import pytest
from openpyxl import load_workbook

from finetune.cli import main as cli_main
from finetune.data.records import make_record, read_jsonl
from finetune.eval.predictions import ARMS, write_predictions
from finetune.review.collect import collect_expert_review, import_judgements, review_progress
from finetune.review.criteria import CRITERIA
from finetune.review.gate import experts_prefer_tuned
from finetune.review.judgements import ArmJudgement, read_judgements, store_judgements
from finetune.review.packet import PACKET_FILE, ReviewError, build_packet, load_packet
from finetune.review.sheets import HEADERS, export_sheet, import_sheet
from finetune.review.stats import krippendorff_alpha, sign_test, summarize
from tests.review_sim import FORBIDDEN, judge, simulated_judgements, tiny_evaluation


@pytest.fixture
def packet_for(tmp_path, make_config):
    """Build a packet from a tiny evaluation where `good` gives the right answers; returns (cfg, packet, right)."""

    def _make(good="tuned", *overrides, n=36):
        cfg = make_config(*overrides)
        preds, labels, right = tiny_evaluation(tmp_path / f"eval-{good}", n=n, good=good)
        return cfg, build_packet(cfg, preds, labels, run_id=f"run-{good}"), right

    return _make


def rater_visible_text(packet, *sheets: Path) -> str:
    """Everything a rater is handed: packet.jsonl and the exported sheets (Label Studio tasks: test_review_label_studio)."""
    texts = [(Path(packet.dir) / PACKET_FILE).read_text(encoding="utf-8")]
    for sheet in sheets:
        if sheet.suffix == ".xlsx":
            texts += [str(v) for row in load_workbook(sheet).active.iter_rows(values_only=True) for v in row]
        else:
            texts.append(sheet.read_text(encoding="utf-8-sig"))
    return "\n".join(texts)


def assert_blind(text: str, *also: str) -> None:
    for word in (*FORBIDDEN, *also):
        assert word.lower() not in text.lower(), word
    assert not re.search(r"\bbase\b", text), "an arm name reached what raters see"


def test_packet_is_stratified_shuffled_and_its_key_kept_apart(packet_for, tmp_path):
    cfg, packet, right = packet_for("tuned", "review.items=12")
    assert packet.n_items == 12 and len(packet.items()) == 12
    # Every label and task stratum is represented, in proportion (36 records: 12 of each kind).
    assert set(packet.strata) == {"label:正面", "label:负面", "task:sample.jsonl:zh", "task:sample.jsonl:en"}
    assert packet.strata["task:sample.jsonl:zh"] == packet.strata["task:sample.jsonl:en"] == 4
    key = packet.key()
    for item in packet.items():
        tuned_letter = next(letter for letter, arm in key[item.item_id].items() if arm == "tuned")
        assert item.answers[tuned_letter] == right[item.prompt]  # the key maps letters back to arms
        assert sorted(key[item.item_id].values()) == sorted(ARMS)
    assert len({tuple(v.values()) for v in key.values()}) >= 3  # the order really is shuffled per item
    secret = Path(packet.key_file)
    assert Path(packet.dir) not in secret.parents and stat.S_IMODE(secret.stat().st_mode) == 0o600
    sheets = [export_sheet(packet, tmp_path / "r.csv"), export_sheet(packet, tmp_path / "r.xlsx")]
    assert_blind(rater_visible_text(packet, *sheets), str(tmp_path / "eval-tuned"))


def test_same_evaluation_gives_the_same_packet_and_another_seed_reshuffles(packet_for, make_config, tmp_path):
    cfg, packet, _ = packet_for("tuned", "review.items=12")
    again = build_packet(cfg, tmp_path / "eval-tuned" / "predictions.jsonl", ["正面", "负面"])
    assert again.packet_id == packet.packet_id and again.key() == packet.key()
    other = build_packet(make_config("review.items=12", "review.seed=7"), Path(again.evaluation_dir) / "predictions.jsonl",
                         ["正面", "负面"])  # fmt: skip
    assert other.packet_id != packet.packet_id
    assert load_packet(cfg, "run-tuned").packet_id == packet.packet_id  # the run id that built it finds it
    with pytest.raises(ReviewError, match="not found"):
        load_packet(cfg, "no-such-packet")


def test_pii_in_answers_and_prompts_is_replaced_before_the_packet_leaves(make_config, tmp_path):
    cfg = make_config()
    messages = [
        {"role": "user", "content": "客户电话13912345678，怎么回复？"},
        {"role": "assistant", "content": "您好"},
    ]
    record = make_record(messages, "s.jsonl", 1)
    preds = {"tuned": ["请致电13912345678"], "base": ["发邮件到 alice@example.com"], "base+prompt": ["好的"]}
    packet = build_packet(cfg, write_predictions(tmp_path, [record], preds), [])
    text = rater_visible_text(packet)
    assert "13912345678" not in text and "alice@example.com" not in text
    assert "<CN_MOBILE_PHONE>" in text and "<EMAIL_ADDRESS>" in text
    assert packet.pii_redacted == {"CN_MOBILE_PHONE": 2, "EMAIL_ADDRESS": 1}


def _fill(rows: list[list], raters, packet, right, seed=0):
    """Rows of a filled sheet: each rater judges every item (simulated expert)."""
    import random

    rng, keys, out = random.Random(seed), list(HEADERS), []
    for rater in raters:
        for item in packet.items():
            fields, ranking, comment = judge(item.prompt, item.answers, right, rng)
            values = item.task_data() | fields | {"rater": rater, "ranking": ">".join(ranking), "comment": comment}
            out.append([values.get(k, "") for k in keys])
    return rows + out


def test_sheet_round_trip_keeps_good_rows_and_names_bad_ones(packet_for, tmp_path):
    cfg, packet, right = packet_for("tuned", "review.items=6")
    path = export_sheet(packet, tmp_path / "sheet.xlsx")
    book = load_workbook(path)
    rows = _fill([], ["R1", "R2"], packet, right)
    bad = list(rows[0])
    bad[list(HEADERS).index("A_accuracy")] = 6
    bad[list(HEADERS).index("rater")] = "R3"
    worse = list(rows[1])
    worse[list(HEADERS).index("ranking")] = "A>A>C"
    worse[list(HEADERS).index("rater")] = "alice@example.org"
    for row in [*rows, bad, worse]:
        book.active.append(row)
    book.save(path)
    collected = import_sheet(path)
    assert len(collected.judgements) == 12 and collected.unanswered == 6  # the exported blank rows
    assert any("line 20 A_accuracy" in p and "got '6'" in p for p in collected.problems), collected.problems
    assert any("line 21" in p and "rater must be a short code" in p for p in collected.problems)
    store_judgements(packet, collected.judgements)
    store_judgements(packet, collected.judgements)  # re-import replaces, never double counts
    assert len(read_judgements(packet)) == 12
    csv_path = export_sheet(packet, tmp_path / "sheet.csv")
    with csv_path.open("a", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(_fill([], ["R3"], packet, right, seed=1))
    assert len(import_judgements(cfg, packet, [csv_path]).judgements) == 6
    assert review_progress(cfg, packet).items_per_rater == {"R1": 6, "R2": 6, "R3": 6}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_passes_when_experts_prefer_tuned_and_fails_when_they_prefer_base(packet_for, tmp_path, seed):
    verdicts = {}
    for good in ("tuned", "base"):
        cfg, packet, right = packet_for(good, "review.items=24", f"review.seed={seed}")
        store_judgements(packet, simulated_judgements(packet.items(), right, ["R1", "R2"], seed))
        summary = collect_expert_review(cfg, packet, tmp_path / f"out-{good}")
        verdicts[good] = experts_prefer_tuned(summary, cfg.review)
        assert summary.items_judged == 24 and summary.items_per_rater == {"R1": 24, "R2": 24}
        assert Path(summary.chart_png).read_bytes()[:4] == b"\x89PNG"
    assert verdicts["tuned"].passed, verdicts["tuned"].message
    assert verdicts["tuned"].values["base wins"] >= 20 and verdicts["tuned"].values["base p_value"] < 1e-4
    assert not verdicts["base"].passed and "experts do not prefer tuned over base" in verdicts["base"].message
    assert "advisory" in verdicts["base"].message  # review.required is false by default


def test_gate_needs_enough_items_raters_and_optionally_beats_base_prompt(packet_for, tmp_path):
    cfg, packet, right = packet_for("tuned", "review.items=24", "review.required=true")
    empty = collect_expert_review(cfg, packet, tmp_path / "empty")
    gate = experts_prefer_tuned(empty, cfg.review)
    assert not gate.passed and "0 judged items < review.min_items 20" in gate.message and "export" in gate.message
    one_rater = simulated_judgements(packet.items()[:10], right, ["R1"], seed=0)
    store_judgements(packet, one_rater)
    gate = experts_prefer_tuned(collect_expert_review(cfg, packet, tmp_path / "one"), cfg.review)
    assert "10 judged items < review.min_items 20" in gate.message and "1 raters < review.min_raters 2" in gate.message
    # The base+prompt arm gave the right answers, tuned and base wrong ones: tuned beats base only by chance.
    cfg, packet, right = packet_for("base+prompt", "review.items=24", "review.beat_base_prompt=true")
    store_judgements(packet, simulated_judgements(packet.items(), right, ["R1", "R2"], seed=0))
    gate = experts_prefer_tuned(collect_expert_review(cfg, packet, tmp_path / "prompted"), cfg.review)
    assert not gate.passed and "over base+prompt" in gate.message and gate.values["base+prompt losses"] >= 20


def test_statistics_match_their_definitions():
    assert sign_test(10, 0) == pytest.approx(1 / 1024)
    assert sign_test(0, 0) == 1.0
    scores = {arm: {c.key: 3 for c in CRITERIA} for arm in ARMS}
    agree = [ArmJudgement(f"q{i}", r, {a: {c.key: 1 + (i + k) % 5 for c in CRITERIA} for k, a in enumerate(ARMS)},
                          {"tuned": 1, "base": 2, "base+prompt": 3}) for i in range(6) for r in ("R1", "R2")]  # fmt: skip
    assert krippendorff_alpha(agree, lambda j, arm: j.scores[arm]["accuracy"]) == pytest.approx(1.0)
    assert krippendorff_alpha(agree[:1], lambda j, arm: j.scores[arm]["accuracy"]) is None  # one rater
    summary = summarize("p", 6, agree, 0.95, 500, seed=0)
    assert summary.preferences["base"].wins == 6 and summary.preferences["base"].losses == 0
    tuned = summary.criteria["tuned"]["accuracy"]
    assert tuned.low <= tuned.mean <= tuned.high and tuned.n_items == 6
    assert summarize("p", 6, agree, 0.95, 500, seed=0).criteria == summary.criteria  # seeded bootstrap
    flat = [ArmJudgement("q1", "R1", scores, {"tuned": 2, "base": 1, "base+prompt": 3})]
    assert summarize("p", 1, flat, 0.95, 500, 0).criteria["tuned"]["accuracy"].low is None  # one item: no interval


def test_review_cli_exports_imports_and_reports_status(packet_for, tmp_path, capsys):
    cfg, packet, right = packet_for("tuned", "review.items=6")
    common = ["--set", f"paths.work_dir={cfg.work_dir}"]
    sheet = tmp_path / "to-raters.csv"
    assert cli_main(["review", "export", "latest", "--csv", str(sheet), *common]) == 0
    with sheet.open("a", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(_fill([], ["R1", "R2"], packet, right))
    assert cli_main(["review", "import", "run-tuned", str(sheet), *common]) == 0
    assert cli_main(["review", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "imported 12 judgements" in out and "6 of 6 items judged" in out and "R1: 6, R2: 6" in out
    assert "not ready for experts_prefer_tuned" in out  # 6 items < review.min_items 20
    assert cli_main(["review", "import", "latest", *common]) == 2  # never exported to Label Studio
    assert "never exported to Label Studio" in capsys.readouterr().err
    assert len(read_jsonl(Path(packet.dir) / "judgements.jsonl")) == 12


def _review_only_graph(tmp_path, preds: Path):
    """review_packet -> expert_review (+ its check) -> a stand-in release, fed by a stand-in evaluation."""
    from assets.review import expert_review, review_packet
    from checks.review_checks import experts_prefer_tuned as check

    @dg.asset(name="evaluation_report")
    def stub_evaluation() -> dict:
        return {"predictions_file": str(preds), "labels": ["正面", "负面"]}

    @dg.asset(name="release")
    def stub_release(expert_review) -> str:
        return expert_review.packet_id

    return [stub_evaluation, review_packet, expert_review, check, stub_release]


@pytest.mark.parametrize("required", [True, False])
def test_experts_prefer_tuned_blocks_the_release_only_when_required(tmp_path, model_cache, required):
    from resources import PipelineSettings
    from tests.test_pipeline import PROJECT_ROOT

    preds, _, _ = tiny_evaluation(tmp_path / "eval", good="tuned")
    settings = PipelineSettings(
        config_path=str(PROJECT_ROOT / "finetune.yaml"),
        overrides=[f"paths.work_dir={tmp_path / 'work'}", f"review.required={str(required).lower()}"],
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            _review_only_graph(tmp_path, preds), resources={"settings": settings}, instance=instance,
            raise_on_error=False,
        )  # fmt: skip
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "experts_prefer_tuned")
    assert not check.passed  # nobody has judged the packet yet
    released = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    if required:
        assert check.severity == dg.AssetCheckSeverity.ERROR and "release" not in released
    else:
        assert check.severity == dg.AssetCheckSeverity.WARN and "release" in released
        assert check.description.startswith("advisory")


def test_sensor_waits_for_enough_judgements_then_requests_one_run_per_change(packet_for, tmp_path):
    from resources import PipelineSettings
    from sensors import expert_review_sensor
    from tests.test_pipeline import PROJECT_ROOT

    cfg, packet, right = packet_for("tuned", "review.items=24")
    settings = PipelineSettings(
        config_path=str(PROJECT_ROOT / "finetune.yaml"), overrides=[f"paths.work_dir={cfg.work_dir}"]
    )

    def evaluate(cursor=None):
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"settings": settings})
            return expert_review_sensor(context), context.cursor

    store_judgements(packet, simulated_judgements(packet.items()[:12], right, ["R1", "R2"], seed=0))
    skipped, _ = evaluate()
    assert isinstance(skipped, dg.SkipReason) and "12/20 items judged by 2/2 raters" in skipped.skip_message
    store_judgements(packet, simulated_judgements(packet.items(), right, ["R1", "R2"], seed=0))
    request, cursor = evaluate()
    assert isinstance(request, dg.RunRequest) and request.run_key.startswith(f"review-{packet.packet_id}-")
    again, _ = evaluate(cursor)
    assert isinstance(again, dg.SkipReason) and "no new judgements" in again.skip_message
