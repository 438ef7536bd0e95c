"""Typed model outputs: what the greedy path returns, and what each model's teacher-forced (training) path
returns for its losses. No field is optional: each type holds exactly what its path computes."""
from __future__ import annotations

from typing import NamedTuple, TypeVar

import torch


class Prediction(NamedTuple):
    """Greedy decoding: ``logits`` [B, S', C] of the final head (S' ≤ S when every sequence ended early) and
    the other heads that ran alongside, by name (SIGA: the two fusion decoders; TRBA: none)."""

    logits: torch.Tensor
    auxiliary_logits: dict[str, torch.Tensor]


class RecognitionOutput(NamedTuple):
    """Teacher forcing of a glyph-free model (TRBA): ``logits`` [B, S, C] and the decoder's attention [B, T, S]."""

    logits: torch.Tensor
    attention: torch.Tensor


class SigaOutput(NamedTuple):
    """Teacher forcing of a SIGA model (SPEC §3.10): the final ``logits`` [B, S, C]; the 1-D branch's attention
    A [B, T, S]; the TPS-warped text mask [B, 1, H, W]; the other six heads' logits by name (``one_d``,
    ``trba``, ``position_low``, ``position_mid``, ``fusion_low``, ``fusion_mid``); segmentation logits
    [B, 2, H, W] and the glyph logits [B, K, h_low, w_low] / [B, K, h_mid, w_mid]."""

    logits: torch.Tensor
    attention: torch.Tensor
    rectified_mask: torch.Tensor
    auxiliary_logits: dict[str, torch.Tensor]
    seg_logits: torch.Tensor
    glyph_logits_low: torch.Tensor
    glyph_logits_mid: torch.Tensor


class Trace(NamedTuple):
    """Greedy decoding of a glyph-free model with what each step looked at (``AttentionRecognizer.trace``):
    ``logits`` [B, S', C] as the greedy ``Prediction``'s; the attention decoder's α [B, T, S'] over the T
    columns of the visual sequence; the rectifier's sampling ``grid`` [B, H, W, 2]: for each rectified pixel
    the input position (x, y) in [−1, 1] that ``grid_sample`` (align_corners=True) read (identity without a
    rectifier)."""

    logits: torch.Tensor
    attention: torch.Tensor
    grid: torch.Tensor


class GlyphTrace(NamedTuple):
    """Greedy decoding of a SIGA model with what each step looked at (``GlyphAttentionRecognizer.trace``):
    ``logits``, ``attention`` and ``grid`` as in ``Trace``, with ``attention`` the first-slot fusion decoder's
    α [B, T, S'] and ``attention_second`` the second slot's; the glyph logits ``glyph_logits_low``
    [B, K, h_low, w_low] and ``glyph_logits_mid`` [B, K, h_mid, w_mid] (channel 0 background, channel k + 1
    character slot k, i.e. decoding step k), whose spatial softmax per channel pools the glyph features."""

    logits: torch.Tensor
    attention: torch.Tensor
    grid: torch.Tensor
    attention_second: torch.Tensor
    glyph_logits_low: torch.Tensor
    glyph_logits_mid: torch.Tensor


Output = TypeVar("Output", Prediction, RecognitionOutput, SigaOutput)


def to_float32(output: Output) -> Output:
    """A copy with every floating tensor in float32, so that the losses of an autocast forward run at full
    precision."""
    def cast(value):
        if isinstance(value, dict):
            return {name: cast(tensor) for name, tensor in value.items()}
        return value.float() if value.is_floating_point() else value

    return type(output)(*(cast(value) for value in output))
