"""Charsets and the tokenizer: label normalisation, the id layout with its special tokens, encoding and decoding.

The tokenizer owns the token layout; models and decoders receive its ids (``eos_id``, ``sos_id``,
``pad_id``), never literals. Two layouts exist (``TOKEN_LAYOUTS``):

* ``"dtrb"`` (SIGA_R, SIGA_S): 0 = EOS and padding, 1..n = characters, n + 1 = SOS;
* ``"mgp"`` (SIGA_T, MGP-STR's ``TokenLabelConverter``, SPEC_SIGA_T §2): 0 = ``[GO]`` (start token and
  padding), 1 = ``[s]`` (EOS), 2..n + 1 = characters; the official 36-character order is digits first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from config import Config

TOKEN_LAYOUTS = ("dtrb", "mgp")
CHARSET_36 = "abcdefghijklmnopqrstuvwxyz1234567890"
#: the 36 characters in MGP-STR's order (SPEC_SIGA_T §2: '0'–'9' → ids 2–11, 'a'–'z' → 12–37)
MGP_CHARSET_36 = "0123456789abcdefghijklmnopqrstuvwxyz"
CHARSET_94 = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)


def check_layout(layout: str) -> str:
    """``layout`` if it is one of ``TOKEN_LAYOUTS``; a ValueError naming the choices otherwise."""
    if layout not in TOKEN_LAYOUTS:
        raise ValueError(f"unknown token layout {layout!r}; choose one of {', '.join(TOKEN_LAYOUTS)}")
    return layout


def load_charset(spec: str, sensitive: bool = False, layout: str = "dtrb") -> str:
    """Resolve a charset spec: ``"36"``, ``"94"`` or a file with one character per line.

    The order fixes the ids, so ``"36"`` follows the layout's convention (digits last for ``"dtrb"``, first
    for ``"mgp"``, as the official checkpoints expect); ``"94"`` and files are the same in both layouts.
    """
    if spec == "36":
        return MGP_CHARSET_36 if check_layout(layout) == "mgp" else CHARSET_36
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


def first_eos_index(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Index [B] of the first ``eos_id`` in each row of ``ids`` [B, S]; S for a row without one."""
    is_eos = ids == eos_id
    return torch.where(is_eos.any(1), is_eos.to(torch.int64).argmax(1),
                       torch.full_like(is_eos[:, 0], ids.shape[1], dtype=torch.int64))


