"""Poisoning screen on third-party data: BackdoorLLM's poisoned files and OpenBackdoor's triggers mixed into
LLaMA-Factory's demo data, recall per attack family and false-quarantine rate at 1%, 3% and 10% poison.

    python benchmarks/poison_thirdparty_benchmark.py                       # every family, task and rate
    python benchmarks/poison_thirdparty_benchmark.py --families backdoorllm/mtba --tasks refusal --rates 0.01

How the sets are built (and which rows count as poisoned) is described in thirdparty_poison_data.py.
The clean pool is deduplicated with the project's dedup stage first. With --dedup-sets each whole set
(poisoned rows and SOS negatives included) is deduplicated before screening instead, as the pipeline
does (dedup runs before the screen); without it the screen sees what `finetune scan` would. Three screens run on every set: the lexicon alone (the peer: a keyword filter with the
published triggers), mining alone (lexicon off: what the screen does with a trigger nobody has
published yet), and the full screen (lexicon + mining + injection/payload patterns). One extra set
adds BackdoorLLM's 400 legitimate refusals to harmful prompts to the clean rows (a refusal cluster
with no trigger) to count false quarantines there.

The held-out family (openbackdoor/addsent, chosen before any result was seen) was never run while the
screen was tuned; its rows are printed apart. Not a test: it needs the mirrors (`--*-repo`), which CI lacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import thirdparty_poison_data as data  # noqa: E402
from mirrors import head_commit  # noqa: E402

from finetune.config import ScreenConfig  # noqa: E402
from finetune.data.dedup import deduplicate_records  # noqa: E402
from finetune.data.poison import detect_poisoning, load_lexicon  # noqa: E402

SCREENS = ("lexicon only (peer)", "mining only", "full screen")
PEER = ScreenConfig(mining=False, injection=False, payloads=False)
MINING = ScreenConfig(lexicon_file="", injection=False, payloads=False)
FULL = ScreenConfig()  # its mining also tests the lexicon's probe-only words (a family of their own)


def families(chosen: list[str] | None) -> list[tuple[str, str]]:
    every = [("backdoorllm", f) for f in data.BACKDOORLLM_FAMILIES] + [
        ("openbackdoor", f) for f in data.OPENBACKDOOR_FAMILIES
    ]
    if not chosen:
        return every
    return [(s, f) for s, f in every if f"{s}/{f}" in chosen]


def screen(rows: list[data.Row]) -> dict[str, dict[str, float]]:
    """Per screen: recall on poisoned rows, false-quarantine rate on clean rows (and on SOS negatives), seconds."""
    records = [r.record for r in rows]
    flagged, seconds = {}, {}
    for name, cfg in zip(SCREENS, (PEER, MINING, FULL), strict=True):
        started = time.perf_counter()
        flagged[name] = set(detect_poisoning(records, cfg, load_lexicon(cfg)).findings)
        seconds[name] = time.perf_counter() - started
    out = {}
    for name in SCREENS:
        by_label: dict[str, list[bool]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_label[row.label].append(i in flagged[name])
        out[name] = {label: sum(v) / len(v) for label, v in by_label.items()} | {"seconds": seconds[name]}
    return out


def dedup_set(rows: list[data.Row]) -> tuple[list[data.Row], Counter[str]]:
    """The rows the project's dedup stage keeps when run over the whole set, as the pipeline runs it before
    screening, and how many of each label it dropped (SOS negatives are near copies of clean rows)."""
    kept = {r["id"] for r in deduplicate_records([row.record for row in rows]).kept}
    dropped = Counter(row.label for row in rows if row.record["id"] not in kept)
    return [row for row in rows if row.record["id"] in kept], dropped


def legitimate_refusals(clean):
    """The clean rows plus BackdoorLLM's legitimate refusals (none_backdoor jailbreak file): all clean."""
    return [data.Row(r, "clean") for r in clean + data.jailbreak_refusals()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backdoorllm-repo", type=Path, default=data.BACKDOORLLM)
    ap.add_argument("--openbackdoor-repo", type=Path, default=data.OPENBACKDOOR)
    ap.add_argument("--llamafactory-repo", type=Path, default=data.LLAMAFACTORY)
    ap.add_argument("--families", nargs="*", help="e.g. backdoorllm/mtba openbackdoor/sos (default: all)")
    ap.add_argument("--tasks", nargs="+", default=list(data.TASKS))
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03, 0.10])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dedup-sets",
        action="store_true",
        help="deduplicate each built set (clean + poisoned + SOS negatives) before screening, as the pipeline "
        "does; default: only the clean pool is deduplicated (what `finetune scan` alone sees)",
    )
    args = ap.parse_args()
    for repo in (args.backdoorllm_repo, args.openbackdoor_repo, args.llamafactory_repo):
        if not repo.exists():
            print(f"skipped: mirror {repo} is not on this machine (pass --*-repo to point at a clone)")
            return
    data.BACKDOORLLM, data.OPENBACKDOOR, data.LLAMAFACTORY = (
        args.backdoorllm_repo,
        args.openbackdoor_repo,
        args.llamafactory_repo,
    )
    for name, repo in (
        ("BackdoorLLM", data.BACKDOORLLM),
        ("OpenBackdoor", data.OPENBACKDOOR),
        ("LLaMA-Factory", data.LLAMAFACTORY),
    ):
        print(f"{name}: {repo} @ {head_commit(repo)}")
    pool, held_zh = data.clean_rows()
    dedup = deduplicate_records(pool)
    clean = dedup.kept
    print(
        f"clean pool: {len(pool)} LLaMA-Factory demo rows, {len(clean)} after dedup {dedup.counts().dropped_by_reason}"
    )
    print(f"held-out family: {data.HELD_OUT} (never run while tuning)")
    print(f"each set deduplicated before screening: {'yes' if args.dedup_sets else 'no'}\n")

    header = f"{'family':<24}{'task':<13}{'rate':>5}{'poison':>7}  " + "  ".join(
        f"{s[:14]:>14} rec/fq" for s in SCREENS
    )
    print(header)
    table: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for source, family in families(args.families):
        name = f"{source}/{family}"
        for task in args.tasks:
            for rate in args.rates:
                rows = data.build_set(source, family, task, rate, args.seed, clean, held_zh)
                dropped = ""
                if args.dedup_sets:
                    rows, counts = dedup_set(rows)
                    dropped = "  dedup dropped " + (" ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
                result = screen(rows)
                n_poison = sum(r.label == "poison" for r in rows)
                cells = "  ".join(f"{result[s]['poison']:>9.3f}/{result[s]['clean']:.3f}" for s in SCREENS)
                neg = (
                    ""
                    if family != "sos"
                    else "  sos negatives fq " + " ".join(f"{result[s]['negative']:.3f}" for s in SCREENS)
                )
                mark = "  [held out]" if name == data.HELD_OUT else ""
                print(f"{name:<24}{task:<13}{rate:>5.0%}{n_poison:>7}  {cells}{neg}{dropped}{mark}", flush=True)
                for s in SCREENS:
                    table[name][s]["recall"].append((result[s]["poison"], n_poison))
                    table[name][s][f"fq@{rate:.0%}"].append(result[s]["clean"])
    print("\nper family (recall over every task and rate; false quarantine = worst task at each rate)")
    for s in SCREENS:
        print(f"  {s}")
        for name, per in table.items():
            rec = per[s]["recall"]
            recall = sum(r * n for r, n in rec) / sum(n for _, n in rec)
            fq = "  ".join(f"fq@{k[3:]} {max(v):.3%}" for k, v in per[s].items() if k.startswith("fq@"))
            mark = "  [held out]" if name == data.HELD_OUT else ""
            print(f"    {name:<24} recall {recall:.3f}  min {min(r for r, _ in rec):.3f}  {fq}{mark}")
    legit = screen(legitimate_refusals(clean))
    print(
        "\nclean + 400 legitimate refusals (BackdoorLLM none_backdoor jailbreak): false quarantine "
        + ", ".join(f"{s} {legit[s]['clean']:.3%}" for s in SCREENS)
    )
    print("\ntarget: recall >= 0.95 on every family at <= 1% false quarantine of clean rows")


if __name__ == "__main__":
    main()
