"""The blind review packet: test prompts stratified over labels/tasks, three answers shuffled per item as A/B/C.

What raters see (`packet.jsonl`, the CSV/XLSX sheet, the Label Studio tasks) holds the prompt and the three
lettered answers only. The key that maps letters to arms is written to `<work_dir>/secrets/review_keys/`, away
from everything that is handed out. Prompts and answers are re-scanned for PII before they leave the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import PII_ENTITIES, PipelineConfig
from finetune.data.pii import find_pii, replace_with_placeholders
from finetune.data.records import response_text, write_json, write_jsonl
from finetune.eval.predictions import ARMS, read_predictions
from finetune.eval.report import prompt_of
from finetune.eval.task_metrics import normalise_label
from finetune.review.criteria import LETTERS
from finetune.review.label_config import PROMPT_FIELD, answer_field

PACKET_FILE = "packet.jsonl"  # what raters see
META_FILE = "packet.json"  # counts and provenance; no arm names either
LATEST = "LATEST"
RUNS = "runs"  # run id -> packet id, so `finetune review export RUN` finds a run's packet
ROLE_NAMES = {"system": "系统 / system", "user": "用户 / user", "assistant": "助手 / assistant"}


class ReviewError(ValueError):
    """A packet, sheet or annotation source is missing or malformed."""


@dataclass(frozen=True)
class PacketItem:
    """One blinded item as raters see it."""

    item_id: str
    prompt: str
    answers: dict[str, str]  # letter -> answer text

    def task_data(self) -> dict[str, str]:
        """The flat fields of one rater-visible row (the packet line, a Label Studio task's data)."""
        return {"item": self.item_id, PROMPT_FIELD: self.prompt} | {
            answer_field(letter): self.answers[letter] for letter in LETTERS
        }


@dataclass(frozen=True)
class Packet:
    """A written packet: where it is, what it holds, and where its (private) key is."""

    packet_id: str
    dir: str
    key_file: str
    n_items: int
    strata: dict[str, int] = field(default_factory=dict)
    pii_redacted: dict[str, int] = field(default_factory=dict)
    evaluation_dir: str = ""

    def items(self) -> list[PacketItem]:
        rows = [json.loads(line) for line in (Path(self.dir) / PACKET_FILE).read_text(encoding="utf-8").splitlines()]
        return [
            PacketItem(r["item"], r[PROMPT_FIELD], {letter: r[answer_field(letter)] for letter in LETTERS})
            for r in rows
        ]

    def key(self) -> dict[str, dict[str, str]]:
        """item id -> {letter: arm}; read only when unblinding."""
        return {item: entry["letters"] for item, entry in json.loads(Path(self.key_file).read_text())["items"].items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def review_root(cfg: PipelineConfig) -> Path:
    return cfg.work_dir / "review"


def key_path(cfg: PipelineConfig, packet_id: str) -> Path:
    return cfg.work_dir / "secrets" / "review_keys" / f"{packet_id}.json"


def render_conversation(messages: list[dict[str, str]]) -> str:
    """The prompt as a rater reads it: the question alone, or each earlier turn with its role."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def stratum_of(record: dict[str, Any], labels: set[str]) -> str:
    """A class label when the reference is one, else the task's source file and language."""
    label = normalise_label(response_text(record))
    if label in labels:
        return f"label:{label}"
    text = " ".join(m["content"] for m in prompt_of(record))
    lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
    return f"task:{Path(record.get('source', {}).get('file', '')).name}:{lang}"


def stratified_sample(strata: list[str], n: int, rng: random.Random) -> list[int]:
    """Indices of `n` rows: one per stratum first (largest strata first), then each next slot to the stratum
    furthest below its proportional share. Hand-written because library splitters (scikit-learn's
    train_test_split) refuse strata with a single member, which small labelled sets always have."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    for members in groups.values():
        rng.shuffle(members)
    if n >= len(strata):
        return sorted(i for members in groups.values() for i in members)
    order = sorted(groups, key=lambda s: (-len(groups[s]), s))
    taken = {s: 0 for s in order}
    for s in order[:n]:
        taken[s] = 1
    while sum(taken.values()) < n:
        open_strata = [s for s in order if taken[s] < len(groups[s])]
        best = max(open_strata, key=lambda s: (n * len(groups[s]) / len(strata) - taken[s], -order.index(s)))
        taken[best] += 1
    return sorted(i for s in order for i in groups[s][: taken[s]])


def _redacted(text: str, found: Counter[str], threshold: float) -> str:
    # Every shipped entity, not only the configured ones: the packet leaves the pipeline.
    hits = find_pii(text, PII_ENTITIES, threshold)
    found.update(h.entity_type for h in hits)
    return replace_with_placeholders(text, hits)


def build_packet(cfg: PipelineConfig, predictions_file: Path, labels: list[str], run_id: str = "") -> Packet:
    """Select, blind, PII-scan and write the packet for one evaluation; returns where it went.

    The packet id hashes what raters see, so re-running an identical evaluation rebuilds the same packet and
    finds the judgements already collected for it.

    Raises:
        ReviewError: the predictions file is missing or empty.
    """
    if not predictions_file.is_file():
        raise ReviewError(f"no per-example predictions at {predictions_file}; re-run the evaluation_report stage")
    rows = read_predictions(predictions_file)
    if not rows:
        raise ReviewError(f"{predictions_file} holds no predictions (the test split is empty)")
    strata = [stratum_of(r["record"], set(labels)) for r in rows]
    rng = random.Random(cfg.review.seed)
    chosen = stratified_sample(strata, cfg.review.items, rng)
    rng.shuffle(chosen)  # raters see the strata interleaved
    found: Counter[str] = Counter()
    items, key = [], {}
    for n, index in enumerate(chosen, start=1):
        row, item_id = rows[index], f"q{n:03d}"
        arms = list(ARMS)
        random.Random(f"{cfg.review.seed}:{row['record']['id']}").shuffle(arms)
        letters = dict(zip(LETTERS, arms, strict=True))
        threshold = cfg.pii.score_threshold
        answers = {letter: _redacted(row["predictions"][arm], found, threshold) for letter, arm in letters.items()}
        items.append(
            PacketItem(item_id, _redacted(render_conversation(prompt_of(row["record"])), found, threshold), answers)
        )
        key[item_id] = {"letters": letters, "record_id": row["record"]["id"], "stratum": strata[index]}
    packet = _write_packet(cfg, items, key, dict(Counter(strata[i] for i in chosen)), dict(found), predictions_file)
    if run_id:
        (review_root(cfg) / RUNS).mkdir(exist_ok=True)
        (review_root(cfg) / RUNS / run_id).write_text(packet.packet_id + "\n", encoding="utf-8")
    return packet


def _write_packet(cfg, items: list[PacketItem], key: dict, strata: dict, found: dict, predictions_file: Path) -> Packet:
    lines = [json.dumps(item.task_data(), ensure_ascii=False) for item in items]
    packet_id = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]
    folder, secret = review_root(cfg) / packet_id, key_path(cfg, packet_id)
    folder.mkdir(parents=True, exist_ok=True)
    secret.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(secret.parent, 0o700)
    write_jsonl(folder / PACKET_FILE, [item.task_data() for item in items])
    write_json(secret, {"packet_id": packet_id, "seed": cfg.review.seed, "items": key})
    os.chmod(secret, 0o600)
    packet = Packet(packet_id, str(folder), str(secret), len(items), strata, found, str(predictions_file.parent))
    write_json(folder / META_FILE, {k: v for k, v in packet.to_dict().items() if k != "key_file"})
    (review_root(cfg) / LATEST).write_text(packet_id + "\n", encoding="utf-8")
    return packet


def load_packet(cfg: PipelineConfig, ref: str) -> Packet:
    """Resolve 'latest', a packet id, a packet folder or the Dagster run id that built the packet.

    Raises:
        ReviewError: nothing matches; the message says where it looked and how to make one.
    """
    root = review_root(cfg)
    if ref == "latest":
        if not (root / LATEST).is_file():
            raise ReviewError(f"no review packet yet under {root}; run `finetune run` (asset review_packet) first")
        ref = (root / LATEST).read_text().strip()
    if (root / RUNS / ref).is_file():
        ref = (root / RUNS / ref).read_text().strip()
    for folder in (Path(ref), root / ref):
        if (folder / META_FILE).is_file():
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            return Packet(**meta, key_file=str(key_path(cfg, meta["packet_id"])))
    raise ReviewError(f"review packet {ref!r} not found (looked for {ref}/{META_FILE} and {root / ref}/{META_FILE})")
