"""Curation throughput, peak memory and dedup precision/recall at 10k, 100k and 1M records.

Generates N synthetic Chinese/English instruction records with a controlled share of exact
duplicates (case/whitespace/punctuation variants of an earlier record) and near duplicates
(an earlier record with one small edit in prompt and response, kept only if its true shingle
Jaccard with the original is >= the threshold on both, so the ground truth is well defined).
Each system runs in a fresh process so peak RSS is its own:

- ours: `finetune.data.curate.curate` = ingest + clean (every rule but the token rules) + dedup
- ours-dedup: ingest + `Deduplicator` only (like for like with the peer)
- peer: plain datasketch usage (MinHash.update per shingle with its default SHA-1, MinHashLSH,
  sha256 set for exact duplicates) over the same shingles, on the same JSONL

    python benchmarks/curate_benchmark.py --sizes 10000,100000,1000000 --peer-max 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZH = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质")  # fmt: skip
EN = ("data model train quality safety review answer question system user response language text value "
      "table river mountain city music science history market energy water garden window paper school").split()  # fmt: skip


def _words(rng: random.Random, n: int) -> str:
    if rng.random() < 0.5:
        return "".join(rng.choices(ZH, k=n * 2)) + "。"
    return " ".join(rng.choices(EN, k=n)).capitalize() + "."


def delete_one_char(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1 :]  # delete one character


def generate(n: int, exact_share: float, near_share: float, threshold: float, seed: int = 0):
    """Records, and for each duplicate the line of the original it duplicates."""
    from finetune.data.minhash import shingle_hashes

    def jaccard(a: str, b: str) -> float:
        x, y = set(shingle_hashes(a, 5).tolist()), set(shingle_hashes(b, 5).tolist())
        return len(x & y) / max(len(x | y), 1)

    rng = random.Random(seed)
    rows, truth = [], {}
    while len(rows) < n:
        line = len(rows) + 1
        roll = rng.random()
        if rows and roll < exact_share:
            j = rng.randrange(len(rows))
            orig = rows[j]
            rows.append({"instruction": "  " + orig["instruction"].upper() + " ", "output": orig["output"] + "!"})
            truth[line] = truth.get(j + 1, j + 1)
        elif rows and roll < exact_share + near_share:
            j = rng.randrange(len(rows))
            orig = rows[j]
            new = {
                "instruction": delete_one_char(rng, orig["instruction"]),
                "output": delete_one_char(rng, orig["output"]),
            }
            if (
                min(jaccard(orig["instruction"], new["instruction"]), jaccard(orig["output"], new["output"]))
                < threshold
            ):
                continue  # not a near duplicate by the definition; draw again
            rows.append(new)
            truth[line] = truth.get(j + 1, j + 1)
        else:
            rows.append({"instruction": _words(rng, rng.randint(12, 30)), "output": _words(rng, rng.randint(30, 80))})
    return rows, truth


def peer_dedup(path: Path, threshold: float, num_perm: int) -> set[int]:
    """Plain datasketch usage: the lines it drops."""
    from datasketch import MinHash, MinHashLSH

    from finetune.data.text_quality import canonical

    lsh, seen, dropped = MinHashLSH(threshold=threshold, num_perm=num_perm), set(), set()
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            row = json.loads(line)
            text = canonical(row["instruction"] + row["output"])
            digest = hashlib.sha256(text.encode()).digest()
            if digest in seen:
                dropped.add(line_no)
                continue
            m = MinHash(num_perm=num_perm)
            for i in range(max(1, len(text) - 4)):
                m.update(text[i : i + 5].encode("utf-8"))
            if lsh.query(m):
                dropped.add(line_no)
                continue
            seen.add(digest)
            lsh.insert(line_no, m)
    return dropped


def run_child(system: str, data: Path, threshold: float) -> dict:
    from finetune.config import CleanConfig, DedupConfig
    from finetune.process_memory import peak_rss_mib

    cfg = DedupConfig(threshold=threshold)
    started = time.perf_counter()
    if system == "peer":
        dropped = peer_dedup(data, threshold, cfg.num_perm)
    else:
        from finetune.data.curate import curate
        from finetune.data.dedup import Deduplicator
        from finetune.data.ingest import RawReader
        from finetune.data.stream import KEPT, iter_jsonl

        out = Path(tempfile.mkdtemp())
        if system == "ours":
            report = curate([data], CleanConfig(), cfg, out)
            rows = iter_jsonl(out / "dropped.jsonl")
            dropped = {d["record"]["source"]["line"] for d in rows if d["stage"] == "deduplicated_records"}
            cleaned_away = report.stages[1].dropped
        else:
            records = (item for kind, item in RawReader([data]) if kind == KEPT)
            dropped = {d["record"]["source"]["line"] for kind, d in Deduplicator(cfg).stream(records) if kind != KEPT}
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "system": system,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # all threads: rec per CPU-second is the per-core rate
        "peak_rss_mb": peak_rss_mib(),  # VmHWM: ru_maxrss would inherit this parent's size at fork
    }
    result["dropped"] = sorted(dropped)
    if system == "ours":
        result["dropped_by_cleaning"] = cleaned_away
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--peer-max", type=int, default=100_000, help="largest N the (slower) peer runs on")
    parser.add_argument("--exact", type=float, default=0.1)
    parser.add_argument("--near", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args.child[0], Path(args.child[1]), args.threshold)))
        return
    print(
        f"{'N':>9} {'system':11} {'rec/s':>8} {'rec/cpu-s':>9} {'peak RSS MB':>12} {'dup P':>6} {'dup R':>6} {'cleaned':>8}"
    )
    for n in [int(x) for x in args.sizes.split(",")]:
        rows, truth = generate(n, args.exact, args.near, args.threshold)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "records.jsonl"
            data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            rates = {}
            for system in ("ours", "ours-dedup", "peer"):
                if system == "peer" and n > args.peer_max:
                    continue
                cmd = [sys.executable, __file__, "--child", system, str(data), "--threshold", str(args.threshold)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{n:>9} {system:11} FAILED\n{proc.stderr[-2000:]}")
                    continue
                r = json.loads(line[7:])
                dropped = set(r["dropped"])
                tp = len(dropped & set(truth))
                precision, recall = tp / max(len(dropped), 1), tp / max(len(truth), 1)
                rates[system] = n / r["seconds"]
                per_cpu = n / r["cpu_seconds"]
                print(f"{n:>9} {system:11} {rates[system]:>8,.0f} {per_cpu:>9,.0f} {r['peak_rss_mb']:>12,.0f} {precision:>6.3f} "
                      f"{recall:>6.3f} {r.get('dropped_by_cleaning', ''):>8}", flush=True)  # fmt: skip
            if "peer" in rates:
                print(f"{n:>9} dedup speed ours/peer: {rates['ours-dedup'] / rates['peer']:.2f}x", flush=True)
    print(f"\n(duplicates planted: {args.exact:.0%} exact, {args.near:.0%} near; one core per process)")


if __name__ == "__main__":
    main()
