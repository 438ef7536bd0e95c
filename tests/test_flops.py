"""FLOP counting: convolutions and linears through FlopCounterMode, LSTMs by formula, with and without backward."""
from __future__ import annotations

import torch

from flops import FlopCount, forward_flops


def test_forward_flops_counts_convolutions_linears_and_lstms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(2))
    conv = forward_flops(model, lambda: model(torch.randn(2, 3, 4, 5)))
    assert conv == 2 * (2 * 4 * 5) * 8 * 3 * 9  # multiply-adds of every output pixel
    lstm = torch.nn.LSTM(16, 8, bidirectional=True, batch_first=True)
    flops = forward_flops(lstm, lambda: lstm(torch.randn(3, 5, 16)))
    assert flops == 2 * 3 * 5 * 2 * 4 * 8 * (16 + 8)  # 2·B·T·directions·4H(I+H)


def test_a_training_step_counts_the_backward_too():
    """A linear's backward is two matmuls of its forward's size (input and weight gradients); an LSTM's is taken
    as twice its forward."""
    linear = torch.nn.Linear(16, 4)
    lstm = torch.nn.LSTM(4, 8, batch_first=True)
    model = torch.nn.ModuleDict({"linear": linear, "lstm": lstm})
    x = torch.randn(3, 5, 16, requires_grad=True)
    with FlopCount(model, backward=True) as count:
        lstm(linear(x))[0].sum().backward()
    linear_forward = 2 * 3 * 5 * 16 * 4
    lstm_forward = 2 * 3 * 5 * 4 * 8 * (4 + 8)
    assert count.total == 3 * linear_forward + 3 * lstm_forward
    assert not linear._forward_hooks and not lstm._forward_hooks  # the hooks are gone after the count
