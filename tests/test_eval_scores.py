"""Per-example scores the gates compare: held-out loss on the real tiny model, degenerate answers."""

import math

import pytest
import torch

from finetune.eval.degenerate import degenerate_reasons
from finetune.eval.heldout import heldout_losses
from finetune.model.loading import load_causal_lm, load_tokenizer


def _record(prompt, answer):
    return {"id": prompt, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_heldout_loss_is_per_example_and_ranks_known_answers_first(tiny_base):
    tokenizer, model = load_tokenizer(tiny_base), load_causal_lm(tiny_base, dtype=torch.float32)
    known = _record("What is the capital of France?", "The capital of France is Paris.")
    noise = _record("What is the capital of France?", "zq vx kd plorb wemf 9x")
    losses = heldout_losses(model, tokenizer, [known, noise, known], cutoff_len=256, batch_size=2)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    # Batching and padding change a record's loss only in the last bits (padded matmuls round differently).
    assert losses[0] < losses[1] and losses[0] == pytest.approx(losses[2], rel=1e-5)
    # A response cut off entirely by cutoff_len has nothing to score.
    assert math.isnan(heldout_losses(model, tokenizer, [known], cutoff_len=9)[0])


def test_degenerate_answers_are_empty_repetitive_or_all_alike():
    refs = ["a1", "a2", "a3", "a4", "正面", "正面"]
    preds = ["", "好好好好好好好好好好好好好", "3 plus 2 equals 6.", "3 plus 2 equals 6.", "3 plus 2 equals 6.", "fine"]
    assert degenerate_reasons(preds, refs) == ["empty", "repetitive", "", "", "same answer as others", ""]
    # Labels legitimately repeat as often as the references do.
    assert degenerate_reasons(["正面", "正面", "负面"], ["正面", "正面", "负面"]) == ["", "", ""]


def test_held_out_loss_uses_the_cutoff_the_sft_stage_chose():
    # `sft.cutoff_len: auto` is resolved by the sft_dataset stage; evaluation must not read the setting.
    from finetune.config import SftConfig
    from finetune.eval.report import EvalData

    auto = SftConfig(cutoff_len="auto")
    assert EvalData(test=[], cutoff_len=574).heldout_cutoff(auto) == 574
    assert EvalData(test=[]).heldout_cutoff(SftConfig(cutoff_len=128)) == 128
    with pytest.raises(ValueError, match="cutoff the sft_dataset stage chose"):
        EvalData(test=[]).heldout_cutoff(auto)
