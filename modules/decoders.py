"""Recognition decoders (SPEC §3.4, §3.7, §3.8), all sharing one attention cell:

* ``AttentionDecoder``: DTRB's attention LSTM over an encoder sequence (TRBA, SIGA_R's 1-D branches);
* ``FusionDecoder``: the same, with the attention context gated against a glyph feature per step;
* ``PositionAlignedDecoder``: an LSTM that reads row s of a sequence at step s (no attention).

Teacher forcing when ``text_in`` = [SOS, c1, …] is given; greedy decoding otherwise, stopping once
every sequence has emitted EOS. The tokenizer's SOS and EOS ids are constructor arguments. Steps can also be driven one at a time (``start``/``step``) so
that several decoders can run in lockstep.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from modules.fusion import GatedBimodal
from modules.sequence import lstm_in_supported_precision

State = tuple[torch.Tensor, torch.Tensor]


class DecoderOutput(NamedTuple):
    """logits [B, S, C] (S ≤ num_steps when greedy decoding stopped early); attention [B, T, S] or None;
    ``fused`` [B, S, D], the per-step gated fusion vectors of a ``FusionDecoder`` (None otherwise)."""

    logits: torch.Tensor
    attention: torch.Tensor | None
    fused: torch.Tensor | None = None


def zero_state(reference: torch.Tensor, hidden_size: int) -> State:
    zeros = reference.new_zeros(reference.shape[0], hidden_size)
    return zeros, zeros.clone()


def greedy_steps(num_steps: int, max_steps: int | None) -> int:
    """How many greedy steps to run: ``max_steps`` (1 … ``num_steps``), or all ``num_steps``."""
    if max_steps is None:
        return num_steps
    if not 1 <= max_steps <= num_steps:
        raise ValueError(f"max_steps must be between 1 and {num_steps}, got {max_steps}")
    return max_steps


def embedding_rows(num_classes: int, sos_id: int) -> int:
    """Rows of a decoder's token embedding: every output class and the start token."""
    return max(num_classes, sos_id + 1)


class AttentionCell(nn.Module):
    """One step: additive attention over the encoder features, then an LSTMCell on [context; embedding]."""

    def __init__(self, input_size: int, hidden_size: int, embed_size: int):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + embed_size, hidden_size)

    def step_input(self, context: torch.Tensor, glyph: torch.Tensor | None) -> torch.Tensor:
        """What the LSTM reads besides the embedding: the attention context itself."""
        return context

    def forward(self, state: State, features: torch.Tensor, projected: torch.Tensor, embedding: torch.Tensor,
                glyph: torch.Tensor | None = None) -> tuple[State, torch.Tensor, torch.Tensor]:
        """features [B, T, D], projected = i2h(features) (computed once per sequence), embedding [B, E],
        glyph [B, D] (fusion cells only).

        Returns the new (hidden, cell) state, the attention weights α [B, T] and the LSTM's step input [B, D].
        """
        scores = self.score(torch.tanh(projected + self.h2h(state[0]).unsqueeze(1))).squeeze(2)
        alpha = scores.softmax(1)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
        step_input = self.step_input(context, glyph)
        return self.rnn(torch.cat([step_input, embedding], 1), state), alpha, step_input


class FusionAttentionCell(AttentionCell):
    """Attention cell whose LSTM reads GatedBimodal(context, glyph feature) instead of the context."""

    def __init__(self, input_size: int, hidden_size: int, embed_size: int):
        super().__init__(input_size, hidden_size, embed_size)
        self.fusion = GatedBimodal(input_size)

    def step_input(self, context: torch.Tensor, glyph: torch.Tensor | None) -> torch.Tensor:
        if glyph is None:
            raise ValueError("a fusion decoder needs the glyph feature of every step")
        return self.fusion(context, glyph)


