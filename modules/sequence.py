"""Bidirectional LSTM with an output projection, and the precision every LSTM runs in under CPU autocast
(docs/bf16_cpus.md)."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn


@functools.cache
def cpu_has_bf16_lstm() -> bool:
    """Whether oneDNN, on this CPU and within the ISA that ``ONEDNN_MAX_CPU_ISA`` allows it, has the bf16
    LSTM primitive CPU autocast asks for (bf16 weights, float32 states). CPUs without AVX-512 (e.g. AMD Zen 3)
    have none: the call fails with "could not create a primitive descriptor", and an all-bf16 call runs a
    reference kernel many times slower than float32.

    Decided once per process by one tiny forward and backward, because the answer depends on oneDNN's build
    and its ISA cap as well as on the CPU flags; the LSTM calls then never try and fail."""
    size = 4  # fixed weights: the probe draws nothing from the RNG a seeded run relies on
    weights = [torch.zeros(4 * size, size, requires_grad=True), torch.zeros(4 * size, size, requires_grad=True),
               torch.zeros(4 * size, requires_grad=True), torch.zeros(4 * size, requires_grad=True)]
    inputs, state = torch.zeros(1, 2, size), torch.zeros(1, 1, size)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            output = torch.lstm(inputs, (state, state), weights, True, 1, 0.0, True, False, True)[0]
            output.float().sum().backward()
    except RuntimeError as error:
        if "primitive descriptor" not in str(error):
            raise
        return False
    return True


def lstm_in_supported_precision(lstm: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """``lstm(inputs)``, in float32 (autocast off, inputs cast) when CPU bf16 autocast is on and this CPU has
    no bf16 LSTM (``cpu_has_bf16_lstm``), as the TPS always runs in float32; otherwise as autocast decides.
    The output then is float32, which the next autocast layer casts back down."""
    if (inputs.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_has_bf16_lstm()):
        with torch.autocast("cpu", enabled=False):
            return lstm(inputs.float())
    return lstm(inputs)


class BiLSTM(nn.Module):
    """Single-layer batch-first BiLSTM followed by Linear(2·hidden → output): [B, T, in] → [B, T, out]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and x.is_cuda:
            self.rnn.flatten_parameters()
        return self.linear(lstm_in_supported_precision(lambda sequence: self.rnn(sequence)[0], x))


def bilstm_stack(input_size: int, hidden_size: int, layers: int = 2) -> nn.Sequential:
    """The two stacked BiLSTMs used for contextual features: in → hidden → hidden."""
    sizes = [input_size] + [hidden_size] * layers
    return nn.Sequential(*[BiLSTM(sizes[i], hidden_size, hidden_size) for i in range(layers)])
