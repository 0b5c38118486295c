"""The divergence guards stop a run whose result must not be used, naming the setting to change."""

import math

import pytest
import torch

from finetune.train.guards import (
    COLLAPSE_STEPS,
    GRAD_NORM_LIMIT,
    TrainingError,
    check_every_tensor_learned,
    check_grad_norm,
    check_loss_finite,
    check_not_collapsed,
    names_with_gradient,
)


def test_a_nan_loss_or_an_exploding_gradient_stops_training_naming_the_learning_rate():
    check_loss_finite(2.5, 3, 1e-4)
    check_grad_norm(GRAD_NORM_LIMIT, 3, 1e-4)
    for bad in (math.nan, math.inf):
        with pytest.raises(TrainingError, match=r"at step 3; lower train.learning_rate \(now 0.1\)"):
            check_loss_finite(bad, 3, 0.1)
    for bad in (math.nan, GRAD_NORM_LIMIT * 1.01):
        with pytest.raises(TrainingError, match=r"gradient norm .* at step 7 .*lower train.learning_rate"):
            check_grad_norm(bad, 7, 0.1)


def test_a_loss_collapsed_for_several_steps_stops_training_but_one_low_step_does_not():
    low = [1e-5] * COLLAPSE_STEPS
    check_not_collapsed([2.0, *low[1:]], COLLAPSE_STEPS)  # one step above the floor among the last ones
    check_not_collapsed(low[1:], COLLAPSE_STEPS - 1)  # too few steps to tell
    with pytest.raises(TrainingError, match="loss collapsed .* check the mask preview"):
        check_not_collapsed([3.0, *low], COLLAPSE_STEPS + 1)


def test_a_trainable_tensor_without_gradient_is_named():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    (a * 2).sum().backward()
    b.grad = torch.zeros(2)  # a gradient of zeros teaches nothing either
    with_grad = names_with_gradient({"a": a, "b": b})
    assert with_grad == {"a"}
    check_every_tensor_learned(["a"], with_grad)
    with pytest.raises(TrainingError, match=r"1 of 2 trainable tensors never received a gradient \(first: b\)"):
        check_every_tensor_learned(["a", "b"], with_grad)
