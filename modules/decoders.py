"""Attention decoder (DTRB 'Attn', SPEC §3.4) with teacher forcing and early-stopping greedy decoding."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn


class DecoderOutput(NamedTuple):
    """logits [B, S, C] (S ≤ num_steps when greedy decoding stopped early); attention [B, T, S] or None."""

    logits: torch.Tensor
    attention: torch.Tensor | None


class AttentionCell(nn.Module):
    """One step: additive attention over the encoder features, then an LSTMCell on [context; embedding]."""

    def __init__(self, input_size: int, hidden_size: int, embed_size: int):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + embed_size, hidden_size)

    def forward(self, state: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor, projected: torch.Tensor,
                embedding: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """features [B, T, D], projected = i2h(features) (computed once per sequence), embedding [B, E].

        Returns the new (hidden, cell) state and the attention weights α [B, T].
        """
        scores = self.score(torch.tanh(projected + self.h2h(state[0]).unsqueeze(1))).squeeze(2)
        alpha = scores.softmax(1)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
        return self.rnn(torch.cat([context, embedding], 1), state), alpha


class AttentionDecoder(nn.Module):
    """Attention LSTM decoder over an encoder sequence H [B, T, D].

    ``num_classes`` = C (EOS = 0 plus the charset); the embedding has C + 1 rows, the last being SOS.
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, num_steps: int, embed_size: int | None = None):
        super().__init__()
        embed_size = embed_size or hidden_size
        self.attention_cell = AttentionCell(input_size, hidden_size, embed_size)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.char_embeddings = nn.Embedding(num_classes + 1, embed_size)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.num_steps = num_steps

    @property
    def sos_id(self) -> int:
        return self.num_classes

    def forward(self, features: torch.Tensor, text_in: torch.Tensor | None = None,
                early_stop: bool = True) -> DecoderOutput:
        """Teacher forcing with ``text_in`` [B, S] ([SOS, c1, …]); greedy decoding when it is None,
        stopping once every sequence has ended unless ``early_stop`` is False (all S steps)."""
        batch = features.shape[0]
        zeros = features.new_zeros(batch, self.hidden_size)
        state = (zeros, zeros.clone())
        projected = self.attention_cell.i2h(features)
        if text_in is not None:
            embeddings = self.char_embeddings(text_in)
            hiddens, alphas = [], []
            for step in range(text_in.shape[1]):
                state, alpha = self.attention_cell(state, features, projected, embeddings[:, step])
                hiddens.append(state[0])
                alphas.append(alpha)
            return DecoderOutput(self.generator(torch.stack(hiddens, 1)), torch.stack(alphas, 2))
        return self._greedy(features, projected, state, early_stop)

    def _greedy(self, features: torch.Tensor, projected: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor], early_stop: bool) -> DecoderOutput:
        """Feed back the argmax; optionally stop as soon as every sequence has emitted EOS (id 0)."""
        batch = features.shape[0]
        token = torch.full((batch,), self.sos_id, dtype=torch.long, device=features.device)
        ended = torch.zeros(batch, dtype=torch.bool, device=features.device)
        logits, alphas = [], []
        for _ in range(self.num_steps):
            state, alpha = self.attention_cell(state, features, projected, self.char_embeddings(token))
            step_logits = self.generator(state[0])
            token = step_logits.argmax(1)
            logits.append(step_logits)
            alphas.append(alpha)
            ended |= token == 0
            if early_stop and bool(ended.all()):
                break
        return DecoderOutput(torch.stack(logits, 1), torch.stack(alphas, 2))
