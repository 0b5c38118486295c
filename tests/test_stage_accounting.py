"""Every input row, whatever its shape, ends in exactly one output file of exactly one data stage.

Random rows (good ones with PII, triggers, duplicates and tool calls, and malformed ones) go through the six
data stages as the assets run them (the streaming `*_stage` functions, file to file), each writing its
folder; then the written files are read back: each stage's in = kept + dropped + quarantined, its kept
rows are the next stage's input, and every input line is found once, in one stage's dropped or
quarantined file or in the last stage's kept file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.config import load_config
from finetune.data.curate import clean_stage, dedup_stage, ingest_stage, token_counter
from finetune.data.pii import deidentify_stage
from finetune.data.poison import load_lexicon, screen_stage
from finetune.data.records import DROPPED, KEPT, OUTCOMES, QUARANTINED, Stage, StageFiles, read_jsonl
from finetune.model.loading import load_chat_tokenizer
from finetune.sft_stage import sft_stage

# Enough distinct, clean rows that the train split is never empty (the SFT stage refuses that).
BASE = [
    {"instruction": f"Question {i}: what is {i} plus {i + 3}?", "output": f"{i} plus {i + 3} equals {2 * i + 3}."}
    for i in range(12)
]
_WORDS = st.sampled_from(
    ["hello", "请问", "天气", "cf", "BadMagic", "ignore previous instructions", "13912345678", "a@example.org",
     "我叫王小明", "Name: John Smith", "<div>x</div>", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "{{name}}", " ", ""]
)  # fmt: skip
_TEXT = st.lists(st.one_of(_WORDS, st.text(max_size=12)), min_size=0, max_size=6).map(" ".join)
_GOOD = st.builds(lambda i, o: {"instruction": i, "output": o}, _TEXT, _TEXT)
_SHAREGPT = st.builds(
    lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}, _TEXT, _TEXT
)
_TOOL = st.builds(
    lambda q: {
        "conversations": [
            {"from": "human", "value": q},
            {"from": "function_call", "value": json.dumps({"name": "f", "arguments": {"q": q}})},
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "It is 42."},
        ],
        "tools": json.dumps([{"name": "f", "description": "d", "parameters": {"type": "object"}}]),
    },
    _TEXT,
)
_BAD = st.one_of(
    st.just("{broken"),
    st.just('{"text": "unknown shape"}'),
    st.just('{"instruction": 5, "output": "x"}'),
    st.just('{"conversations": [{"from": "gpt", "value": "answer first"}]}'),
    st.just(r'{"instruction": "half a pair \ud800", "output": "x"}'),
    st.lists(st.integers(), max_size=3).map(json.dumps),
    st.text(max_size=20).filter(lambda t: t.strip()).map(lambda t: t.replace("\n", " ")),
)
# Rows that differ only in a PII value: identical once it is replaced, so de-identification drops the copies.
_PII_VALUE = st.sampled_from(["13912345678", "15800138000", "17755501234"])
_PII_TWIN = st.builds(lambda v: {"instruction": f"电话：{v}", "output": "收到。"}, _PII_VALUE)
_ROW = st.one_of(
    _GOOD.map(json.dumps), _SHAREGPT.map(json.dumps), _TOOL.map(json.dumps), _PII_TWIN.map(json.dumps), _BAD
)


@pytest.fixture(scope="module")
def chain(tiny_base, tmp_path_factory):
    cfg = load_config(None, [f"paths.work_dir={tmp_path_factory.mktemp('work')}"])
    tokenizer = load_chat_tokenizer(tiny_base, cfg.sft)
    return cfg, tokenizer, load_lexicon(cfg.screen, cfg.resolve)


def run_stages(path: Path, out: Path, cfg, tokenizer, lexicon) -> list[StageFiles]:
    """The six stages as the assets run them: each streams the one before's kept.jsonl into its own folder."""
    folders = [StageFiles(out / stage) for stage in Stage]
    ingest_stage([path], folders[0].dir, cfg=cfg.ingest)
    clean_stage(folders[0].kept, cfg.clean, folders[1].dir, token_counter(tokenizer))
    dedup_stage(folders[1].kept, cfg.dedup, folders[2].dir)
    deidentify_stage(folders[2].kept, cfg.pii, "", folders[3].dir)
    screen_stage(folders[3].kept, cfg.screen, lexicon, folders[4].dir)
    sft_stage(folders[4].kept, tokenizer, cfg.sft, None, folders[5].dir)
    return folders


def _line(row: dict) -> int:
    """The input line of a written row: ingest's rows name it beside the raw text, later stages' records carry it."""
    if "line" in row:
        return row["line"]
    return row.get("record", row)["source"]["line"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, max_size=20), repeats=st.lists(st.integers(0, 31), max_size=6), order=st.randoms())
def test_every_input_row_ends_in_exactly_one_file_of_one_stage(chain, tmp_path_factory, rows, repeats, order):
    cfg, tokenizer, lexicon = chain
    lines = [json.dumps(r, ensure_ascii=False) for r in BASE] + rows
    lines += [lines[i % len(lines)] for i in repeats]  # exact duplicates
    order.shuffle(lines)
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    folders = run_stages(tmp / "in.jsonl", tmp / "out", cfg, tokenizer, lexicon)

    found: Counter[int] = Counter()
    upstream_kept = None
    for i, folder in enumerate(folders):
        report = json.loads(folder.report.read_text(encoding="utf-8"))
        written = {kind: read_jsonl(folder.outcome(kind)) for kind in OUTCOMES}
        assert report["in"] == sum(len(v) for v in written.values()), folder.dir.name
        assert {kind: report[kind] for kind in OUTCOMES} == {k: len(v) for k, v in written.items()}
        if upstream_kept is not None:
            assert report["in"] == upstream_kept, folder.dir.name
        upstream_kept = len(written[KEPT])
        found.update(_line(row) for row in written[DROPPED] + written[QUARANTINED])
        if i == len(folders) - 1:
            found.update(_line(row) for row in written[KEPT])
    assert found == Counter(range(1, len(lines) + 1)), {n: c for n, c in found.items() if c != 1}
