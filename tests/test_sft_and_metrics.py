import json
from pathlib import Path

import pytest
import sacrebleu

from finetune.config import SftConfig
from finetune.data.records import StageReport, read_jsonl, write_jsonl
from finetune.eval.metrics import bleu, metric_tokens, rouge, text_metrics
from finetune.model.chat_template import template_info
from finetune.model.loading import load_chat_tokenizer, load_tokenizer
from finetune.sft import IGNORE_INDEX, split_of, tokenize_conversation
from finetune.sft_stage import SftFormatter, SftSummary, build_sft_splits, sft_stage, write_sft_dataset
from finetune.train import examples
from finetune.train.examples import read_split


def test_labels_cover_only_assistant_turns(tiny_base):
    tok = load_tokenizer(tiny_base)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "法国的首都是哪里？"},
        {"role": "assistant", "content": "巴黎。"},
        {"role": "user", "content": "Japan?"},
        {"role": "assistant", "content": "Tokyo."},
    ]
    ex = tokenize_conversation(tok, msgs, cutoff_len=256)
    trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX])
    assert trained.replace("\n", "") == "巴黎。<|im_end|>Tokyo.<|im_end|>"
    assert ex["labels"][0] == IGNORE_INDEX and len(ex["input_ids"]) == len(ex["labels"])


def test_pii_placeholders_and_pseudonyms_survive_sft_formatting(tiny_base):
    tok = load_tokenizer(tiny_base)
    answer = "已记录<CN_MOBILE_PHONE>，联系人<PERSON_3fa2c1d0>。"
    msgs = [{"role": "user", "content": "我的手机<CN_MOBILE_PHONE>"}, {"role": "assistant", "content": answer}]
    ex = tokenize_conversation(tok, msgs, cutoff_len=256)
    trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX])
    assert trained.startswith(answer)


def test_split_is_deterministic_and_roughly_proportional():
    cfg = SftConfig(val_fraction=0.1, test_fraction=0.2, seed=1)
    splits = [split_of(f"id{i}", cfg) for i in range(2000)]
    assert splits == [split_of(f"id{i}", cfg) for i in range(2000)]
    assert abs(splits.count("test") / 2000 - 0.2) < 0.03 and abs(splits.count("val") / 2000 - 0.1) < 0.03


