"""PII detection quality and speed: precision/recall/F1 per entity, and throughput next to Presidio's defaults.

    python benchmarks/pii_benchmark.py                 # 2,000 labelled texts for quality, 10,000 for speed
    python benchmarks/pii_benchmark.py --quality 500 --speed 2000

The labelled set is generated here (Faker zh_CN/en_US values inside hand-written Chinese and
English templates), with the hard cases the recognizers exist for: values glued to CJK text,
spaced and full-width digits, JSON strings, and near misses that are NOT PII (order numbers,
IDs with a wrong check digit, version numbers, Luhn-failing card numbers). A hit counts as a
true positive when its span overlaps a gold span of the same entity.

The peer is Presidio's analyzer with its predefined recognizers (the offline NoOp NLP engine,
since its default spaCy model cannot be downloaded here); it is scored type-agnostically
(any hit overlapping a gold span counts), which favours it.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tldextract  # noqa: E402
from faker import Faker  # noqa: E402
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry  # noqa: E402
from presidio_analyzer.nlp_engine import NoOpNlpEngine  # noqa: E402

from finetune.config import PII_ENTITIES  # noqa: E402
from finetune.data.pii import find_pii  # noqa: E402
from finetune.data.pii_recognizers import cn_resident_id_check_digit, luhn_valid  # noqa: E402

FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


@dataclass
class Example:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    chinese: bool = False


def _fill(template: str, value: str, entity: str, chinese: bool) -> Example:
    start = template.index("{}")
    return Example(template.replace("{}", value, 1), [(start, start + len(value), entity)], chinese)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return next(body + d for d in string.digits if luhn_valid(body + d))


class LabelledSet:
    """Generates labelled positives per entity and unlabelled near misses."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        Faker.seed(seed)
        self.zh, self.en = Faker("zh_CN"), Faker("en_US")

    def _mobile(self) -> str:
        number = self.zh.phone_number()
        style = self.rng.randrange(5)
        if style == 1:
            return "+86 " + number
        if style == 2:
            return f"{number[:3]} {number[3:7]} {number[7:]}"
        if style == 3:
            return f"{number[:3]}-{number[3:7]}-{number[7:]}"
        return number.translate(FULL_WIDTH) if style == 4 else number

    def _resident_id(self) -> str:
        if self.rng.random() < 0.8:
            return self.zh.ssn()
        body = self.zh.ssn()
        return body[:6] + body[8:17]  # legacy 15-digit form: two-digit year, no check digit

    def _cn_address(self) -> str:
        return (
            f"{self.zh.province()}{self.zh.city_name()}市{self.zh.district()}区{self.zh.last_name()}"
            f"{self.rng.choice(['路', '街', '大道'])}{self.rng.randint(1, 999)}号"
            + self.rng.choice(["", f"{self.rng.randint(1, 30)}栋{self.rng.randint(101, 2505)}室"])
        )

    def _plate(self) -> str:
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        tail = "".join(self.rng.choice(letters + string.digits * 3) for _ in range(4)) + self.rng.choice(string.digits)
        return self.rng.choice("京沪粤浙苏川鄂湘鲁豫") + self.rng.choice(letters) + tail

    def _secret(self, entity: str) -> str:
        alnum = string.ascii_letters + string.digits
        pick = lambda n, chars=alnum: "".join(self.rng.choice(chars) for _ in range(n))  # noqa: E731
        if entity == "AWS_ACCESS_KEY":
            return "AKIA" + pick(16, string.ascii_uppercase + string.digits)
        if entity == "GITHUB_TOKEN":
            return "ghp_" + pick(36)
        if entity == "API_KEY":
            return "sk-" + pick(48)
        if entity == "JWT":
            return "eyJhbGciOiJIUzI1NiJ9.eyJ" + pick(30, alnum + "_-") + "." + pick(43, alnum + "_-")
        if entity == "PRIVATE_KEY":
            return "-----BEGIN PRIVATE KEY-----\n" + pick(64, alnum + "+/") + "\n-----END PRIVATE KEY-----"
        return self.en.password(length=12, special_chars=False)

    def positives(self) -> list[Example]:
        """One example per (entity, template) draw; Chinese and English templates."""
        zh, en, rng = self.zh, self.en, self.rng
        draws = [
            ("CN_MOBILE_PHONE", self._mobile, ["我的手机{}，有事找我", "电话：{}", '{"phone": "{}"}', "请拨打{}咨询"]),
            ("CN_LANDLINE", lambda: f"0{rng.choice(['10', '21', '755', '571', '28'])}-{rng.randint(2, 8)}{rng.randint(10**6, 10**7 - 1)}",
             ["座机{}转123", "办公室电话 {}。"]),
            ("CN_RESIDENT_ID", self._resident_id, ["身份证号{}已登记", "证件号码：{}", "ID {} 已核验"]),
            ("CREDIT_CARD", lambda: _luhn_complete(rng.choice(["4", "51", "62", "35", "37"]), rng.choice([16, 16, 19, 15]), rng),
             ["银行卡号{}请核对", "card {} was charged", "卡号：{}"]),
            ("CN_PASSPORT", lambda: rng.choice("EG") + "".join(rng.choice(string.digits) for _ in range(8)),
             ["护照号码{}，有效期十年", "我的护照号是{}"]),
            ("CN_LICENSE_PLATE", self._plate, ["车牌{}的车主请挪车", "违章车辆：{}"]),
            ("CN_ADDRESS", self._cn_address, ["我住在{}，欢迎来玩", "收货地址：{}", "请寄到{}"]),
            ("PERSON", zh.name, ["我叫{}，今年三十岁", "联系人：{}", "请把报告交给{}老师", "客户{}投诉了物流"]),
            ("PERSON", en.name, ["My name is {}.", "Dear {},", "Contact: {} for details"]),
            ("ADDRESS", lambda: f"{rng.randint(1, 9999)} {en.last_name()} {rng.choice(['Street', 'Avenue', 'Road', 'Lane', 'Drive', 'Blvd'])}",
             ["I live at {} now.", "Ship it to {}, please."]),
            ("EMAIL_ADDRESS", lambda: rng.choice([zh, en]).email(), ["邮箱{}谢谢", "email me at {}", '"email":"{}"']),
            ("PHONE_NUMBER", en.phone_number, ["Call me at {} tomorrow.", "Phone: {}"]),
            ("IBAN_CODE", en.iban, ["IBAN {} for the wire", "汇款账户{}"]),
            ("IP_ADDRESS", lambda: rng.choice([en.ipv4_public(), en.ipv6()]), ["服务器{}宕机了", "login from {} failed"]),
            ("URL_CREDENTIALS", lambda: f"https://{en.user_name()}:{en.password(10, special_chars=False)}@{en.domain_name()}",
             ["连接{}/api 失败", "clone {}/repo.git"]),
            *[(e, lambda e=e: self._secret(e), ["配置里有{}，别外传", "export TOKEN={}"])
              for e in ("AWS_ACCESS_KEY", "GITHUB_TOKEN", "API_KEY", "JWT", "PRIVATE_KEY")],
            ("PASSWORD", lambda: self._secret("PASSWORD"), ["password={}", "数据库密码：{}，请保管"]),
        ]  # fmt: skip
        out = []
        for entity, make, templates in draws:
            for template in templates:
                out.append(_fill(template, make(), entity, not template.isascii() or entity.startswith("CN_")))
        return out

    def negatives(self) -> list[Example]:
        """Near misses that must not be reported."""
        rng = self.rng
        body = self.zh.ssn()[:17]
        wrong_check = body + next(c for c in "0123456789X" if c != cn_resident_id_check_digit(body))
        card = _luhn_complete("4", 16, rng)
        bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)
        texts = [
            f"订单号{rng.randint(10**13, 10**16)}已发货",
            f"身份证{wrong_check}校验失败",
            f"卡号{bad_card}无效",
            f"版本 {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)} 已发布",
            f"时间戳{rng.randint(1_600_000_000, 1_800_000_000)}",
            f"编号12{rng.randint(100000000, 999999999)}",
            f"价格{rng.randint(1, 9999)}.{rng.randint(10, 99)}元，库存{rng.randint(1, 500)}件",
            f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}的会议纪要",
            "谢谢你，张开双臂欢迎文明城市的建设。",
            "The answer is Paris. I am happy to help with Street Fighter.",
            "高中地理：长江流经哪些省份？黄河流域有多长？",
            f"计算 {rng.randint(10, 999)} × {rng.randint(10, 999)} = ?",
        ]
        return [Example(t, [], not t.isascii()) for t in texts]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(examples: list[Example], predict, typed: bool) -> dict[str, Counter]:
    """tp/fp/fn per entity (typed) or under 'ANY' (type-agnostic)."""
    counts: dict[str, Counter] = {}
    for ex in examples:
        preds = predict(ex.text)
        for s, e, entity in ex.spans:
            key = entity if typed else "ANY"
            hit = any(_overlaps((s, e), (ps, pe)) and (pt == entity or not typed) for ps, pe, pt in preds)
            counts.setdefault(key, Counter())["tp" if hit else "fn"] += 1
        for ps, pe, pt in preds:
            if not any(_overlaps((ps, pe), (s, e)) and (pt == entity or not typed) for s, e, entity in ex.spans):
                counts.setdefault(pt if typed else "ANY", Counter())["fp"] += 1
    return counts


