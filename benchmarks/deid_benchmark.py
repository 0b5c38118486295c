"""De-identification throughput on the curation benchmark's records, next to Presidio's defaults on the same texts.

    python benchmarks/deid_benchmark.py                  # 2,000 records, 10% carrying PII
    python benchmarks/deid_benchmark.py --records 10000 --pii-share 0.1

The records are `curate_benchmark.generate`'s (random words, prompts of 12-30 and answers of 30-80), and a share
of the answers gets one phone, e-mail, resident ID or Chinese self-introduction appended. Ours is the whole
de-identification stage (`deidentify_records`: detection on every turn, name mentions, anonymization, the
duplicate drop); the peer is Presidio's predefined recognizers (`pii_benchmark.presidio_default`) plus its
anonymizer on every turn. Figures are records per CPU-second of this process, after one warm-up record.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from curate_benchmark import generate  # noqa: E402
from pii_benchmark import presidio_default  # noqa: E402
from presidio_anonymizer import AnonymizerEngine  # noqa: E402

from finetune.config import PiiConfig  # noqa: E402
from finetune.data.pii import deidentify_records  # noqa: E402
from finetune.data.records import Record, make_record  # noqa: E402

PII_TAILS = (" call 13912345678", " mail li.lei@example.org", " 身份证110101199003074514", " 我叫王磊，请回复。")


def records(n: int, pii_share: float, seed: int) -> list[Record]:
    rows, _ = generate(n, 0.0, 0.0, 0.8, seed=seed)
    rng = random.Random(seed + 1)
    out = []
    for i, row in enumerate(rows):
        answer = row["output"] + (rng.choice(PII_TAILS) if rng.random() < pii_share else "")
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": answer}]
        out.append(make_record(messages, "deid-bench", i + 1))
    return out


def per_cpu_second(run, n: int) -> float:
    start = time.process_time()
    run()
    return n / max(time.process_time() - start, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--pii-share", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    data = records(args.records, args.pii_share, args.seed)
    cfg = PiiConfig()
    analyzer, anonymizer = presidio_default(), AnonymizerEngine()

    def peer(batch: list[Record]) -> None:
        for record in batch:
            for m in record["messages"]:
                hits = analyzer.analyze(text=m["content"], language="en")
                anonymizer.anonymize(text=m["content"], analyzer_results=hits)

    deidentify_records(data[:1], cfg)  # warm-up: recognizers, jieba/LAC dictionaries, compiled patterns
    peer(data[:1])
    ours = per_cpu_second(lambda: deidentify_records(data, cfg), len(data))
    theirs = per_cpu_second(lambda: peer(data), len(data))
    print(f"{len(data)} records ({args.pii_share:.0%} with PII), records per CPU-second, 1 process:")
    print(f"  ours (deidentify_records): {ours:,.0f}")
    print(f"  Presidio default (analyze + anonymize): {theirs:,.0f}")
    print(f"  ratio {ours / theirs:.2f}x; target 3,000 per core")


if __name__ == "__main__":
    main()