def test_sft_drops_records_with_no_trainable_token(tiny_base):
    tok = load_tokenizer(tiny_base)
    long_prompt = {
        "id": "a",
        "source": {},
        "messages": [{"role": "user", "content": "字" * 400}, {"role": "assistant", "content": "好"}],
    }
    ok = {
        "id": "b",
        "source": {},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    result = build_sft_splits([long_prompt, ok], tok, SftConfig(cutoff_len=32, val_fraction=0.0, test_fraction=0.0))
    assert [d["reason"] for d in result.dropped] == ["no_trainable_tokens"] and len(result.kept) == 1


def test_chinese_rouge_is_hand_checkable_and_not_zero():
    # 猫坐在垫子上 vs 猫在垫子上: 5 shared chars of 6/5 -> F1 10/11; bigrams 3 of 5/4 -> F1 2/3.
    scores = rouge(["猫坐在垫子上"], ["猫在垫子上"])
    assert abs(scores["rouge1"] - 10 / 11) < 1e-9 and abs(scores["rouge2"] - 2 / 3) < 1e-9
    assert abs(scores["rougeL"] - 10 / 11) < 1e-9
    assert metric_tokens("Hello世界, ok") == ["hello", "世", "界", ",", "ok"]


def test_bleu_matches_sacrebleu_reference_on_the_same_pairs():
    preds = ["法国的首都是巴黎。", "the cat sat on the mat", "2 加 3 等于 5"]
    refs = ["法国的首都是巴黎。", "the cat is on the mat", "2加3等于5。"]
    expected = sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score
    assert abs(bleu(preds, refs) - expected) < 1e-9
    assert text_metrics(["完全不同"], ["毫无关系"])["rougeL"] == 0.0


def test_sft_settings_validate_cutoff_auto_and_resolve_a_template_file_against_the_config(tmp_path):
    from finetune.config import ConfigError, load_config

    config = tmp_path / "cfg.yaml"
    config.write_text("sft:\n  cutoff_len: auto\n  template: templates/mine.jinja\n", encoding="utf-8")
    cfg = load_config(config)
    assert cfg.sft.cutoff_len == "auto" and cfg.sft.template == str(tmp_path / "templates" / "mine.jinja")
    assert load_config(None, ["sft.template=qwen3"]).sft.template == "qwen3"  # a name stays a name
    with pytest.raises(ConfigError, match="cutoff_len"):
        load_config(None, ["sft.cutoff_len=4"])
    with pytest.raises(ConfigError, match="ceval_prompt"):
        load_config(None, ["eval.ceval_prompt=mmlu"])


def test_unknown_template_name_is_refused_with_the_known_names(tiny_base):
    from finetune.model.loading import load_chat_tokenizer

    with pytest.raises(ValueError, match="qwen3"):
        load_chat_tokenizer(tiny_base, SftConfig(template="qwen4"))


@pytest.mark.parametrize("shard_tokens", [None, 64])
def test_the_two_pass_streaming_sft_stage_writes_what_the_in_memory_stage_writes(
    tiny_base, tmp_path, monkeypatch, shard_tokens
):
    # The asset streams the upstream file twice (lengths, then cutoff and split); `train --data` holds the records.
    # The streaming stage writes each split's examples in shards as they pass; 64 tokens makes many of them.
    if shard_tokens:
        monkeypatch.setattr(examples, "SHARD_TOKENS", shard_tokens)
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    records = [
        {"id": f"r{i}", "source": {}, "messages": [turn("user", f"question {i}"), turn("assistant", "answer " * i)]}
        for i in range(1, 30)
    ]
    records.append({"id": "long", "source": {}, "messages": [turn("user", "字" * 400), turn("assistant", "好")]})
    records.append({"id": "bad", "source": {}, "messages": [turn("user", "q"), turn("function_call", "not json")]})
    cfg = SftConfig(cutoff_len="auto", cutoff_percentile=0.9)
    tok = load_chat_tokenizer(tiny_base, cfg)
    write_jsonl(tmp_path / "upstream.jsonl", records)
    report = sft_stage(tmp_path / "upstream.jsonl", tok, cfg, None, tmp_path / "stream")
    memory_report = write_sft_dataset(build_sft_splits(records, tok, cfg), tmp_path / "memory")
    assert report.counts == memory_report.counts
    assert json.loads(json.dumps(report.extra)) == json.loads(json.dumps(memory_report.extra))
    assert report.counts.dropped_by_reason == {"no_trainable_tokens": 1}
    assert report.counts.quarantined_by_reason == {"chat_template_failed": 1}
    for name in ("kept", "dropped", "quarantined", "train", "val", "test"):
        assert read_jsonl(tmp_path / "stream" / f"{name}.jsonl") == read_jsonl(tmp_path / "memory" / f"{name}.jsonl")
    for split in ("train", "val", "test"):
        streamed, held = (read_split(tmp_path / d, split, tok) for d in ("stream", "memory"))
        assert streamed == held and streamed.encoding.cutoff_len == report.extra["cutoff_len"]
    assert sum(len(read_split(tmp_path / "stream", s, tok).record_ids) for s in ("train", "val", "test")) == 29
    shards = sorted(p.name for p in (tmp_path / "stream").glob("train.examples*.safetensors"))
    assert (len(shards) > 5) == bool(shard_tokens), shards
    # A shard beyond the last, left in the folder by an earlier run, is not read.
    (tmp_path / "stream" / examples.examples_file(Path("."), "train", len(shards)).name).write_bytes(b"stale")
    assert read_split(tmp_path / "stream", "train", tok) == read_split(tmp_path / "memory", "train", tok)
    # What training and evaluation read comes back typed from report.json, as the Dagster IO manager loads it.
    stored = StageReport.from_json(json.loads((tmp_path / "stream" / "report.json").read_text(encoding="utf-8")))
    summary = SftSummary.of(stored)
    assert summary == SftSummary.of(report) and sum(summary.split_sizes.values()) == 29
    assert summary.cutoff_len == report.extra["cutoff_len"] and summary.chat_template == template_info(tok)


def test_the_sft_stages_second_pass_refuses_an_input_that_changed_since_the_first(tiny_base):
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    records = [
        {"id": f"r{i}", "source": {}, "messages": [turn("user", f"q{i}"), turn("assistant", "a")]} for i in range(4)
    ]
    tok = load_chat_tokenizer(tiny_base, SftConfig())
    formatter = SftFormatter(tok, SftConfig())
    formatter.measure(records)
    changed = records[:2] + [records[3], records[2]]
    with pytest.raises(
        ValueError, match="read record r3 at position 2 in its second pass, where its first pass read an"
    ):
        list(formatter.outcomes(changed))
    formatter = SftFormatter(tok, SftConfig())
    formatter.measure(records)
    with pytest.raises(ValueError, match="second pass read 3 records, its first 4"):
        list(formatter.outcomes(records[:3]))


def test_sharded_examples_never_mix_two_runs_and_an_in_memory_split_writes_anywhere(tiny_base, tmp_path, monkeypatch):
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    records = [
        {"id": f"r{i}", "source": {}, "messages": [turn("user", f"q{i}"), turn("assistant", "a " * i)]}
        for i in range(40)
    ]
    write_jsonl(tmp_path / "upstream.jsonl", records)
    cfg = SftConfig(val_fraction=0.0, test_fraction=0.0)
    tok = load_chat_tokenizer(tiny_base, cfg)
    monkeypatch.setattr(examples, "SHARD_TOKENS", 64)
    sft_stage(tmp_path / "upstream.jsonl", tok, cfg, None, tmp_path / "out")
    whole = read_split(tmp_path / "out", "train", tok)
    assert len(whole.examples) == 40 and len(list((tmp_path / "out").glob("train.examples*"))) > 5

    def stop(_stage, n):
        if n == 30:
            raise KeyboardInterrupt

    # A second run into the same folder that stops part way: its first shards replace the first run's, so what
    # is left must not read as a split (before, it read as 18 records of one run and 22 of the other).
    write_jsonl(tmp_path / "other.jsonl", [r | {"id": "x" + r["id"]} for r in records])
    with pytest.raises(KeyboardInterrupt):
        sft_stage(tmp_path / "other.jsonl", tok, cfg, None, tmp_path / "out", progress=stop)
    with pytest.raises(FileNotFoundError, match="stopped part way"):
        read_split(tmp_path / "out", "train", tok)
    # The in-memory stage's result can be written to several folders, each whole.
    held = build_sft_splits(records, tok, cfg)
    for folder in ("a", "b"):
        write_sft_dataset(held, tmp_path / folder)
        assert read_split(tmp_path / folder, "train", tok) == whole


def test_a_one_file_split_written_before_shards_reads_as_the_whole_split(tiny_base, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    records = [
        {"id": f"r{i}", "source": {}, "messages": [turn("user", f"q{i}"), turn("assistant", "a")]} for i in range(6)
    ]
    cfg = SftConfig(val_fraction=0.0, test_fraction=0.0)
    tok = load_chat_tokenizer(tiny_base, cfg)
    write_sft_dataset(build_sft_splits(records, tok, cfg), tmp_path)
    path = examples.examples_file(tmp_path, "train")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    del meta["last_shard"]
    save_file(load_file(str(path)), str(path), metadata=meta | {"format": "finetune-sft-examples/1"})
    assert len(read_split(tmp_path, "train", tok).examples) == 6
