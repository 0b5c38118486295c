import json
import re

from finetune.cli import main
from tests.conftest import SAMPLE


def test_eval_text_prints_json(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("猫坐在垫子上\nthe cat sat on the mat\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("猫在垫子上\nthe cat is on the mat\n", encoding="utf-8")
    assert main(["eval", "text", "--pred", str(tmp_path / "p.txt"), "--ref", str(tmp_path / "r.txt"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "bleu"} and scores["rouge1"] > 0.8


def test_curate_writes_every_record_somewhere(tmp_path, capsys):
    assert main(["curate", "--input", str(SAMPLE / "instructions.jsonl"), "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    lines = {n: len((tmp_path / f"{n}.jsonl").read_text().splitlines()) for n in ("kept", "dropped", "quarantined")}
    assert report["stages"][0]["in"] == sum(lines.values())


def _outcomes(folder):
    return {
        n: (folder / f"{n}.jsonl").read_text(encoding="utf-8").splitlines() for n in ("kept", "dropped", "quarantined")
    }


def test_deidentify_and_scan_commands_write_every_record_somewhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FINETUNE_PII_SALT", "test-salt")
    rows = (SAMPLE / "instructions.jsonl").read_text(encoding="utf-8").splitlines()
    out = tmp_path / "deid"
    args = ["deidentify", "--input", str(SAMPLE / "instructions.jsonl"), "--output", str(out)]
    assert main([*args, "--set", "pii.operators.PERSON=pseudonym"]) == 0
    printed = capsys.readouterr().out
    assert "CN_MOBILE_PHONE" in printed and "PERSON" in printed and "pseudonym" in printed
    written = _outcomes(out)
    report = json.loads((out / "report.json").read_text())
    # Records identical once their PII is replaced are dropped, and written with the reason, not lost.
    assert report["dropped_by_reason"]["duplicate_after_deidentification"] == len(written["dropped"]) > 0
    assert report["rows_in"] == len(rows) == sum(len(lines) for lines in written.values())
    text = "\n".join(line for lines in written.values() for line in lines)
    assert "<CN_MOBILE_PHONE>" in text and "<PERSON_" in text
    raw_phones = set(re.findall(r"1[3-9]\d{9}", "\n".join(rows)))
    assert raw_phones and not any(p in text or p in (out / "report.json").read_text() for p in raw_phones)
    assert main(["scan", "--input", str(out / "kept.jsonl"), "--output", str(tmp_path / "scan")]) == 0
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["trigger_hits"] == {"cf": 12}
    assert sum(len(lines) for lines in _outcomes(tmp_path / "scan").values()) == len(written["kept"])


def test_stage_commands_refuse_a_file_as_output(tmp_path, capsys):
    for command in ("deidentify", "scan"):
        assert (
            main([command, "--input", str(SAMPLE / "instructions.jsonl"), "--output", str(tmp_path / "x.jsonl")]) == 2
        )
        assert "give a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_bad_config_is_a_clear_error(capsys):
    assert main(["scan", "--input", "x", "--output", "y", "--set", "train.lora_rank=0"]) == 2
    assert "train.lora_rank" in capsys.readouterr().err


def test_the_command_line_starts_without_loading_models_or_presidio():
    """Every `finetune` command builds the whole parser first; it must not import what one subcommand needs
    (the review packet once pulled in Presidio, peft and torch: 8 s before `finetune scan --help` printed)."""
    import subprocess
    import sys

    probe = (
        "import sys; sys.argv = ['finetune', 'scan', '--help']\n"
        "from finetune.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'presidio_analyzer', 'dagster') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert "--input" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
