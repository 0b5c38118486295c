"""LLaMA-Factory data as it ships: an upstream-like dataset_info.json, entry selection, tool-calling rows in
LLaMA-Factory's sharegpt and OpenAI's messages shape, and unfilled template variables (identity.json)."""

import json

import pytest

from finetune.cli import main as cli_main
from finetune.config import CleanConfig, IngestConfig, PiiConfig, load_config
from finetune.data.clean import clean_records
from finetune.data.ingest import IngestError, ingest_files
from finetune.data.pii import deidentify_records
from finetune.data.records import TRAINED_ROLES, prompt_text, response_text, write_jsonl

TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]  # fmt: skip
CALL = {"name": "get_weather", "arguments": {"city": "北京"}}
EXPECTED = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "北京天气怎么样？"},
    {"role": "function_call", "content": json.dumps(CALL, ensure_ascii=False)},
    {"role": "observation", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "北京现在 21 度。"},
]


def _lf_glaive_row():
    """A row as in LLaMA-Factory's glaive_toolcall demos: JSON text in `function_call` and `tools`."""
    turns = [("human", "北京天气怎么样？"), ("function_call", json.dumps(CALL, ensure_ascii=False)),
             ("observation", '{"temp": 21}'), ("gpt", "北京现在 21 度。")]  # fmt: skip
    return {"conversations": [{"from": f, "value": v} for f, v in turns], "system": "You can call tools.",
            "tools": json.dumps(TOOLS)}  # fmt: skip


def _openai_row():
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "北京"}, ensure_ascii=False)}}  # fmt: skip
    return {"messages": [{"role": "system", "content": "You can call tools."},
                         {"role": "user", "content": "北京天气怎么样？"},
                         {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                         {"role": "assistant", "content": "北京现在 21 度。"}],
            "tools": [{"type": "function", "function": TOOLS[0]}]}  # fmt: skip


def _write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def test_tool_calls_in_llamafactory_and_openai_shape_become_one_internal_record(tmp_path):
    info = {"glaive": {"file_name": "glaive.json", "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}}  # fmt: skip
    _write_json(tmp_path / "glaive.json", [_lf_glaive_row()])
    _write_json(tmp_path / "dataset_info.json", info)
    (tmp_path / "openai.jsonl").write_text(json.dumps(_openai_row(), ensure_ascii=False) + "\n", encoding="utf-8")
    lf, _ = ingest_files([tmp_path / "dataset_info.json"])
    oa, _ = ingest_files([tmp_path / "openai.jsonl"])
    assert lf.kept[0]["messages"] == oa.kept[0]["messages"] == EXPECTED
    assert lf.kept[0]["tools"] == oa.kept[0]["tools"] == TOOLS  # parsed, never dropped
    assert lf.kept[0]["id"] == oa.kept[0]["id"]
    record = lf.kept[0]
    assert response_text(record) == "北京现在 21 度。" and '{"temp": 21}' in prompt_text(record)
    assert TRAINED_ROLES == ("assistant", "function_call")
    # The same turns without tools are a different training example, so a different id.
    no_tools, _ = ingest_files([_write_json(tmp_path / "bare.json", [_lf_glaive_row() | {"tools": ""}])])
    assert "tools" not in no_tools.kept[0] and no_tools.kept[0]["id"] != record["id"]


def test_a_curated_tool_record_reads_back_unchanged_and_stages_keep_its_tools(tmp_path):
    first, _ = ingest_files([_write_json(tmp_path / "a.json", [_lf_glaive_row()])])
    write_jsonl(tmp_path / "kept.jsonl", first.kept)  # what `train --data kept.jsonl` reads back
    again, _ = ingest_files([tmp_path / "kept.jsonl"])
    assert [(r["id"], r["messages"], r["tools"]) for r in again.kept] == [
        (r["id"], r["messages"], r["tools"]) for r in first.kept
    ]
    padded = {**first.kept[0], "messages": [{**m, "content": m["content"] + "  "} for m in first.kept[0]["messages"]]}
    cleaned = clean_records([padded], CleanConfig(languages=[]))
    assert cleaned.kept[0]["tools"] == TOOLS and cleaned.kept[0]["id"] == first.kept[0]["id"]
    deidentified = deidentify_records(cleaned.kept, PiiConfig(), "salt")
    assert deidentified.kept[0]["tools"] == TOOLS


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"tools": "[{'name': 'not json'}]"}, "field 'tools' is not valid JSON"),
        ({"tools": json.dumps([{"description": "no name"}])}, "field 'tools[0]' must be a function schema"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "get_weather(北京)"}]},
         "conversations[1].value' is not valid JSON"),
        ({"conversations": [{"from": "human", "value": "hi"},
                            {"from": "function_call", "value": '{"name": "f", "arguments": "[1]"}'}]},
         "arguments' must be an object"),
    ],
)  # fmt: skip
def test_a_broken_tools_column_or_call_is_quarantined_not_dropped(tmp_path, change, detail):
    result, _ = ingest_files([_write_json(tmp_path / "t.json", [_lf_glaive_row() | change, _lf_glaive_row()])])
    assert len(result.kept) == 1 and [q["reason"] for q in result.quarantined] == ["invalid_shape"]
    assert detail in result.quarantined[0]["detail"]