class AttentionDecoder(nn.Module):
    """Attention LSTM decoder over an encoder sequence H [B, T, D].

    ``num_classes`` = C output classes; the embedding has ``num_embeddings`` rows, by default one per id up to
    ``sos_id`` (our layout: C + 1 rows, SOS being the extra last one).
    """

    cell_type: type[AttentionCell] = AttentionCell

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, num_steps: int, sos_id: int,
                 eos_id: int, embed_size: int | None = None, num_embeddings: int | None = None):
        super().__init__()
        embed_size = embed_size or hidden_size
        self.attention_cell = self.cell_type(input_size, hidden_size, embed_size)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.char_embeddings = nn.Embedding(num_embeddings or embedding_rows(num_classes, sos_id), embed_size)
        self.hidden_size = hidden_size
        self.num_steps = num_steps
        self.sos_id, self.eos_id = sos_id, eos_id

    def start(self, features: torch.Tensor) -> tuple[State, torch.Tensor]:
        """Zero state and the step-independent projection i2h(H)."""
        return zero_state(features, self.hidden_size), self.attention_cell.i2h(features)

    def step(self, state: State, features: torch.Tensor, projected: torch.Tensor, token: torch.Tensor,
             glyph: torch.Tensor | None = None) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One greedy step from the previous token [B]: (state, logits [B, C], α [B, T], step input [B, D])."""
        state, alpha, step_input = self.attention_cell(state, features, projected, self.char_embeddings(token), glyph)
        return state, self.generator(state[0]), alpha, step_input

    def forward(self, features: torch.Tensor, text_in: torch.Tensor | None = None, glyphs: torch.Tensor | None = None,
                early_stop: bool = True, max_steps: int | None = None) -> DecoderOutput:
        """Teacher forcing with ``text_in`` [B, S]; greedy decoding when it is None, for at most
        ``max_steps`` (default ``num_steps``) steps, stopping once every sequence has ended unless
        ``early_stop`` is False. ``glyphs`` [B, ≥S, D] feeds a fusion decoder's gate, one row per step."""
        state, projected = self.start(features)
        if text_in is None:
            return self._greedy(features, projected, state, glyphs, early_stop, greedy_steps(self.num_steps, max_steps))
        embeddings = self.char_embeddings(text_in)
        hiddens, alphas, inputs = [], [], []
        for s in range(text_in.shape[1]):
            glyph = None if glyphs is None else glyphs[:, s]
            state, alpha, step_input = self.attention_cell(state, features, projected, embeddings[:, s], glyph)
            hiddens.append(state[0])
            alphas.append(alpha)
            inputs.append(step_input)
        fused = torch.stack(inputs, 1) if glyphs is not None else None
        return DecoderOutput(self.generator(torch.stack(hiddens, 1)), torch.stack(alphas, 2), fused)

    def _greedy(self, features: torch.Tensor, projected: torch.Tensor, state: State, glyphs: torch.Tensor | None,
                early_stop: bool, steps: int) -> DecoderOutput:
        """Feed back the argmax; optionally stop as soon as every sequence has emitted EOS."""
        batch = features.shape[0]
        token = torch.full((batch,), self.sos_id, dtype=torch.long, device=features.device)
        ended = torch.zeros(batch, dtype=torch.bool, device=features.device)
        logits, alphas, inputs = [], [], []
        for s in range(steps):
            glyph = None if glyphs is None else glyphs[:, s]
            state, step_logits, alpha, step_input = self.step(state, features, projected, token, glyph)
            token = step_logits.argmax(1)
            logits.append(step_logits)
            alphas.append(alpha)
            inputs.append(step_input)
            ended |= token == self.eos_id
            if early_stop and bool(ended.all()):
                break
        fused = torch.stack(inputs, 1) if glyphs is not None else None
        return DecoderOutput(torch.stack(logits, 1), torch.stack(alphas, 2), fused)


class FusionDecoder(AttentionDecoder):
    """Attention decoder over H whose every step also gates in the glyph feature of that step (SPEC §3.8).

    Its ``fused`` output (the gated vectors, not the LSTM states) feeds the final generator.
    """

    cell_type = FusionAttentionCell


class PositionAlignedDecoder(nn.Module):
    """LSTM decoder reading row s of an aligned sequence G [B, ≥S, D] and the previous token at step s
    (SPEC §3.7, §3.9); no attention. Embedding rows as AttentionDecoder's."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, embed_size: int, sos_id: int,
                 num_embeddings: int | None = None):
        super().__init__()
        self.rnn = nn.LSTMCell(input_size + embed_size, hidden_size)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.char_embeddings = nn.Embedding(num_embeddings or embedding_rows(num_classes, sos_id), embed_size)
        self.hidden_size = hidden_size

    def forward(self, rows: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, S, C] for ``text_in`` [B, S].

        Every step's input is known in advance, so the S steps run as one fused LSTM call
        (cuDNN on GPU) with the LSTMCell's own weights.
        """
        steps = text_in.shape[1]
        inputs = torch.cat([rows[:, :steps], self.char_embeddings(text_in)], 2)
        weights = [self.rnn.weight_ih, self.rnn.weight_hh, self.rnn.bias_ih, self.rnn.bias_hh]

        def fused_lstm(sequence: torch.Tensor) -> torch.Tensor:
            h0 = sequence.new_zeros(1, sequence.shape[0], self.hidden_size)
            return torch.lstm(sequence, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]

        return self.generator(lstm_in_supported_precision(fused_lstm, inputs))

    def step(self, state: State | None, row: torch.Tensor, token: torch.Tensor) -> tuple[State, torch.Tensor]:
        """One greedy step: row [B, D], previous token [B] → (state, logits [B, C]); ``state`` None = zeros."""
        state = state if state is not None else zero_state(row, self.hidden_size)
        state = self.rnn(torch.cat([row, self.char_embeddings(token)], 1), state)
        return state, self.generator(state[0])
