"""Charsets and the tokenizer: label normalisation, the id layout with its special tokens, encoding and decoding.

The tokenizer owns the token layout; models and decoders receive its ids (``eos_id``, ``sos_id``,
``pad_id``), never literals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from config import Config

CHARSET_36 = "abcdefghijklmnopqrstuvwxyz1234567890"
CHARSET_94 = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)


def load_charset(spec: str, sensitive: bool = False) -> str:
    """Resolve a charset spec: ``"36"``, ``"94"`` or a file with one character per line."""
    if spec == "36":
        return CHARSET_36
    if spec == "94":
        return CHARSET_94
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"charset {spec!r} is neither '36', '94' nor an existing file")
    chars: list[str] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line == "":
            continue
        if len(line) != 1:
            raise ValueError(f"{path}, line {line_no}: expected exactly one character, got {line!r}")
        if line in seen:
            raise ValueError(f"{path}, line {line_no}: duplicate character {line!r} (first on line {seen[line]})")
        seen[line] = line_no
        chars.append(line)
    if not chars:
        raise ValueError(f"{path}: charset file is empty")
    return "".join(chars)


class Tokenizer:
    """Label normalisation and id encoding (SPEC §2, with bug #1 fixed: SOS = len(charset) + 1).

    Ids: 0 = EOS and padding, 1..n = characters, n + 1 = SOS (the extra embedding row).
    In case-insensitive mode labels are lowercased first; characters outside the charset are
    dropped in every mode (SPEC §1.2 and bug #24), never a KeyError.
    """

    eos_id = 0
    pad_id = 0

    def __init__(self, charset: str, max_label_length: int = 25, sensitive: bool = False):
        if len(set(charset)) != len(charset):
            raise ValueError("charset has duplicate characters")
        self.charset = charset
        self.max_label_length = max_label_length
        self.sensitive = sensitive
        self._char_to_id = {c: i + 1 for i, c in enumerate(charset)}
        self._id_to_char = np.array(["", *charset], dtype=object)

    @classmethod
    def from_config(cls, config: Config) -> "Tokenizer":
        return cls(load_charset(config.charset, config.sensitive), config.max_label_length, config.sensitive)

    @property
    def num_classes(self) -> int:
        """Output classes C = 1 (EOS) + charset size."""
        return len(self.charset) + 1

    @property
    def sos_id(self) -> int:
        return len(self.charset) + 1

    @property
    def num_steps(self) -> int:
        return self.max_label_length + 1

    def normalize(self, label: str) -> str:
        """Lowercase (unless case-sensitive) and drop characters outside the charset."""
        if not self.sensitive:
            label = label.lower()
        return "".join(c for c in label if c in self._char_to_id)

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode normalised labels.

        Returns ``ids`` [B, S + 1] = [SOS, c1..cL, EOS, pad…] and ``lengths`` [B] = L + 1 (with EOS).
        The decoder input is ``ids[:, :-1]``, the target ``ids[:, 1:]``. Labels longer than N_max are
        truncated (the training set filters them out beforehand).
        """
        ids = torch.zeros(len(labels), self.num_steps + 1, dtype=torch.long)
        ids[:, 0] = self.sos_id
        lengths = torch.empty(len(labels), dtype=torch.long)
        for row, label in enumerate(labels):
            char_ids = [self._char_to_id[c] for c in self.normalize(label)][: self.max_label_length]
            ids[row, 1 : 1 + len(char_ids)] = torch.tensor(char_ids, dtype=torch.long)
            lengths[row] = len(char_ids) + 1
        if device is not None:
            ids, lengths = ids.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        return ids, lengths

    def decode(self, logits: torch.Tensor, drop_last_without_eos: bool = False) -> tuple[list[str], list[float]]:
        """Greedy strings and confidences from logits [B, S, C].

        A string is cut at its first EOS. Without EOS all S characters are kept, unless
        ``drop_last_without_eos`` reproduces the official quirk of dropping the last one (SPEC §2).
        Confidence = product of per-step max probabilities up to and including the EOS step; 0 for an
        empty prediction. (SPEC §6's DTRB definition stops before EOS: see the README's differences.)
        """
        probs = logits.detach().float().softmax(-1)
        max_probs, ids = probs.max(-1)
        is_eos = ids == self.eos_id
        has_eos = is_eos.any(1)
        steps = ids.shape[1]
        first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, steps, dtype=torch.long))
        keep = torch.arange(steps, device=ids.device)[None] <= first_eos[:, None]
        confidence = torch.where(keep, max_probs, torch.ones_like(max_probs)).prod(1)
        cut = first_eos.clone()
        if drop_last_without_eos:
            cut = torch.where(has_eos, cut, cut - 1)
        texts: list[str] = []
        for row, (row_ids, length) in enumerate(zip(ids.cpu().numpy(), cut.cpu().tolist())):
            texts.append("".join(self._id_to_char[row_ids[:length]]))
        conf = [c if t else 0.0 for c, t in zip(confidence.cpu().tolist(), texts)]
        return texts, conf

    def decode_ids(self, ids: torch.Tensor) -> list[str]:
        """Strings from id rows (EOS-terminated), e.g. the targets ``ids[:, 1:]``."""
        out = []
        for row in ids.cpu().numpy():
            end = np.flatnonzero(row == self.eos_id)
            out.append("".join(self._id_to_char[row[: end[0] if len(end) else len(row)]]))
        return out
