import json
import logging
import os
import sys

import pytest

from finetune.config import PII_ENTITIES, PROJECT_ROOT, PiiConfig
from finetune.data import pii, stream
from finetune.data.pii import (
    RESIDUAL_SCAN,
    deidentify_records,
    deidentify_stage,
    find_pii,
    record_residual_scan,
    recorded_residual_scan,
    redact,
    scan_residual_pii,
)
from finetune.data.pii_operators import load_or_create_salt, mask_value, pseudonym
from finetune.data.pii_recognizers import ALL_ENTITIES, is_valid_cn_resident_id, luhn_valid
from finetune.data.records import StageFiles, make_record, read_jsonl, write_jsonl

ENTITIES = PiiConfig().entities
VALID_ID = "11010519491231002X"


def test_config_lists_every_shipped_entity():
    assert PII_ENTITIES == ALL_ENTITIES


def test_resident_id_checksum():
    assert is_valid_cn_resident_id(VALID_ID)
    assert not is_valid_cn_resident_id("110105194912310021")  # wrong check digit
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")


# (text, the value that must be found, its entity). Each value is glued to CJK text or punctuation
# where that is the hard case for `\b`-anchored patterns.
POSITIVES = [
    ("手机13812345678谢谢", "13812345678", "CN_MOBILE_PHONE"),
    ("电话 +86 138-1234-5678。", "+86 138-1234-5678", "CN_MOBILE_PHONE"),
    ("手机138 1234 5678找我", "138 1234 5678", "CN_MOBILE_PHONE"),
    ("全角号码１３８１２３４５６７８", "１３８１２３４５６７８", "CN_MOBILE_PHONE"),
    ("座机010-87654321转分机", "010-87654321", "CN_LANDLINE"),
    ("电话（021）87654321", "（021）87654321", "CN_LANDLINE"),
    (f"身份证{VALID_ID}已登记", VALID_ID, "CN_RESIDENT_ID"),
    ("旧身份证110105491231002", "110105491231002", "CN_RESIDENT_ID"),
    ("银行卡6222 0202 0000 0000 006", "6222 0202 0000 0000 006", "CREDIT_CARD"),
    ("card 4111-1111-1111-1111.", "4111-1111-1111-1111", "CREDIT_CARD"),
    ("护照号码E12345678，", "E12345678", "CN_PASSPORT"),
    ("车牌京A12345的车", "京A12345", "CN_LICENSE_PLATE"),
    ("新能源车牌粤B·D12345", "粤B·D12345", "CN_LICENSE_PLATE"),
    ("我住在北京市朝阳区建国路88号3单元502室，", "北京市朝阳区建国路88号3单元502室", "CN_ADDRESS"),
    ("我叫张三手机", "张三", "PERSON"),
    ("联系人：欧阳娜娜，电话", "欧阳娜娜", "PERSON"),
    ("请把文件交给蒋玉华老师。", "蒋玉华", "PERSON"),
    ("My name is John Smith, hi", "John Smith", "PERSON"),
    ("I live at 1600 Pennsylvania Avenue now", "1600 Pennsylvania Avenue", "ADDRESS"),
    ("邮箱zhang.san@example.com谢谢", "zhang.san@example.com", "EMAIL_ADDRESS"),
    ("call +1 415-555-2671 today", "+1 415-555-2671", "PHONE_NUMBER"),
    ("call (415) 555-2671 today", "(415) 555-2671", "PHONE_NUMBER"),
    ("转账到DE89 3704 0044 0532 0130 00即可", "DE89 3704 0044 0532 0130 00", "IBAN_CODE"),
    ("服务器192.168.1.20宕机", "192.168.1.20", "IP_ADDRESS"),
    ("host fe80:0:0:0:202:b3ff:fe1e:8329 up", "fe80:0:0:0:202:b3ff:fe1e:8329", "IP_ADDRESS"),
    (
        "连接postgres://admin:s3cr3t@db.example.com:5432 失败",
        "postgres://admin:s3cr3t@db.example.com:5432",
        "URL_CREDENTIALS",
    ),
    ("key AKIAIOSFODNN7EXAMPLE end", "AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 end", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GITHUB_TOKEN"),
    ("OPENAI_KEY是sk-proj-abcdefghijklmnopqrstuvwx。", "sk-proj-abcdefghijklmnopqrstuvwx", "API_KEY"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl",
        "JWT",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "PRIVATE_KEY",
    ),
    ('config: password="hunter2abc"', "hunter2abc", "PASSWORD"),
    ("数据库密码：Abc12345，请保管", "Abc12345", "PASSWORD"),
    # Secrets in config-like `key = value` form (detect-secrets' plugins plus entropy beside secret names).
    ("[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SECRET"),
    ("SLACK_BOT=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "SECRET"),
    ("refresh_token: 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "9f8e7d6c5b4a39281706f5e4d3c2b1a0", "PASSWORD"),
    ('client_credential = "Q2xpZW50U2VjcmV0MTIzNDU2Nzg5MEFCQw"', "Q2xpZW50U2VjcmV0MTIzNDU2Nzg5MEFCQw", "SECRET"),
    # Numbers read out in Chinese numerals, or mixed with digits.
    ("我的手机是一三八一二三四五六七八，打我", "一三八一二三四五六七八", "CN_MOBILE_PHONE"),
    ("电话幺三九 1234 五六七八", "幺三九 1234 五六七八", "CN_MOBILE_PHONE"),
    # Names only with a cue or beside an identifier of the same person; whole words.
    ("张伟的手机是13912345678", "张伟", "PERSON"),
    ("Dear Hina Sharif,\nThank you", "Hina Sharif", "PERSON"),
    ("Name: Maria Lopez\nPhone: unknown", "Maria Lopez", "PERSON"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value", "entity"), POSITIVES, ids=[p[2] + str(i) for i, p in enumerate(POSITIVES)])
def test_recognizer_finds_value_with_exact_span(text, value, entity):
    hits = [(h.entity_type, text[h.start : h.end]) for h in find_pii(text, ENTITIES, 0.5)]
    assert (entity, value) in hits


NEAR_MISSES = [
    "订单号20231234567890",  # long digit run, fails Luhn
    "身份证110105194912310021",  # wrong check digit
    "编号12812345678",  # 12x is not a mobile prefix
    "版本 1.2.3.4 和 v2.0.1.3 已发布",  # version numbers look like IPv4
    "地址 999.1.1.1 无效",  # not an IP
    "卡号4111 1111 1111 1112",  # Luhn fails
    "GB00WEST12345698765432",  # IBAN checksum fails
    "谢谢你，张开双臂欢迎文明城市的建设",  # everyday words jieba tags as names
    "teacher 的中文是老师。",
    "The answer is Paris. I am happy to help.",
    "password: 12",  # too short to be a secret
    "高中地理：长江流经哪些省份？黄河流域有多长？",
    # Ordinary words that start with a surname character, and names of no one in particular.
    "员工满意度提高了，安全措施也到位了。",
    "盐和黑胡椒粉适量调味，再加一点罗勒。",
    "斐波那契数列和贝叶斯定理都很有用。",
    "生成哈利波特系列角色的名称列表。",
    "一位名叫艾拉的姑娘住在王国里。",
    "简逐渐爱上了罗切斯特先生。",
    "学生应期望掌握这些技能。",
    "Alexander's empire stretched from Greece to India; it ended in February.",
    "Dear Hiring Manager, I am applying.",
    "4. Make eye contact: Engage with your audience.",
    "Game Name: Shape Explorers",
    "a gift from your dear Siri.",
    # Placeholders and stand-ins are not secrets (the re-scan reads de-identified text).
    "password: <PASSWORD>，请登录",
    "数据库密码：<PASSWORD>",
    "token = <SECRET>; user = <PERSON_1a2b3c4d>",
    "const apiKey = 'API_KEY';",
    "EMAIL_PASSWORD = os.environ.get('EMAIL_PASSWORD')",
    "db_password = ${DB_PASSWORD}",
    "1. 设置强密码：为您的所有账户设置强密码。",
    "cube = RubiksCube::Cube.new",
    "第一二三章讲的是五六七个人。",  # short numeral runs are words, not numbers
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_pii(text):
    assert redact(text, ENTITIES) == text


def test_pii_inside_json_strings_and_every_role():
    record = make_record(
        [
            {"role": "system", "content": "客服工号 sk-abcdefghijklmnopqrstuvwxyz"},
            {"role": "user", "content": '{"phone": "13812345678", "email": "a.b@example.org"}'},
            {"role": "assistant", "content": "已记录你的身份证" + VALID_ID},
        ],
        "f",
        1,
    )
    [out] = deidentify_records([record], PiiConfig()).kept
    assert [m["content"] for m in out["messages"]] == [
        "客服工号 <API_KEY>",
        '{"phone": "<CN_MOBILE_PHONE>", "email": "<EMAIL_ADDRESS>"}',
        "已记录你的身份证<CN_RESIDENT_ID>",
    ]


def _rec(text, answer="好的"):
    return make_record([{"role": "user", "content": text}, {"role": "assistant", "content": answer}], "f", 1)


def test_pseudonyms_are_consistent_salted_and_canonical():
    assert pseudonym("CN_MOBILE_PHONE", "138-1234-5678", "s1") == pseudonym("CN_MOBILE_PHONE", "13812345678", "s1")
    assert pseudonym("CN_MOBILE_PHONE", "13812345678", "s1") != pseudonym("CN_MOBILE_PHONE", "13812345678", "s2")
    assert pseudonym("CN_MOBILE_PHONE", "13812345678", "s1") != pseudonym("CN_MOBILE_PHONE", "13912345678", "s1")
    cfg = PiiConfig(default_operator="pseudonym")
    result = deidentify_records(
        [_rec("我的手机13812345678", "好的，13812345678已记录"), _rec("手机13912345678")], cfg, "s"
    )
    first, second = result.kept
    surrogate = first["messages"][0]["content"].removeprefix("我的手机")
    assert surrogate.startswith("<CN_MOBILE_PHONE_") and surrogate in first["messages"][1]["content"]
    assert surrogate not in second["messages"][0]["content"]
    with pytest.raises(ValueError, match="salt"):
        deidentify_records([_rec("手机13812345678")], cfg, "")


def test_mask_and_drop_operators_account_for_every_record():
    assert mask_value("6222020200000000006") == "***************0006"
    assert mask_value("张三") == "**"
    cfg = PiiConfig(operators={"CREDIT_CARD": "mask", "PRIVATE_KEY": "drop", "CN_MOBILE_PHONE": "drop"})
    records = [_rec("卡号6222020200000000006"), _rec("手机13812345678"), _rec("你好")]
    result = deidentify_records(records, cfg)
    assert [r["messages"][0]["content"] for r in result.kept] == ["卡号***************0006", "你好"]
    [(dropped)] = result.dropped
    assert dropped["reason"] == "pii_drop:CN_MOBILE_PHONE" and "13812345678" not in json.dumps(dropped)
    counts = result.counts()
    assert counts.n_in == counts.kept + counts.dropped + counts.quarantined == 3


def test_salt_comes_from_env_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FINETUNE_PII_SALT", raising=False)
    salt = load_or_create_salt(tmp_path)
    assert load_or_create_salt(tmp_path) == salt and (tmp_path / "pii_salt").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("FINETUNE_PII_SALT", "from-env")
    assert load_or_create_salt(tmp_path) == "from-env"


def test_unknown_entity_in_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown PII entities.*PHONE"):
        PiiConfig(entities=["PHONE"])


def test_deidentify_accounts_and_never_exposes_values(caplog):
    phone, email = "13912345678", "li.lei@example.org"
    with caplog.at_level(logging.DEBUG):
        result = deidentify_records([_rec(f"联系{phone}或{email}"), _rec("没有隐私")], PiiConfig())
    assert result.counts().kept == 2 and result.extra["replaced_by_entity"] == {
        "CN_MOBILE_PHONE": 1,
        "EMAIL_ADDRESS": 1,
    }
    assert scan_residual_pii(result.kept, PiiConfig())["residual_total"] == 0
    visible = json.dumps(result.extra, ensure_ascii=False) + caplog.text
    assert phone not in visible and email not in visible


def test_residual_scan_finds_planted_pii_and_shows_it_redacted():
    scan = scan_residual_pii([_rec("请联系王磊先生，手机13912345678，谢谢")], PiiConfig())
    assert scan["residual_total"] == 2 and scan["by_entity"] == {"CN_MOBILE_PHONE": 1, "PERSON": 1}
    assert scan["examples"][0]["redacted_context"] == "请联系<PERSON>先生，手机<CN_MOBILE_PHONE>，谢谢"
    assert "13912345678" not in json.dumps(scan, ensure_ascii=False)


def test_residual_scan_is_independent_of_the_configured_entities():
    cfg = PiiConfig(entities=["EMAIL_ADDRESS"])
    result = deidentify_records([_rec("邮箱a@example.com，手机13912345678")], cfg)
    assert result.kept[0]["messages"][0]["content"] == "邮箱<EMAIL_ADDRESS>，手机13912345678"
    assert scan_residual_pii(result.kept, cfg)["by_entity"] == {"CN_MOBILE_PHONE": 1}


def test_the_residual_scan_runs_once_on_the_written_file_and_the_release_reads_what_it_recorded(tmp_path, monkeypatch):
    # The check scans the stage's kept.jsonl (so it can fail on its own); the release copies that verdict.
    write_jsonl(StageFiles(tmp_path).kept, [_rec("手机13912345678"), _rec("没有隐私")])
    assert record_residual_scan(tmp_path, PiiConfig())["by_entity"] == {"CN_MOBILE_PHONE": 1}
    assert json.loads((tmp_path / RESIDUAL_SCAN).read_text())["residual_total"] == 1

    def no_second_scan(*_):
        raise AssertionError("the release re-scanned although the check had recorded its scan")

    monkeypatch.setattr(pii, "scan_residual_pii", no_second_scan)
    assert recorded_residual_scan(tmp_path, PiiConfig())["residual_total"] == 1
    elsewhere = tmp_path / "unchecked"  # a stage folder no check has scanned: the release scans it once itself
    elsewhere.mkdir()
    write_jsonl(StageFiles(elsewhere).kept, [_rec("没有隐私")])
    with pytest.raises(AssertionError, match="re-scanned"):
        recorded_residual_scan(elsewhere, PiiConfig())


def test_deidentified_text_passes_the_residual_scan_whatever_it_mentions():
    # The re-scan reads placeholders and pseudonyms; none of them may count as PII again.
    records = [
        _rec("我的密码：Abc12345，邮箱a@example.org", "好的，password: hunter2abc 已记录"),
        _rec(
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "我叫王小明，电话一三八一二三四五六七八"
        ),
    ]
    for operator in ("replace", "pseudonym"):
        result = deidentify_records(records, PiiConfig(default_operator=operator), "salt")
        assert scan_residual_pii(result.kept, PiiConfig())["residual_total"] == 0, result.kept
        text = json.dumps(result.kept, ensure_ascii=False)
        for value in ("Abc12345", "hunter2abc", "wJalrXUtnFEMI", "王小明", "一三八一二三四五六七八"):
            assert value not in text


def test_person_spans_are_whole_words():
    # A cue next to a word that starts with a surname character never cuts the word.
    for text in ("客户满意度调查", "员工满意度很高", "用于帮助医生诊断", "同事和前途", "创建客户年龄字段"):
        assert not [h for h in find_pii(text, ["PERSON"], 0.5)], text
    [hit] = find_pii("请把报告交给蒋玉华老师。", ["PERSON"], 0.5)
    assert "请把报告交给蒋玉华老师。"[hit.start : hit.end] == "蒋玉华"


def test_a_name_given_away_once_is_replaced_wherever_the_record_mentions_it():
    # LLaMA-Factory's alpaca_en_demo has this shape: the cue ("Name:") opens the answer, the prose goes on.
    answer = (
        "Name: Dr. Abigail Grayson\n\nAppearance: Dr. Abigail Grayson is tall. Dr. Grayson is cunning. Graysonville"
    )
    records = [
        _rec("Sketch a villain; call her Grayson.", answer),
        _rec("我叫张伟，请帮我写信。", "张伟您好，信已写好。"),
    ]
    for operator in ("replace", "pseudonym"):
        result = deidentify_records(records, PiiConfig(default_operator=operator), "salt")
        text = json.dumps(result.kept, ensure_ascii=False)
        assert "Abigail" not in text and "Grayson " not in text and "Grayson." not in text and "张伟" not in text
        assert "Graysonville" in text  # whole words only
        assert scan_residual_pii(result.kept, PiiConfig())["residual_total"] == 0, result.kept
    first = deidentify_records(records[:1], PiiConfig()).kept[0]["messages"]
    assert first[0]["content"] == "Sketch a villain; call her <PERSON>."
    assert first[1]["content"].startswith("Name: Dr. <PERSON>\n\nAppearance: Dr. <PERSON> is tall. Dr. <PERSON> is")


def test_a_title_left_beside_a_placeholder_is_not_a_name():
    for text in ("Name: Dr. <PERSON>", "Dear Mr. <PERSON>,", "Contact: Prof <PERSON>"):
        assert not find_pii(text, ["PERSON"], 0.5), text
    [hit] = find_pii("Name: Dr. Grayson", ["PERSON"], 0.5)
    assert "Name: Dr. Grayson"[hit.start : hit.end] == "Grayson"


def test_a_transliterated_name_is_replaced_whole():
    text = "我的名字是约翰·多伊，我今年30岁。"
    [hit] = find_pii(text, ["PERSON"], 0.5)
    assert text[hit.start : hit.end] == "约翰·多伊"


def test_asking_presidio_only_for_the_entities_a_text_can_hold_changes_no_hit(monkeypatch):
    # The pre-filter must be invisible: on the benchmark's generator (another seed than the one it reports) and on
    # full-width and Chinese-numeral forms, every hit is the same with and without it.
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    from pii_benchmark import LabelledSet

    gen = LabelledSet(11)
    texts = [e.text for _ in range(4) for e in gen.positives() + gen.negatives()]
    texts += [
        "电话：一三九一二三四五六七八",
        "卡号６２２２０２１２３４５６７８９０１２３",
        "no digits, no at sign: just words",
    ]
    spans = lambda: [[(h.entity_type, h.start, h.end, h.score) for h in find_pii(t, PII_ENTITIES, 0.5)] for t in texts]  # noqa: E731
    filtered = spans()
    skipped = sum(len(pii.possible_entities(t, PII_ENTITIES)) < len(PII_ENTITIES) for t in texts)
    monkeypatch.setattr(pii, "possible_entities", lambda _text, entities: entities)
    assert filtered == spans()
    assert sum(map(len, filtered)) > len(texts) / 2 and skipped > len(texts) / 4  # the set has hits, the filter bites


def test_the_streaming_stage_writes_what_the_in_memory_stage_decides(tmp_path):
    # The asset streams the upstream file record by record; the CLI and tests hold the records in memory.
    records = [
        _rec("联系13912345678", "好的"),
        _rec("联系13987654321", "好的"),  # the same record as the first once the phone is replaced
        _rec("邮箱li.lei@example.org，请记下", "已记下"),
        _rec("没有隐私", "好"),
    ]
    cfg = PiiConfig(operators={"EMAIL_ADDRESS": "drop"})
    write_jsonl(tmp_path / "upstream.jsonl", records)
    report = deidentify_stage(tmp_path / "upstream.jsonl", cfg, "", tmp_path / "out")
    in_memory = deidentify_records(records, cfg)
    files = StageFiles(tmp_path / "out")
    assert read_jsonl(files.kept) == in_memory.kept and read_jsonl(files.outcome("dropped")) == in_memory.dropped
    assert report.counts == in_memory.counts()
    assert report.counts.dropped_by_reason == {"duplicate_after_deidentification": 1, "pii_drop:EMAIL_ADDRESS": 1}
    assert (
        report.extra["replaced_by_entity"]
        == in_memory.extra["replaced_by_entity"]
        == {"CN_MOBILE_PHONE": 2, "EMAIL_ADDRESS": 1}
    )


def test_deidentification_on_worker_processes_decides_exactly_what_one_process_decides(tmp_path, monkeypatch):
    # Workers only anonymize; the duplicate and drop decisions stay in input order in the stage's process.
    records = [_rec(f"联系1391234{i:04d}", "好的") for i in range(300)]  # copies of one another once replaced
    records += [_rec(f"邮箱user{i}@example.org，问题{i}", "已记下") for i in range(300)]
    records += [_rec(f"没有隐私的问题{i}", "好") for i in range(300)]
    cfg = PiiConfig(operators={"EMAIL_ADDRESS": "drop"})
    write_jsonl(tmp_path / "upstream.jsonl", records)
    one = deidentify_stage(tmp_path / "upstream.jsonl", cfg.model_copy(update={"workers": 1}), "", tmp_path / "one")
    monkeypatch.setattr(pii, "_POOL_AFTER", 100)
    calls = []
    real_pool = stream.ProcessPoolExecutor
    monkeypatch.setattr(stream, "ProcessPoolExecutor", lambda *a, **k: calls.append(a) or real_pool(*a, **k))
    two = deidentify_stage(tmp_path / "upstream.jsonl", cfg.model_copy(update={"workers": 2}), "", tmp_path / "two")
    assert calls and calls[0][0] == 2  # the pool did run
    for kind in ("kept", "dropped", "quarantined"):
        assert read_jsonl(tmp_path / "two" / f"{kind}.jsonl") == read_jsonl(tmp_path / "one" / f"{kind}.jsonl")
    assert two.counts == one.counts and two.extra == one.extra
    assert one.counts.dropped_by_reason == {"duplicate_after_deidentification": 299, "pii_drop:EMAIL_ADDRESS": 300}
    assert one.counts.kept == 301 and one.extra["replaced_by_entity"] == {"CN_MOBILE_PHONE": 300, "EMAIL_ADDRESS": 300}


def test_default_workers_leave_the_stage_its_own_core(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert PiiConfig().worker_count() == 1  # 2 cores: no pool beside the stage's own process
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert PiiConfig().worker_count() == 15 and PiiConfig(workers=3).worker_count() == 3
