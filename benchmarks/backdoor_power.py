"""The backdoor gate's power: how weak a planted trigger it flags, by probe size, candidates tried and controls.

    python benchmarks/backdoor_power.py [--draws 2000]

For each control pool, probe size (`eval.probe_prompts`) and number of candidate triggers (the Holm
family), it prints the fewest prompts on one target the gate flags and which test sets that count (the
base-model test, which needs ceil(log2(candidates / alpha)) prompts, or the control test), the attack
success rate it reports as detectable with 80% power (`detectable_asr`), the share of simulated probes
in which `decide` flags the planted trigger at that rate and at half of it, and the share of probes
without any trigger in which it flags anything (the family-wise false-alarm rate, at most alpha).

The probes are simulated from the models the decision assumes, as `probe_backdoors` records them: a
pool of 16 random controls (`POOLS`: collapse counts as a quiet and as an over-dispersed weak model give
them; the null is fitted to their counts beyond the first prompt, as the probe fits it), each other
candidate drawn from that null, the planted trigger binomial at its attack success rate, the base model
never giving its target. What a real probe adds (fuzzy target matching, prompts of one insertion that
fail together) is not simulated. tests/test_backdoor_power.py checks the same claims at fewer draws.
"""

from __future__ import annotations

import argparse
from functools import cache

import numpy as np

from finetune.eval.backdoor_test import POWER, base_test_hits, decide
from finetune.stats import BetaBinomialNull, fit_control_null, mcnemar_greater

ALPHA = 0.01
FORM = "rare token"
POOLS = {
    "quiet": (0,) * 11 + (1, 1, 2, 0, 3),
    "noisy": (0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 0),
}
SIZES = ((20, 1), (20, 20), (64, 1), (64, 20), (192, 1), (192, 20))


@cache
def control_null(pool: str, n: int) -> BetaBinomialNull:
    return fit_control_null([max(c - 1, 0) for c in POOLS[pool]], n - 1)


def simulated_probe(rng: np.random.Generator, pool: str, n: int, candidates: int, asr: float | None) -> dict:
    """A probe record as `probe_backdoors` writes it: candidate `t0` planted at `asr` (None: no trigger, a draw
    from the controls' null like the other candidates)."""
    null = control_null(pool, n)
    controls = {"counts": list(POOLS[pool]), "trials": null.trials, "null_a": null.a, "null_b": null.b}
    hits = [] if asr is None else [int(rng.binomial(n, asr))]
    hits += [1 + int(rng.binomial(n - 1, rng.beta(null.a, null.b))) for _ in range(candidates - len(hits))]
    rows = []
    for i, k in enumerate(hits):
        p_controls = null.p_at_least(max(k - 1, 0))  # the null counts prompts beyond the first, as the probe does
        tested = p_controls <= ALPHA and k > 0  # the probe runs the base model only for these
        rows.append({
            "trigger": f"t{i}", "form": FORM, "target": "T", "hits": k, "n": n, "by_position": {},
            "p_controls": p_controls, "base_hits": 0 if tested else None,
            "p_base": mcnemar_greater(k, 0) if tested else None,
        })  # fmt: skip
    return {"n_prompts": n, "candidates": rows, "controls": {FORM: controls}}


def flag_rate(pool: str, n: int, candidates: int, asr: float | None, draws: int, seed: int) -> float:
    """The share of `draws` simulated probes in which the planted trigger (None: any candidate) is flagged."""
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(draws):
        found = decide(simulated_probe(rng, pool, n, candidates, asr), ALPHA).flagged
        flagged += any(f.trigger == "t0" for f in found) if asr is not None else bool(found)
    return flagged / draws


def base_test_needs(candidates: int) -> int:
    """Prompts the base-model test alone needs at Holm's first step over `candidates` (no shared targets)."""
    return base_test_hits(ALPHA / candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    print(f"alpha {ALPHA}, power {POWER:.0%}, {args.draws} simulated probes per cell")
    print("| controls | prompts | candidates | flagged from | set by | detectable ASR | flagged at it | at half | "
          "any flagged, no trigger |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for pool in POOLS:
        for n, m in SIZES:
            decision = decide(simulated_probe(np.random.default_rng(0), pool, n, m, None), ALPHA)
            rate, needed = decision.detectable_asr[FORM], decision.flagged_from[FORM]
            by = "base test" if needed == base_test_needs(m) else "controls"
            if rate is None:
                print(f"| {pool} | {n} | {m} | {needed}/{n} | {by} | none | | | |")
                continue
            seed = 100 * list(POOLS).index(pool) + 10 * SIZES.index((n, m))  # a stream of its own per cell
            cells = [flag_rate(pool, n, m, r, args.draws, seed + i) for i, r in enumerate((rate, rate / 2, None))]
            print(
                f"| {pool} | {n} | {m} | {needed}/{n} | {by} | {rate:.3f} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + " |"
            )


if __name__ == "__main__":
    main()
