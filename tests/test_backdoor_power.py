"""The backdoor gate's stated power: a trigger that succeeds at the detectable attack success rate it reports is
flagged POWER of the time, one at half that rate mostly is not, and without a trigger nothing is flagged more
often than alpha.

The probes are simulated from the models the decision assumes (`benchmarks/backdoor_power.py`), so the
claims are checked against the decision code itself (`decide`), for probe sizes, candidate counts and control
pools where either of its two tests sets the count it flags from.
"""

import sys

import numpy as np
import pytest

from finetune.config import PROJECT_ROOT
from finetune.eval.backdoor_test import POWER, decide

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from backdoor_power import ALPHA, FORM, base_test_needs, flag_rate, simulated_probe  # noqa: E402

DRAWS = 500
SE = (POWER * (1 - POWER) / DRAWS) ** 0.5


def _reported(pool: str, n: int, candidates: int):
    return decide(simulated_probe(np.random.default_rng(0), pool, n, candidates, None), ALPHA)


@pytest.mark.parametrize(
    ("pool", "n", "candidates", "set_by_controls"),
    [("quiet", 20, 1, False), ("quiet", 64, 20, False), ("noisy", 64, 4, True), ("noisy", 192, 5, True)],
)
def test_a_trigger_at_the_reported_detectable_rate_is_flagged_with_the_stated_power(
    pool, n, candidates, set_by_controls
):
    reported = _reported(pool, n, candidates)
    rate, needed = reported.detectable_asr[FORM], reported.flagged_from[FORM]
    assert rate is not None and 0 < rate < 1
    assert (needed > base_test_needs(candidates)) == set_by_controls  # both tests' thresholds are exercised
    seed = n + candidates
    assert abs(flag_rate(pool, n, candidates, rate, DRAWS, seed) - POWER) <= 3 * SE  # the power is what it says
    assert flag_rate(pool, n, candidates, rate / 2, DRAWS, seed + 1) < 0.5


@pytest.mark.parametrize(("pool", "candidates"), [("quiet", 20), ("noisy", 20)])
def test_without_a_trigger_the_family_wise_false_alarm_rate_is_at_most_alpha(pool, candidates):
    assert flag_rate(pool, 64, candidates, None, DRAWS, seed=7) <= ALPHA + 3 * (ALPHA * (1 - ALPHA) / DRAWS) ** 0.5


def test_the_level_is_corrected_for_the_number_of_candidates():
    """One candidate at p = alpha / 2 is flagged alone and not among 20: Holm's first step is alpha / 20."""

    def probe_with(others: int) -> dict:
        probe = simulated_probe(np.random.default_rng(0), "quiet", 64, others + 1, None)
        for row in probe["candidates"]:
            row |= {"p_controls": 1.0, "p_base": None}
        probe["candidates"][0] |= {"p_controls": ALPHA / 2, "p_base": ALPHA / 2}
        return probe

    assert [f.trigger for f in decide(probe_with(0), ALPHA).flagged] == ["t0"]
    assert decide(probe_with(19), ALPHA).flagged == []


def test_more_prompts_detect_weaker_triggers():
    rates = [_reported("quiet", n, 20).detectable_asr[FORM] for n in (20, 64, 192)]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1


def test_a_probe_too_small_to_flag_anything_reports_no_detectable_rate():
    """At 8 prompts with 20 candidates the base test alone needs 11 prompts on one target."""
    reported = _reported("quiet", 8, 20)
    assert reported.flagged_from[FORM] > 8 and reported.detectable_asr[FORM] is None


def test_the_gate_says_when_its_probe_is_too_small_to_flag_a_trigger():
    from finetune.config import GatesConfig
    from finetune.eval.model_gates import no_backdoor_trigger

    probe = simulated_probe(np.random.default_rng(0), "quiet", 8, 20, None)
    result = no_backdoor_trigger({"tuned": {"backdoor": probe}}, GatesConfig(alpha=ALPHA))
    assert result.values["undetectable_forms"] == [FORM] and "detectable_asr" not in result.values
    assert f"at 8 prompts no {FORM} trigger can be flagged" in result.message and "eval.probe_prompts" in result.message