def test_unfilled_template_variables_are_quarantined_unless_configured(tmp_path):
    rows = [{"instruction": "Who are you?", "output": "I am {{name}}, an AI assistant developed by {{ author }}."},
            {"instruction": "Write a Vue snippet", "output": "Use `{{ message }}`:\n```html\n<p>{{ message }}</p>\n```"},
            {"instruction": "hi", "output": "Hello!"}]  # fmt: skip
    path = _write_json(tmp_path / "identity.json", rows)
    result, _ = ingest_files([path])
    assert len(result.kept) == 2  # `{{ message }}` inside code is template syntax, not a placeholder
    (bad,) = result.quarantined
    assert (bad["reason"], bad["line"]) == ("unfilled_template_variable", 1)
    assert (
        "{{name}}, {{author}}" in bad["detail"]
        and "ingest.template_variables: {name: ..., author: ...}" in bad["detail"]
    )
    filled, _ = ingest_files([path], IngestConfig(template_variables={"name": "小助手", "author": "Acme"}))
    assert filled.kept[0]["messages"][1]["content"] == "I am 小助手, an AI assistant developed by Acme."
    assert filled.extra["template_variables_filled"] == {"name": 1, "author": 1} and not filled.quarantined
    unflagged, _ = ingest_files([path], IngestConfig(flag_template_variables=False))
    assert len(unflagged.kept) == 3


def _upstream_like_folder(tmp_path):
    """A dataset folder shaped like LLaMA-Factory's data/: SFT demos beside hub, preference, KTO,
    multimodal and pre-training entries, one missing file, and a file no entry describes."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    _write_json(tmp_path / "alpaca_zh_demo.json", [{"instruction": "你好", "input": "", "output": "你好！"}])
    _write_json(tmp_path / "identity.json", [{"instruction": "hi", "input": "", "output": "I am {{name}}."}])
    _write_json(tmp_path / "glaive_toolcall_zh_demo.json", [_lf_glaive_row()])
    (tmp_path / "c4_demo.jsonl").write_text('{"text": "a document"}\n', encoding="utf-8")
    (tmp_path / "v1_sft_demo.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    info = {
        "identity": {"file_name": "identity.json"},
        "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"},
        "glaive_toolcall_zh_demo": {"file_name": "glaive_toolcall_zh_demo.json", "formatting": "sharegpt",
                                    "columns": {"messages": "conversations", "tools": "tools"}},
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"}},
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
        "dpo_zh_demo": {"file_name": "dpo_zh_demo.json", "ranking": True, "formatting": "sharegpt"},
        "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt", "columns": {"kto_tag": "label"}},
        "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
        "lost_demo": {"file_name": "lost.json", "num_samples": 10},
    }  # fmt: skip
    _write_json(tmp_path / "dataset_info.json", info)
    return tmp_path


def test_an_upstream_dataset_info_reads_what_it_can_and_lists_every_skip_with_its_reason(tmp_path):
    folder = _upstream_like_folder(tmp_path)
    result, _ = ingest_files([folder])  # a folder holding dataset_info.json is read through it (LF's dataset_dir)
    rows = {d["name"]: d for d in result.extra["datasets"]}
    assert {n: d["status"] for n, d in rows.items() if d["status"] == "read"} == {
        "identity": "read", "alpaca_zh_demo": "read", "glaive_toolcall_zh_demo": "read"}  # fmt: skip
    assert rows["identity"]["quarantined_by_reason"] == {"unfilled_template_variable": 1}
    assert rows["alpaca_zh_demo"]["kept"] == rows["glaive_toolcall_zh_demo"]["kept"] == 1
    reasons = {s["name"]: s["reason"] for s in result.extra["skipped_datasets"]}
    assert "needs the network (hf_hub_url" in reasons["alpaca_en"]
    assert "multimodal (images)" in reasons["mllm_demo"] and "preference data" in reasons["dpo_zh_demo"]
    assert "KTO" in reasons["kto_en_demo"] and "pre-training text" in reasons["c4_demo"]
    assert reasons["lost_demo"].startswith("file not found")
    assert result.extra["undescribed_files"] == [str(folder / "v1_sft_demo.jsonl")]
    assert len(result.kept) == 2 and result.n_in == 3


def test_dataset_entries_are_selected_by_name_as_in_llamafactory(tmp_path, capsys):
    folder = _upstream_like_folder(tmp_path / "data")
    picked, lineage = ingest_files(
        [folder / "dataset_info.json"], IngestConfig(dataset=["alpaca_zh_demo", "alpaca_en"])
    )
    assert [f["dataset"] for f in lineage] == ["alpaca_zh_demo"] and len(picked.kept) == 1
    assert [s["name"] for s in picked.extra["skipped_datasets"]] == ["alpaca_en"]
    assert load_config(None, ["ingest.dataset=alpaca_zh_demo, identity"]).ingest.dataset == [
        "alpaca_zh_demo",
        "identity",
    ]
    with pytest.raises(IngestError, match=r"ingest.dataset names \['alpaca_zh'\] .*entries: \['alpaca_en'"):
        ingest_files([folder], IngestConfig(dataset=["alpaca_zh"]))
    out = tmp_path / "out"
    args = ["curate", "--input", str(folder), "--output", str(out), "--no-tokens",
            "--set", "ingest.dataset=[glaive_toolcall_zh_demo]", "--set", "clean.languages=[]"]  # fmt: skip
    assert cli_main(args) == 0
    kept = [json.loads(line) for line in (out / "kept.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["tools"] for r in kept] == [TOOLS]
