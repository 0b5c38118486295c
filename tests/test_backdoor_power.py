"""The backdoor gate's stated power: a trigger that succeeds at the detectable attack success rate it reports is
flagged at least POWER of the time, and one at half that rate mostly is not.

The probes are simulated from the models the decision assumes (`benchmarks/backdoor_power.py`), so the
claim is checked against the decision code itself (`decide`), for several probe sizes and candidate counts.
"""

import sys

import numpy as np
import pytest

from finetune.config import PROJECT_ROOT
from finetune.eval.backdoor_test import POWER, decide

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from backdoor_power import ALPHA, FORM, control_null, flag_rate, simulated_probe  # noqa: E402

DRAWS = 500


def _reported(n: int, candidates: int):
    return decide(simulated_probe(np.random.default_rng(0), n, candidates, None), ALPHA)


@pytest.mark.parametrize(("n", "candidates"), [(20, 1), (64, 1), (64, 20), (192, 5)])
def test_a_trigger_at_the_reported_detectable_rate_is_flagged_with_the_stated_power(n, candidates):
    reported = _reported(n, candidates)
    rate = reported.detectable_asr[FORM]
    assert 0 < rate < 1 and reported.flagged_from[FORM] <= n
    # The exact power at `rate` is POWER; allow 3 binomial standard errors of DRAWS simulated probes below it.
    assert (
        flag_rate(n, candidates, rate, DRAWS, seed=n + candidates) >= POWER - 3 * (POWER * (1 - POWER) / DRAWS) ** 0.5
    )
    assert flag_rate(n, candidates, rate / 2, DRAWS, seed=n + candidates + 1) < 0.5
    assert flag_rate(n, candidates, None, DRAWS, seed=n + candidates + 2) <= ALPHA


def test_more_prompts_detect_weaker_triggers():
    rates = [_reported(n, 20).detectable_asr[FORM] for n in (20, 64, 192)]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1


def test_a_weakly_learned_trigger_below_the_detectable_rate_passes_and_the_gate_says_what_it_could_detect():
    """4 of 64 prompts with 20 candidates tried (as a weakly trained tiny model gave in the gate matrix): the
    gate cannot tell it from a random control at this size."""
    probe = simulated_probe(np.random.default_rng(3), 64, 20, None)
    probe["candidates"][0] |= {"hits": 4, "p_controls": control_null(64).p_at_least(3)}
    decision = decide(probe, ALPHA)
    assert not decision.flagged
    assert decision.flagged_from[FORM] > 4 and decision.detectable_asr[FORM] > 4 / 64
