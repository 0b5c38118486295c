"""Hostile and careless input: every case is read without a traceback or a hang, every good record is kept,
and every bad one is quarantined (or its dataset entry skipped) with its file, line and reason.

Each case builds its input inline in a temporary folder, beside good records, and states exactly which
(file, line, reason) quarantines it expects. Cases run under a SIGALRM time limit, so a read that blocks
(a FIFO opened for reading waits for a writer forever) fails the test instead of hanging the suite.
"""

from __future__ import annotations

import codecs
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from finetune.cli import main as cli_main
from finetune.config import PROJECT_ROOT, IngestConfig, SftConfig
from finetune.data.ingest import ingest_files
from finetune.data.records import record_id
from finetune.gates import records_accounted
from finetune.sft import split_of

TIME_LIMIT_S = 20


def good(i: int) -> dict:
    return {"instruction": f"Question number {i}?", "output": f"Answer number {i}."}


def jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


@dataclass
class Case:
    """Build the input under a folder; return the paths to ingest."""

    build: Callable[[Path], list[Path]]
    kept: int  # good records that must come out
    quarantined: set[tuple[str, int, str]]  # (file name, line, reason)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset entry -> a phrase its reason holds
    cfg: IngestConfig = field(default_factory=IngestConfig)
    detail: str = ""  # a phrase every quarantine detail of the case holds


def _deep_jsonl(d: Path) -> list[Path]:
    deep = '{"instruction": ' + "[" * 5000 + "]" * 5000 + ', "output": "x"}'
    (d / "deep.jsonl").write_text(jsonl([good(1), deep, good(2)]), encoding="utf-8")
    return [d]


def _deep_json_array(d: Path) -> list[Path]:
    deep = "[" * 100_000 + "]" * 100_000
    text = "[\n" + json.dumps(good(1)) + ",\n" + deep + ",\n" + json.dumps(good(2)) + "\n]\n"
    (d / "deep.json").write_text(text, encoding="utf-8")
    return [d]


def _lone_surrogates(d: Path) -> list[Path]:
    rows = [
        good(1),
        r'{"instruction": "bad \ud800 text", "output": "x"}',
        r'{"instruction": "a pair is one character: \ud83d\ude00", "output": "fine"}',
        r'{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "\udfff"}]}',
    ]
    (d / "s.jsonl").write_text(jsonl(rows), encoding="utf-8")
    element = r'{"instruction": "x", "output": "\uDC00 y"}'
    (d / "s.json").write_text("[\n" + json.dumps(good(2)) + ",\n" + element + "\n]\n", encoding="utf-8")
    return [d]


def _symlink_loops(d: Path) -> list[Path]:
    (d / "good.jsonl").write_text(jsonl([good(1), good(2)]), encoding="utf-8")
    (d / "loop.jsonl").symlink_to("loop.jsonl")  # ELOOP when opened
    (d / "sub").mkdir()
    (d / "sub" / "back").symlink_to("..", target_is_directory=True)  # a folder cycle: walked once
    (d / "sub" / "dangling.json").symlink_to(d / "nowhere.json")
    return [d]


def _folder_named_like_a_file(d: Path) -> list[Path]:
    (d / "x.jsonl").mkdir()
    (d / "x.jsonl" / "inner.jsonl").write_text(jsonl([good(1)]), encoding="utf-8")
    (d / "y.json").mkdir()
    (d / "good.csv").write_text("instruction,output\nq,a\n", encoding="utf-8")
    return [d]


def _fifos(d: Path) -> list[Path]:
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "a" / "good.jsonl").write_text(jsonl([good(1)]), encoding="utf-8")
    os.mkfifo(d / "a" / ".jsonl")
    os.mkfifo(d / "b" / "pipe.json")
    return [d / "a", d / "b" / "pipe.json"]  # in a folder, and named directly as an input


def _truncated_json(d: Path) -> list[Path]:
    text = json.dumps([good(1), good(2), good(3)], indent=2)
    (d / "cut.json").write_text(text[: text.rindex('"output"') + 12], encoding="utf-8")
    return [d]


def _damaged_json_element(d: Path) -> list[Path]:
    text = "[\n" + json.dumps(good(1)) + ',\n{"instruction": "x", "output": }' + ",\n" + json.dumps(good(2)) + "\n]"
    (d / "hole.json").write_text(text, encoding="utf-8")
    (d / "bytes.json").write_bytes(
        b'[{"instruction": "ok", "output": "fine"},\n{"instruction": "\xff\xfe", "output": "x"}]'
    )
    return [d]