def prf(c: Counter) -> tuple[float, float, float]:
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def presidio_default() -> AnalyzerEngine:
    """Presidio's predefined recognizers, as a user gets them without a spaCy model."""
    # Its email recognizer validates domains with tldextract, which would fetch the suffix list.
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers()
    registry.remove_recognizer("SpacyRecognizer")  # its NER needs the spaCy model that cannot be downloaded
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "noop"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", type=int, default=2000, help="labelled texts for precision/recall (approx.)")
    ap.add_argument("--speed", type=int, default=10000, help="records timed for throughput")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show-errors", type=int, default=0, metavar="N", help="print up to N misses and false hits")
    args = ap.parse_args()

    gen = LabelledSet(args.seed)
    examples: list[Example] = []
    while len(examples) < args.quality:
        examples += gen.positives() + gen.negatives()
    ours = lambda t: [(h.start, h.end, h.entity_type) for h in find_pii(t, PII_ENTITIES, 0.5)]  # noqa: E731
    peer_engine = presidio_default()
    peer = lambda t: [(h.start, h.end, h.entity_type) for h in peer_engine.analyze(text=t, language="en")]  # noqa: E731

    n_spans = sum(len(e.spans) for e in examples)
    print(f"labelled set: {len(examples)} texts, {n_spans} PII spans, {sum(not e.spans for e in examples)} near misses")
    per_entity = score(examples, ours, typed=True)
    total = sum(per_entity.values(), Counter())
    print(f"\n{'entity':<18}{'P':>7}{'R':>7}{'F1':>7}{'tp':>6}{'fp':>6}{'fn':>6}")
    for entity in sorted(per_entity):
        p, r, f = prf(per_entity[entity])
        c = per_entity[entity]
        print(f"{entity:<18}{p:7.3f}{r:7.3f}{f:7.3f}{c['tp']:6d}{c['fp']:6d}{c['fn']:6d}")
    for ex in [e for e in examples if args.show_errors][: args.quality]:
        found = ours(ex.text)
        gold = {(s, e, t) for s, e, t in ex.spans}
        missed = [g for g in gold if not any(_overlaps(g[:2], p[:2]) and p[2] == g[2] for p in found)]
        extra = [p for p in found if not any(_overlaps(g[:2], p[:2]) and p[2] == g[2] for g in gold)]
        if (missed or extra) and args.show_errors > 0:
            args.show_errors -= 1
            print(
                "  MISS" if missed else "  FALSE",
                [ex.text[s:e] + "/" + t for s, e, t in missed + extra],
                "in",
                repr(ex.text),
            )
    p, r, f = prf(total)
    print(f"{'OVERALL':<18}{p:7.3f}{r:7.3f}{f:7.3f}{total['tp']:6d}{total['fp']:6d}{total['fn']:6d}")
    for name, subset in (
        ("Chinese", [e for e in examples if e.chinese]),
        ("English", [e for e in examples if not e.chinese]),
    ):
        p, r, f = prf(sum(score(subset, ours, typed=True).values(), Counter()))
        pp, pr, pf = prf(score(subset, peer, typed=False).get("ANY", Counter()))
        print(
            f"{name:<8} ours P {p:.3f} R {r:.3f} F1 {f:.3f} | Presidio default (any type) P {pp:.3f} R {pr:.3f} F1 {pf:.3f}"
        )
    print("targets: overall recall >= 0.98 and precision >= 0.95")

    speed_set = [e.text for e in examples] * (args.speed // len(examples) + 1)
    speed_set = speed_set[: args.speed]
    timings = {}
    for name, fn in (("ours", ours), ("presidio-default", peer)):
        fn(speed_set[0])  # warm caches (jieba dictionary, compiled patterns)
        t0 = time.perf_counter()
        for text in speed_set:
            fn(text)
        timings[name] = len(speed_set) / (time.perf_counter() - t0)
    print(f"\nthroughput on {len(speed_set)} records (1 process): ours {timings['ours']:.0f} rec/s, "
          f"Presidio default {timings['presidio-default']:.0f} rec/s, ratio {timings['ours'] / timings['presidio-default']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
