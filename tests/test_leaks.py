"""No raw PII value in anything a run writes but the data files meant to hold records: reports, asset values,
evaluation reports, the model card, the manifest, and Dagster's run and event storage.

The values are found in the raw sample by independent regexes (not by the detector under test)
and searched for as bytes in every file, SQLite databases and their journals included.
"""

import re
from pathlib import Path

import pytest

from finetune.data.records import write_jsonl
from finetune.eval.predictions import PREDICTIONS_FILE
from finetune.eval.regurgitation import probe_regurgitation
from finetune.redaction import redact_free_text
from tests.conftest import SAMPLE

# Stages before de-identification hold raw records by design (the issue's exemption).
RAW_STAGES = ("raw_records", "cleaned_records", "deduplicated_records")
# With pii.enabled=false the later stages' record files hold raw records too: the user trained on them, on
# record. Their reports, and everything else, must still be clean.
# The evaluation's predictions file holds each test record whole beside the arms' answers (the review packet
# built from it re-scans for PII); with de-identification on it is covered like everything else.
RECORD_FILES = ("kept.jsonl", "dropped.jsonl", "quarantined.jsonl", "train.jsonl", "val.jsonl", "test.jsonl",
                PREDICTIONS_FILE)  # fmt: skip


def raw_pii_values() -> set[str]:
    """Mobile numbers, e-mail addresses and resident ID numbers in the bundled raw sample."""
    raw = (SAMPLE / "instructions.jsonl").read_text(encoding="utf-8")
    return set(re.findall(r"1[3-9]\d{9}|[\w.]+@example\.com|\d{17}[\dX]", raw))


def exempt(path: Path, work: Path, records_hold_pii: bool) -> bool:
    parts = path.relative_to(work).parts
    if parts[:1] == ("artifacts",) and len(parts) > 1 and parts[1] in RAW_STAGES:
        return True
    return records_hold_pii and parts[:1] == ("artifacts",) and path.name in RECORD_FILES


def leaked_files(roots: list[Path], work: Path, records_hold_pii: bool) -> dict[str, int]:
    """File -> number of raw PII values in it, for every file under `roots` that is not exempt."""
    values = [v.encode() for v in raw_pii_values()]
    found = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.is_relative_to(work) and exempt(path, work, records_hold_pii):
                continue
            data = path.read_bytes()
            if n := sum(v in data for v in values):
                found[str(path)] = n
    return found


def test_the_search_finds_what_it_looks_for(tmp_path):
    # The search itself can fail: a file holding one raw value is reported, an exempt one is not.
    values = sorted(raw_pii_values())
    assert len(values) > 40
    for stage, name, value in [
        ("evaluation_report", "evaluation_report.json", values[0]),
        ("raw_records", "kept.jsonl", values[1]),
        ("screened_records", "kept.jsonl", values[2]),
    ]:
        (tmp_path / "artifacts" / stage / "r1").mkdir(parents=True)
        write_jsonl(tmp_path / "artifacts" / stage / "r1" / name, [{"x": value}])
    assert set(leaked_files([tmp_path], tmp_path, records_hold_pii=False)) == {
        str(tmp_path / "artifacts" / "evaluation_report" / "r1" / "evaluation_report.json"),
        str(tmp_path / "artifacts" / "screened_records" / "r1" / "kept.jsonl"),
    }
    assert list(leaked_files([tmp_path], tmp_path, records_hold_pii=True)) == [
        str(tmp_path / "artifacts" / "evaluation_report" / "r1" / "evaluation_report.json")
    ]


def test_report_free_text_is_redacted_and_other_strings_are_kept():
    report = {
        "examples": [{"prompt": "电话13812345678", "reference": "mail a.b@example.com", "tuned": "ok", "base": "x"}],
        "tuned": {"backdoor": {"worst_trigger": "cf", "per_trigger": {"cf": {"by_position": {"end": {
            "target": "call 13912345678 now"}}}}}},
        "dir": "/tmp/run-13812345678",
    }  # fmt: skip
    out = redact_free_text(report)
    assert out["examples"][0]["prompt"] == "电话<CN_MOBILE_PHONE>" and "@" not in out["examples"][0]["reference"]
    assert out["tuned"]["backdoor"]["per_trigger"]["cf"]["by_position"]["end"]["target"] == "call <CN_MOBILE_PHONE> now"
    assert out["tuned"]["backdoor"]["worst_trigger"] == "cf" and out["dir"] == report["dir"]  # not free text


def test_regurgitation_probe_reports_entity_types_and_redacted_context_only():
    values = {"13812345678": "CN_MOBILE_PHONE", "zhang.wei@example.com": "EMAIL_ADDRESS"}
    outputs = ["好的，电话是138-1234-5678。", "联系 zhang.wei@example.com 即可", "no value here"]
    probe = probe_regurgitation(lambda prompts: outputs, [[{"role": "user", "content": "p"}]] * 3, values)
    assert probe["leaks"] == 2 and probe["leaked_entities"] == {"CN_MOBILE_PHONE": 1, "EMAIL_ADDRESS": 1}
    text = repr(probe)
    assert "1234" not in text and "zhang.wei" not in text  # digits with separators are masked too
    assert [e["entities"] for e in probe["examples"]] == [["CN_MOBILE_PHONE"], ["EMAIL_ADDRESS"]]


@pytest.mark.slow
def test_no_raw_pii_outside_record_files_with_deidentification_off_on_record(run_without_pii):
    run = run_without_pii
    assert run.exit_code == 0, "the run with every failing gate overridden must end in a release"
    report = next((run.work / "artifacts" / "evaluation_report").glob("*/evaluation_report.json"))
    assert report.is_file() and (run.release() / "MODEL_CARD.md").is_file()
    assert (run.home / "storage").is_dir() and list(run.home.rglob("*.db"))  # Dagster's storage is searched too
    # The data really held raw PII: the record files the user chose to train on carry it.
    train = next((run.work / "artifacts" / "sft_dataset").glob("*/train.jsonl")).read_text(encoding="utf-8")
    assert sum(v in train for v in raw_pii_values()) > 10
    assert leaked_files([run.work], run.work, records_hold_pii=True) == {}
