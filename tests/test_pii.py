import json
import logging

from finetune.config import PiiConfig
from finetune.data.pii import deidentify_records, is_valid_cn_resident_id, luhn_valid, redact, scan_residual_pii
from finetune.data.records import make_record

ENTITIES = PiiConfig().entities
VALID_ID = "11010519491231002X"


def test_resident_id_checksum():
    assert is_valid_cn_resident_id(VALID_ID)
    assert not is_valid_cn_resident_id("110105194912310021")  # wrong check digit
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")


def test_recognizers_work_glued_to_chinese_text():
    text = f"我叫张三手机13812345678邮箱zhang.san@example.com身份证{VALID_ID}谢谢"
    assert redact(text, ENTITIES) == "我叫张三手机<CN_MOBILE_PHONE>邮箱<EMAIL_ADDRESS>身份证<CN_RESIDENT_ID>谢谢"
    assert redact("电话 +86 138-1234-5678。", ENTITIES) == "电话 <CN_MOBILE_PHONE>。"


def test_near_misses_are_not_pii():
    for text in ["订单号20231234567890", "身份证110105194912310021", "编号12812345678", "版本 1.2.3"]:
        assert redact(text, ENTITIES) == text, text


def _rec(text):
    return make_record([{"role": "user", "content": text}, {"role": "assistant", "content": "好的"}], "f", 1)


def test_deidentify_accounts_and_never_exposes_values(caplog):
    phone, email = "13912345678", "li.lei@example.org"
    with caplog.at_level(logging.DEBUG):
        result = deidentify_records([_rec(f"联系{phone}或{email}"), _rec("没有隐私")], PiiConfig())
    assert result.counts()["kept"] == 2 and result.extra["replaced_by_entity"] == {
        "CN_MOBILE_PHONE": 1,
        "EMAIL_ADDRESS": 1,
    }
    assert result.extra["residual_scan"]["residual_total"] == 0
    visible = json.dumps(result.extra, ensure_ascii=False) + caplog.text
    assert phone not in visible and email not in visible


def test_residual_scan_finds_planted_pii_without_showing_it():
    scan = scan_residual_pii([_rec("手机13912345678")], PiiConfig())
    assert scan["residual_total"] == 1 and scan["by_entity"] == {"CN_MOBILE_PHONE": 1}
    assert "13912345678" not in json.dumps(scan)
