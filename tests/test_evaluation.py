"""The benchmark protocol and the metrics, against hand-computed values."""
from __future__ import annotations

import pytest

from evaluation import EvalResult, benchmark_normalize, evaluate, normalized_edit_similarity, weighted_total


def test_metrics():
    assert benchmark_normalize("Hello, W0rld!") == "hellow0rld"
    assert normalized_edit_similarity("abc", "abd") == pytest.approx(2 / 3)
    assert normalized_edit_similarity("", "") == 0.0
    result = EvalResult()
    result.add(["Hello!", "wrld"], ["hello", "world"], [0.5, 0.25], keep=True)
    assert result.accuracy == 50.0
    assert result.ned == pytest.approx((1 + 0.8) / 2)
    assert result.mean_confidence == pytest.approx(0.375)
    other = EvalResult()
    other.add(["x"], ["x"], [1.0], keep=False)
    other.add_unreadable(1)
    total = weighted_total([result, other])
    assert total.num_samples == 4 and total.num_unreadable == 1 and total.accuracy == pytest.approx(50.0)


def test_evaluate_restores_the_training_mode_and_counts_unreadable_samples_as_wrong():
    """Validation inside training must hand the model back in train mode (dropout, batch statistics); samples the
    collate could not decode stay in n as wrong predictions, also when a whole batch was lost."""
    import torch

    from config import make_config
    from dataset import Batch
    from model import build_model
    from tokenizer import Tokenizer

    config = make_config("tiny")
    model = build_model(config).train()
    batches = [Batch(torch.randn(2, 3, 32, 128), None, ["ab", "cd"], [("db", 3, "not an image")]),
               Batch(torch.empty(0, 3, 0, 0), None, [], [("db", 4, "not an image"), ("db", 5, "empty")])]
    result = evaluate(model, batches, Tokenizer.from_config(config), "cpu")
    assert model.training and result.num_samples == 5 and result.num_unreadable == 3
    assert result.num_correct <= 2 and result.accuracy <= 40.0
    model.eval()
    evaluate(model, batches, Tokenizer.from_config(config), "cpu")
    assert not model.training