class Tokenizer:
    """Label normalisation and id encoding in one of the ``TOKEN_LAYOUTS`` (see the module docstring).

    ``"dtrb"``: SPEC §2 with bug #1 fixed (SOS = len(charset) + 1, the extra embedding row). ``"mgp"``:
    SPEC_SIGA_T §2, [GO] = 0 is start token and padding at once (kept for checkpoint compatibility, T-1).
    In case-insensitive mode labels are lowercased first; characters outside the charset are
    dropped in every mode (SPEC §1.2 and bug #24), never a KeyError.
    """

    #: the "dtrb" ids, readable on the class by code that predates layouts; instances set their own
    eos_id = 0
    pad_id = 0

    def __init__(self, charset: str, max_label_length: int = 25, sensitive: bool = False, layout: str = "dtrb"):
        if len(set(charset)) != len(charset):
            raise ValueError("charset has duplicate characters")
        self.layout = check_layout(layout)
        self.charset = charset
        self.max_label_length = max_label_length
        self.sensitive = sensitive
        specials = ("[GO]", "[s]") if layout == "mgp" else ("[s]",)  # the official names of the special tokens
        self.eos_id = 1 if layout == "mgp" else 0
        self.pad_id = 0
        self._char_to_id = {c: i + len(specials) for i, c in enumerate(charset)}
        self._id_to_char = np.array(["" for _ in specials] + list(charset), dtype=object)  # specials print as ""
        self._id_to_token = [*specials, *charset]

    @classmethod
    def from_config(cls, config: Config) -> "Tokenizer":
        """The tokenizer of ``config``: its charset (in its layout's order), length limit, case and layout."""
        charset = load_charset(config.charset, config.sensitive, config.token_layout)
        return cls(charset, config.max_label_length, config.sensitive, config.token_layout)

    @property
    def num_classes(self) -> int:
        """Output classes C: the special tokens a decoder emits (EOS; mgp also [GO]) + charset size."""
        return len(self._id_to_token)

    @property
    def sos_id(self) -> int:
        """The decoder's start token: its own id n + 1 in "dtrb", [GO] = 0 (= padding) in "mgp"."""
        return 0 if self.layout == "mgp" else len(self.charset) + 1

    @property
    def num_embeddings(self) -> int:
        """Rows of a decoder's token embedding: "dtrb" needs C + 1 for SOS; "mgp" has C + 1 too, its last row
        never used, because the official checkpoints have it (SPEC_SIGA_T T-1)."""
        return self.num_classes + 1 if self.layout == "mgp" else max(self.num_classes, self.sos_id + 1)

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

        Returns ``ids`` [B, S + 1] = [SOS, c1..cL, EOS, pad…] and ``lengths`` [B] = L + 1 (with EOS); in "mgp"
        that is [0, c1..cL, 1, 0…], the official ``char_encode``.
        The decoder input is ``ids[:, :-1]``, the target ``ids[:, 1:]``. Labels longer than N_max are
        truncated (the training set filters them out beforehand).
        """
        ids = torch.full((len(labels), self.num_steps + 1), self.pad_id, dtype=torch.long)
        ids[:, 0] = self.sos_id
        lengths = torch.empty(len(labels), dtype=torch.long)
        for row, label in enumerate(labels):
            char_ids = [self._char_to_id[c] for c in self.normalize(label)][: self.max_label_length]
            ids[row, 1 : 2 + len(char_ids)] = torch.tensor([*char_ids, self.eos_id], dtype=torch.long)
            lengths[row] = len(char_ids) + 1
        if device is not None:
            ids, lengths = ids.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        return ids, lengths

    def decode(self, logits: torch.Tensor, drop_last_without_eos: bool = False) -> tuple[list[str], list[float]]:
        """Greedy strings and confidences from logits [B, S, C].

        A string is cut at its first EOS. Without EOS all S characters are kept, unless
        ``drop_last_without_eos`` reproduces the official quirk of dropping the last one (SPEC §2).
        A predicted [GO] ("mgp") is dropped from the text, never spelled out (SPEC_SIGA_T T-2, fixed).
        Confidence = product of per-step max probabilities up to and including the EOS step; 0 for an
        empty prediction. (SPEC §6's DTRB definition stops before EOS: see the README's differences.)
        """
        probs = logits.detach().float().softmax(-1)
        max_probs, ids = probs.max(-1)
        has_eos = (ids == self.eos_id).any(1)
        steps = ids.shape[1]
        first_eos = first_eos_index(ids, self.eos_id)
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

    def decode_official(self, logits: torch.Tensor) -> tuple[list[str], list[float], list[str]]:
        """The official SIGA_T test decode (``test_final``, SPEC_SIGA_T §2 and T-2) with its string quirks, to
        compare with the official numbers ("mgp" only; use ``decode`` for the clean behaviour).

        Per step the argmax token's *string* is joined (``[GO]`` and ``[s]`` literally) into ``raw``; ``pred``
        is ``raw`` cut before the first ``"[s]"``, or without its last character if there is none (which can
        leave ``"…[GO"``). Confidence: float32 softmax, running float32 product of the per-step maxima of the
        steps before the first EOS, or of all steps but the last without EOS; 0.0 when no step is kept.
        Returns ``(preds, confidences, raws)``.
        """
        if self.layout != "mgp":
            raise ValueError(f"decode_official needs the 'mgp' token layout, not {self.layout!r}")
        max_probs, ids = logits.detach().float().softmax(-1).max(-1)
        preds: list[str] = []
        confidences: list[float] = []
        raws: list[str] = []
        for row_ids, row_probs in zip(ids.cpu().tolist(), max_probs.cpu()):
            raw = "".join(self._id_to_token[i] for i in row_ids)
            kept = row_ids.index(self.eos_id) if self.eos_id in row_ids else len(row_ids) - 1
            raws.append(raw)
            preds.append(raw[: raw.find("[s]")])  # find = -1 without [s]: the last character goes
            confidences.append(row_probs[:kept].cumprod(0)[-1].item() if kept else 0.0)
        return preds, confidences, raws

    def decode_ids(self, ids: torch.Tensor) -> list[str]:
        """Strings from id rows (EOS-terminated), e.g. the targets ``ids[:, 1:]``; [GO]/padding ids print as ""."""
        out = []
        for row in ids.cpu().numpy():
            end = np.flatnonzero(row == self.eos_id)
            out.append("".join(self._id_to_char[row[: end[0] if len(end) else len(row)]]))
        return out
