"""Glyph attention network (SPEC §3.5): a U-Net decoder over the backbone's F0/F1/F2 that predicts
text segmentation and per-character glyph maps at two scales, and pools glyph features with them."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from modules.sequence import BiLSTM


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, bias=bias),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def upsample_bn_relu(channels: int, out_channels: int | None = None, kernel=4, stride=2, padding=1) -> nn.Sequential:
    """Transposed convolution (default ×2: k4, s2, p1), BN, ReLU."""
    out_channels = out_channels or channels
    return nn.Sequential(nn.ConvTranspose2d(channels, out_channels, kernel, stride, padding),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def glyph_pooling(glyph_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Glyph features [B, K−1, D]: each character slot's spatial softmax (background channel 0
    dropped) as weights over the feature map [B, D, h, w] (h-major flattening for both)."""
    weights = glyph_logits.flatten(2).softmax(-1)[:, 1:]
    return torch.bmm(weights, features.flatten(2).transpose(1, 2))


class ColumnContext(nn.Module):
    """Ours (``--glyph_context columns``; the paper has none): a BiLSTM across the columns of a map [B, C, h, w],
    averaged over its height, whose output is added to every row.

    A glyph map's channel k must mark the k-th character, which a pixel can only tell by how many characters lie
    to its left: the paper leaves that count to the backbone's receptive field, which learns it slowly; a
    recurrence along the word carries it directly.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.sequence = BiLSTM(channels, channels // 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.sequence(x.mean(2).transpose(1, 2))  # [B, w, C]
        return x + columns.transpose(1, 2).unsqueeze(2)


class GlyphOutput(NamedTuple):
    """``logits_low`` [B, K, H/2, W/2], ``logits_mid`` [B, K, H/4, W/4], glyph sequences
    ``sequence_low``/``sequence_mid`` [B, K−1, D]; ``seg_logits`` [B, 2, H, W] only when requested."""

    logits_low: torch.Tensor
    logits_mid: torch.Tensor
    sequence_low: torch.Tensor
    sequence_mid: torch.Tensor
    seg_logits: torch.Tensor | None


class GlyphEncoders(nn.Module):
    """What every glyph attention network shares: the mid/low decoder stages' data flow (each variant builds
    its own layers under the same names) and the glyph encoders (SPEC §3.5 steps 4–6): glyph features from
    F1 and F2 (3×3 conv, BN, ReLU), pooled by each slot's spatial softmax and encoded by a BiLSTM per scale."""

    def add_glyph_encoders(self, c1: int, c2: int, feature_size: int) -> None:
        """Register the encoders (called last by a subclass, so parameters keep the official order)."""
        self.features_low = conv_bn_relu(c1, feature_size, 3, bias=False)
        self.features_mid = conv_bn_relu(c2, feature_size, 3, bias=False)
        self.sequence_low = BiLSTM(feature_size, feature_size, feature_size)
        self.sequence_mid = BiLSTM(feature_size, feature_size, feature_size)

    def add_column_context(self, channels: int, enabled: bool) -> None:
        """Register a ``ColumnContext`` over the mid stage's ``channels`` when ``enabled`` (after every official
        layer, so an official checkpoint's parameter order is unchanged)."""
        self.column_context = ColumnContext(channels) if enabled else None

    def glyph_logits(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The U-Net decoder's mid and low stages (SPEC §3.5 steps 1–2), which every variant names alike:
        (low-stage hidden map, glyph logits low [B,K,h1,w1], glyph logits mid [B,K,h2,w2])."""
        hidden_mid = self.mid_block(self.reduce_mid(f2))
        if self.column_context is not None:
            hidden_mid = self.column_context(hidden_mid)
        hidden_low = self.low_block(self.low_merge(torch.cat([self.up_low(hidden_mid), f1], 1)))
        return hidden_low, self.low_head(hidden_low), self.mid_head(hidden_mid)

    def glyph_output(self, logits_low: torch.Tensor, logits_mid: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                     seg_logits: torch.Tensor | None) -> GlyphOutput:
        sequence_low = self.sequence_low(glyph_pooling(logits_low, self.features_low(f1)))
        sequence_mid = self.sequence_mid(glyph_pooling(logits_mid, self.features_mid(f2)))
        return GlyphOutput(logits_low, logits_mid, sequence_low, sequence_mid, seg_logits)


class GlyphAttentionNetwork(GlyphEncoders):
    """From (F0, F1, F2) to segmentation logits, glyph logits (K = N_max + 2 channels, 0 = background)
    at 1/4 ("mid") and 1/2 ("low") resolution, and BiLSTM-encoded glyph feature sequences.

    ``feature_channels`` = channels of (F0, F1, F2); ``channels`` = the decoder width (128 in the paper);
    ``feature_size`` = D, the glyph feature and BiLSTM width (256 in the paper). ``half_resolution_segmentation``
    (ours, for small CPU runs; the paper: off) predicts the segmentation at 1/2 resolution from the low stage
    (no ×2 unpooling, no F0 merge), which the losses compare with the area-downsampled mask. ``column_context``
    (ours; the paper: off) adds a ``ColumnContext`` to the mid stage.
    """

    def __init__(self, feature_channels: tuple[int, int, int], num_slots: int, channels: int = 128,
                 feature_size: int = 256, half_resolution_segmentation: bool = False, column_context: bool = False):
        super().__init__()
        c0, c1, c2 = feature_channels
        self.reduce_mid = conv_bn_relu(c2, c2, 1)
        self.mid_block = conv_bn_relu(c2, channels, 3)
        self.mid_head = nn.Conv2d(channels, num_slots, 1)
        self.up_low = upsample_bn_relu(channels)
        self.low_merge = conv_bn_relu(channels + c1, channels, 1)
        self.low_block = conv_bn_relu(channels, channels, 1)
        self.low_head = nn.Conv2d(channels, num_slots, 1)
        self.up_seg = None if half_resolution_segmentation else upsample_bn_relu(channels)
        self.seg_merge = conv_bn_relu(channels if half_resolution_segmentation else channels + c0, channels, 1)
        self.seg_head = nn.Conv2d(channels, 2, 1)
        self.add_glyph_encoders(c1, c2, feature_size)
        self.add_column_context(channels, column_context)

    def forward(self, levels: tuple[torch.Tensor, ...], segmentation: bool = True) -> GlyphOutput:
        """``levels`` = (F0, F1, F2) of the backbone; ``segmentation=False`` skips the segmentation branch,
        which only the losses need."""
        f0, f1, f2 = levels
        hidden_low, logits_low, logits_mid = self.glyph_logits(f1, f2)
        seg_logits = None
        if segmentation:
            merged = hidden_low if self.up_seg is None else torch.cat([self.up_seg(hidden_low), f0], 1)
            seg_logits = self.seg_head(self.seg_merge(merged))
        return self.glyph_output(logits_low, logits_mid, f1, f2, seg_logits)


class SvtrGlyphAttentionNetwork(GlyphEncoders):
    """SIGA_S's glyph attention network (SPEC_SIGA_S §3.5) over SVTR's F0 [B,c0,H/2,W/2], F1 [B,c1,H/4,W/4]
    and F2 [B,c2,H/8,W/4]: glyph logits at F2's ("mid") and F1's ("low") grids, and segmentation logits at
    the input size through one more ×2 unpooling stage than SIGA_R's, since F0 is already at half size.

    F2 → F1 doubles only the height, so that unpooling uses kernel (4, 3) and stride (2, 1). ``column_context``
    as in ``GlyphAttentionNetwork``.
    """

    def __init__(self, feature_channels: tuple[int, int, int], num_slots: int, channels: int = 128,
                 feature_size: int = 256, column_context: bool = False):
        super().__init__()
        c0, c1, c2 = feature_channels
        low_up = channels // 2
        self.reduce_mid = conv_bn_relu(c2, channels, 1)
        self.mid_block = conv_bn_relu(channels, channels, 1)
        self.mid_head = nn.Conv2d(channels, num_slots, 1)
        self.up_low = upsample_bn_relu(channels, low_up, (4, 3), (2, 1), (1, 1))
        self.low_merge = conv_bn_relu(low_up + c1, channels, 1)
        self.low_block = conv_bn_relu(channels, channels, 1)
        self.low_head = nn.Conv2d(channels, num_slots, 1)
        self.up_seg = upsample_bn_relu(channels, c0)
        self.seg_merge = conv_bn_relu(2 * c0, channels, 1)
        self.up_full = upsample_bn_relu(channels, c0)
        self.seg_head = nn.Conv2d(c0, 2, 1)
        self.add_glyph_encoders(c1, c2, feature_size)
        self.add_column_context(channels, column_context)

    def forward(self, levels: tuple[torch.Tensor, ...], segmentation: bool = True) -> GlyphOutput:
        """``levels`` = (F0, F1, F2) of SVTR; ``segmentation=False`` skips the full-resolution branch."""
        f0, f1, f2 = levels
        hidden_low, logits_low, logits_mid = self.glyph_logits(f1, f2)
        seg_logits = None
        if segmentation:
            merged = self.seg_merge(torch.cat([self.up_seg(hidden_low), f0], 1))
            seg_logits = self.seg_head(self.up_full(merged))
        return self.glyph_output(logits_low, logits_mid, f1, f2, seg_logits)


class ViTGlyphAttentionNetwork(nn.Module):
    """SIGA_T's glyph attention head (SPEC_SIGA_T §3.4–3.5) over the ViT's levels (S_0, S_1, S_2, S_3, Ẑ), all
    [B, D, h, w] on the patch grid: a multi-level head on S_1 and S_2 gives the glyph logits on the patch grid
    ("mid"); with S_0 unpooled ×2 the "low" logits at twice that size, and one more ×2 the segmentation at
    the input size. Glyph features: a grouped 1×1 conv of Ẑ (mid) and S_3 unpooled ×2 (low), each pooled by
    its scale's glyph softmax and encoded by a BiLSTM.

    ``channels`` = the head width c (128 in the paper; the concatenated head is 2c); ``feature_size`` = the
    glyph feature and BiLSTM width (256). Layers carry the official ``segmentation`` names' roles.
    ``column_context`` (ours; the paper: off) adds a ``ColumnContext`` to the concatenated head.
    """

    def __init__(self, feature_channels: tuple[int, ...], num_slots: int, channels: int = 128,
                 feature_size: int = 256, feature_groups: int = 8, column_context: bool = False):
        super().__init__()
        dim = feature_channels[0]
        c = channels
        self.tap_heads = nn.ModuleList([nn.Sequential(*conv_bn_relu(dim, c, 3, bias=False), *conv_bn_relu(c, c, 1, bias=False))
                                        for _ in range(2)])
        self.mid_head = nn.Conv2d(2 * c, num_slots, 1)
        self.up_mid = upsample_bn_relu(2 * c, c)
        self.reduce_low = conv_bn_relu(dim, 2 * c, 1)
        self.up_low = upsample_bn_relu(2 * c, c)
        self.low_merge = conv_bn_relu(2 * c, c, 3)
        self.low_head = nn.Conv2d(c, num_slots, 1)
        self.up_seg = upsample_bn_relu(c)
        self.seg_block = conv_bn_relu(c, c, 1)
        self.seg_head = nn.Conv2d(c, 2, 1)
        self.features_mid = nn.Conv2d(dim, feature_size, 1, groups=feature_groups, bias=False)
        self.features_low = upsample_bn_relu(dim, feature_size)
        self.sequence_mid = BiLSTM(feature_size, feature_size, feature_size)
        self.sequence_low = BiLSTM(feature_size, feature_size, feature_size)
        self.column_context = ColumnContext(2 * c) if column_context else None

    def forward(self, levels: tuple[torch.Tensor, ...], segmentation: bool = True) -> GlyphOutput:
        """``levels`` = (S_0, S_1, S_2, S_3, Ẑ); ``segmentation=False`` skips the full-resolution branch."""
        s0, s1, s2, s3, final = levels
        merged = torch.cat([self.tap_heads[0](s1), self.tap_heads[1](s2)], 1)
        if self.column_context is not None:
            merged = self.column_context(merged)
        logits_mid = self.mid_head(merged)
        hidden_low = self.low_merge(torch.cat([self.up_mid(merged), self.up_low(self.reduce_low(s0))], 1))
        logits_low = self.low_head(hidden_low)
        seg_logits = self.seg_head(self.seg_block(self.up_seg(hidden_low))) if segmentation else None
        sequence_mid = self.sequence_mid(glyph_pooling(logits_mid, self.features_mid(final)))
        sequence_low = self.sequence_low(glyph_pooling(logits_low, self.features_low(s3)))
        return GlyphOutput(logits_low, logits_mid, sequence_low, sequence_mid, seg_logits)
