"""What a backbone hands to the heads: the visual sequence for the 1-D decoders and the feature maps the
glyph attention network reads."""
from __future__ import annotations

from typing import NamedTuple

import torch


class BackboneFeatures(NamedTuple):
    """``levels``: the backbone's feature maps for a glyph attention network, finest first (SIGA_R: F0, F1,
    F2 of ResNet-45); ``sequence``: the visual sequence X [B, T, C] the BiLSTM encoders read."""

    levels: tuple[torch.Tensor, ...]
    sequence: torch.Tensor
