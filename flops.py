"""Counting the floating-point operations a model runs: torch's ``FlopCounterMode`` for matmuls and convolutions,
plus the ``nn.LSTM`` layers it does not see (their fused CPU kernels are not decomposed into matmuls).

Used by ``bench.py`` (inference FLOPs per image), ``tools/profile_step.py`` and the training loop, which
reports a run's training compute next to its accuracy.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "forward_flops", "lstm_forward_flops"]

#: an LSTM's backward costs about twice its forward: gradients for the inputs and for the weights
LSTM_BACKWARD_FACTOR = 2


def lstm_forward_flops(module: torch.nn.LSTM, sequence: torch.Tensor) -> int:
    """Multiply-adds ×2 of the four gate matmuls of every layer and direction over ``sequence``'s steps."""
    batch, steps = (sequence.shape[0], sequence.shape[1]) if module.batch_first else sequence.shape[1::-1]
    directions = 2 if module.bidirectional else 1
    per_step = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else module.hidden_size * directions
        per_step += 2 * 4 * module.hidden_size * (width + module.hidden_size) * directions
    return per_step * batch * steps


class FlopCount:
    """Context manager counting what runs inside it on ``model``: ``total`` after exit. With ``backward`` the
    backward pass runs inside too: ``FlopCounterMode`` counts its matmuls and convolutions, and each LSTM's
    forward count is taken 1 + ``LSTM_BACKWARD_FACTOR`` times."""

    def __init__(self, model: torch.nn.Module, backward: bool = False):
        self.model, self.backward = model, backward
        self.counter = FlopCounterMode(display=False)
        self.lstm_flops = 0
        self.hooks: list = []

    def _count_lstm(self, module: torch.nn.LSTM, inputs: tuple, output: object) -> None:
        self.lstm_flops += lstm_forward_flops(module, inputs[0])

    def __enter__(self) -> "FlopCount":
        self.hooks = [m.register_forward_hook(self._count_lstm) for m in self.model.modules()
                      if isinstance(m, torch.nn.LSTM)]
        self.counter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.counter.__exit__(*exc)
        finally:
            for hook in self.hooks:
                hook.remove()

    @property
    def total(self) -> int:
        lstm = self.lstm_flops * (1 + LSTM_BACKWARD_FACTOR if self.backward else 1)
        return self.counter.get_total_flops() + lstm


def forward_flops(model: torch.nn.Module, run: Callable[[], object]) -> int:
    """FLOPs of one call of ``run`` without autograd (the count does not depend on the dtype)."""
    with torch.no_grad(), FlopCount(model) as count:
        run()
    return count.total