def _csv_bad_rows(d: Path) -> list[Path]:
    (d / "rows.csv").write_text('instruction,output\nq1,a1\nq2,a2,extra\n"q3, with comma",a3\nq4\n', encoding="utf-8")
    return [d]


def _utf16(d: Path) -> list[Path]:
    (d / "bom.jsonl").write_bytes(codecs.BOM_UTF16_LE + jsonl([good(1), "{broken", good(2)]).encode("utf-16-le"))
    (d / "nobom.csv").write_bytes("instruction,output\n中文问题,中文回答\n".encode("utf-16-le"))
    (d / "be.json").write_bytes(codecs.BOM_UTF16_BE + json.dumps([good(3)]).encode("utf-16-be"))
    return [d]


def _dataset_info_escapes(d: Path) -> list[Path]:
    (d / "outside.jsonl").write_text(jsonl([good(9)]), encoding="utf-8")
    data = d / "data"
    (data / "sub").mkdir(parents=True)
    (data / "ok.json").write_text(json.dumps([good(1), good(2)]), encoding="utf-8")
    (data / "link.jsonl").symlink_to(d / "outside.jsonl")
    (data / "sub" / "inner.jsonl").write_text(jsonl([good(3)]), encoding="utf-8")
    (data / "sub" / "link.jsonl").symlink_to(d / "outside.jsonl")
    info = {
        "passwd": {"file_name": "../../../../../../etc/passwd"},
        "absolute": {"file_name": "/etc/passwd"},
        "sibling": {"file_name": "../outside.jsonl"},
        "via_link": {"file_name": "link.jsonl"},
        "folder": {"file_name": "sub"},  # a folder entry whose link inside points out of the dataset folder
        "missing": {"file_name": "gone.json"},
        "ok": {"file_name": "ok.json"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return [data / "dataset_info.json"]


def _turn_order(d: Path) -> list[Path]:
    def conv(*roles: str) -> dict:
        return {"conversations": [{"from": r, "value": f"{r} text {i}"} for i, r in enumerate(roles)]}

    rows = [
        conv("gpt", "human", "gpt"),
        conv("human", "human", "gpt"),
        conv("system", "gpt"),
        conv("human", "gpt", "system", "human", "gpt"),
        conv("human", "gpt", "gpt"),
        conv("human", "observation", "gpt"),
        conv("human", "gpt", "human"),
        conv("system", "human", "gpt", "human", "gpt"),
    ]
    (d / "chats.jsonl").write_text(jsonl(rows), encoding="utf-8")
    return [d]


CASES = {
    "deeply nested JSON line": Case(_deep_jsonl, 2, {("deep.jsonl", 2, "unparseable_row")}, detail="levels deep"),
    "deeply nested .json element": Case(_deep_json_array, 2, {("deep.json", 3, "unparseable_row")}, detail="deep"),
    "lone surrogate escapes": Case(
        _lone_surrogates,
        3,
        {("s.jsonl", 2, "unparseable_row"), ("s.jsonl", 4, "unparseable_row"), ("s.json", 3, "unparseable_row")},
        detail="half of a UTF-16 surrogate pair",
    ),
    "symlink loops and dangling links": Case(
        _symlink_loops, 2, {("loop.jsonl", 0, "unreadable_file"), ("dangling.json", 0, "unreadable_file")}
    ),
    "folders named x.jsonl / y.json": Case(_folder_named_like_a_file, 2, set()),
    "FIFOs named .jsonl / pipe.json": Case(
        _fifos, 1, {(".jsonl", 0, "unreadable_file"), ("pipe.json", 0, "unreadable_file")}, detail="FIFO"
    ),
    "truncated .json array": Case(_truncated_json, 2, {("cut.json", 10, "unparseable_row")}, detail="truncated"),
    "damaged .json elements": Case(
        _damaged_json_element, 3, {("hole.json", 3, "unparseable_row"), ("bytes.json", 2, "unparseable_row")}
    ),
    "CSV with bad rows": Case(
        _csv_bad_rows, 2, {("rows.csv", 3, "unparseable_row"), ("rows.csv", 5, "unparseable_row")}, detail="fields"
    ),
    "UTF-16 with and without BOM": Case(_utf16, 4, {("bom.jsonl", 2, "unparseable_row")}, detail="invalid JSON"),
    "dataset_info.json paths outside its folder": Case(
        _dataset_info_escapes,
        3,
        {("link.jsonl", 0, "unreadable_file")},
        skipped={
            "passwd": "outside the dataset folder",
            "absolute": "outside the dataset folder",
            "sibling": "outside the dataset folder",
            "via_link": "outside the dataset folder",
            "missing": "file not found",
        },  # fmt: skip
        detail="resolves outside",
    ),
    "ShareGPT turn order": Case(
        _turn_order,
        1,
        {
            ("chats.jsonl", 1, "starts_with_assistant"),
            ("chats.jsonl", 2, "consecutive_user_turns"),
            ("chats.jsonl", 3, "no_user_turn"),
            ("chats.jsonl", 4, "system_turn_mid_conversation"),
            ("chats.jsonl", 5, "consecutive_assistant_turns"),
            ("chats.jsonl", 6, "observation_without_call"),
            ("chats.jsonl", 7, "no_response_at_end"),
        },  # fmt: skip
    ),
}


class Hung(Exception):  # not an OSError (as TimeoutError is), so no I/O error handler can swallow it
    pass


@contextmanager
def time_limit(seconds: int):
    def expired(signum, frame):
        raise Hung(f"ingest did not finish within {seconds} s (a blocking read?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_keeps_good_records_and_quarantines_the_rest(name, tmp_path):
    case = CASES[name]
    paths = case.build(tmp_path)
    with time_limit(TIME_LIMIT_S):
        result, lineage = ingest_files(paths, case.cfg)
    assert len(result.kept) == case.kept, [q["detail"] for q in result.quarantined]
    assert all(r["messages"][-1]["role"] == "assistant" for r in result.kept)
    got = {(Path(q["file"]).name, q["line"], q["reason"]) for q in result.quarantined}
    assert got == case.quarantined and len(result.quarantined) == len(case.quarantined)
    assert all(q["detail"] for q in result.quarantined)
    if case.detail:
        assert all(case.detail in q["detail"] for q in result.quarantined), [q["detail"] for q in result.quarantined]
    skipped = {s["name"]: s["reason"] for s in result.extra.get("skipped_datasets", [])}
    assert set(skipped) == set(case.skipped) and all(case.skipped[n] in skipped[n] for n in skipped)
    assert records_accounted(result.report()).passed and sum(f["rows"] for f in lineage) == result.n_in
    assert not any("passwd" in f["path"] or "outside.jsonl" == Path(f["path"]).name for f in lineage)


def test_files_outside_the_dataset_folder_are_read_only_when_allowed(tmp_path):
    paths = _dataset_info_escapes(tmp_path)
    result, _ = ingest_files(paths, IngestConfig(confine_to_dataset_dir=False, dataset=["ok", "sibling", "via_link"]))
    assert sorted(r["messages"][0]["content"] for r in result.kept) == [
        "Question number 1?", "Question number 2?", "Question number 9?", "Question number 9?"]  # fmt: skip
    assert {s["name"] for s in result.extra["skipped_datasets"]} == set()  # unselected entries are not listed


def _ingest_counts(paths: list[Path]) -> dict:
    result, _ = ingest_files(paths)
    return {
        "kept": len(result.kept),
        "quarantined": [(q["file"], q["reason"], q["detail"]) for q in result.quarantined],
    }


def _ingest_as(uid: int, gid: int, paths: list[Path]) -> dict:
    """Run ingest in a forked child that has dropped root to `uid`: its counts, or its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so the interpreter under /root stays usable after dropping root
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = _ingest_counts(paths)
        except BaseException as exc:  # reported to the parent, which fails the test with it
            out = {"error": repr(exc)}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh, time_limit(TIME_LIMIT_S):
        text = fh.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def _unprivileged_user() -> tuple[int, int] | None:
    for name in ("nobody", "finetune-test"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    done = subprocess.run(["useradd", "--system", "--no-create-home", "finetune-test"], capture_output=True)
    return _unprivileged_user() if done.returncode == 0 else None


def test_an_unreadable_file_and_folder_are_quarantined_for_a_non_root_user():
    folder = Path(tempfile.mkdtemp(prefix="finetune-perm-", dir="/tmp"))
    (folder / "good.jsonl").write_text(jsonl([good(1), good(2)]), encoding="utf-8")
    (folder / "secret.jsonl").write_text(jsonl([good(3)]), encoding="utf-8")
    (folder / "locked").mkdir()
    (folder / "locked" / "hidden.jsonl").write_text(jsonl([good(4)]), encoding="utf-8")
    os.chmod(folder, 0o755)  # the unprivileged user must reach the folder itself
    os.chmod(folder / "secret.jsonl", 0)
    os.chmod(folder / "locked", 0)
    try:
        if os.geteuid() != 0:
            out = _ingest_counts([folder, folder / "locked"])  # the locked folder also named directly
        else:
            user = _unprivileged_user()
            if user is None:
                pytest.skip("running as root and no unprivileged user exists or can be created (useradd failed)")
            out = _ingest_as(*user, [folder, folder / "locked"])
    finally:
        os.chmod(folder / "locked", 0o755)
        shutil.rmtree(folder)
    assert "error" not in out, out
    assert out["kept"] == 2
    reasons = sorted((Path(f).name, reason) for f, reason, _ in out["quarantined"])
    assert reasons == [
        ("locked", "unreadable_file"),
        ("locked", "unreadable_file"),
        ("secret.jsonl", "unreadable_file"),
    ]
    assert all("permission denied" in detail for _, _, detail in out["quarantined"])


def test_curate_command_on_every_hostile_input_at_once_prints_no_traceback(tmp_path):
    cases = [c for c in CASES.values() if c.build is not _dataset_info_escapes]  # that one is its own input
    for i, case in enumerate(cases):
        (tmp_path / "in" / str(i)).mkdir(parents=True)
        case.build(tmp_path / "in" / str(i))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "finetune.cli", "curate", "--input", str(tmp_path / "in"), "--output", str(out),
           "--no-tokens", "--set", "clean.languages=[]"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    raw = report["stages"][0]
    assert raw["kept"] == sum(c.kept for c in cases) and raw["quarantined"] == sum(len(c.quarantined) for c in cases)
    quarantined = [json.loads(line) for line in (out / "quarantined.jsonl").read_text().splitlines()]
    assert all(q["file"] and "line" in q and q["reason"] for q in quarantined if q["stage"] == "raw_records")


def test_scan_writes_or_counts_every_input_row(tmp_path, capsys):
    rows = [good(i) for i in range(6)] + ["{broken", '{"text": "unknown shape"}', '{"instruction": 5, "output": "x"}']
    (tmp_path / "in.jsonl").write_text(jsonl(rows), encoding="utf-8")
    assert cli_main(["scan", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "scan")]) == 0
    written = {
        n: (tmp_path / "scan" / f"{n}.jsonl").read_text().splitlines() for n in ("kept", "dropped", "quarantined")
    }
    assert len(written["kept"]) + len(written["dropped"]) + len(written["quarantined"]) == len(rows)
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["rows_in"] == len(rows) and report["quarantined_at_ingest"] == 3
    assert [json.loads(q)["line"] for q in written["quarantined"] if json.loads(q)["stage"] == "raw_records"] == [
        7,
        8,
        9,
    ]
    assert "unreadable input rows" in capsys.readouterr().out


def test_train_refuses_a_data_file_with_bad_rows_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text(jsonl([good(1)] + ["{not json"] * 15), encoding="utf-8")
    assert cli_main(["train", "--data", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "15 of 16 rows cannot be read" in err and f"{tmp_path / 'bad.jsonl'}:2: unparseable_row" in err
    ingested = tmp_path / "out" / "raw_records"  # every row it counted is written, the unreadable ones too
    assert [len((ingested / f"{n}.jsonl").read_text().splitlines()) for n in ("kept", "quarantined")] == [1, 15]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["raw_records"]  # no split, no model


def test_train_refuses_records_that_leave_the_validation_split_empty(tmp_path, capsys, tiny_base):
    in_train = next(i for i in range(100) if split_of(_alpaca_id(good(i)), SftConfig(test_fraction=0)) == "train")
    (tmp_path / "one.jsonl").write_text(jsonl([good(in_train)]), encoding="utf-8")
    args = ["train", "--data", str(tmp_path / "one.jsonl"), "--output", str(tmp_path / "out"),
            "--set", f"model.base={tiny_base}", "--set", "sft.test_fraction=0"]  # fmt: skip
    assert cli_main(args) == 2
    assert "empty validation split" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["raw_records", "sft_dataset"]  # nothing trained
    report = json.loads((tmp_path / "out" / "sft_dataset" / "report.json").read_text())
    assert report["split_sizes"] == {"train": 1, "val": 0, "test": 0}


def _alpaca_id(row: dict) -> str:
    return record_id([{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}])
