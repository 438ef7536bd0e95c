"""SIGA_T's backbone (SPEC_SIGA_T §3.1–3.3): timm's VisionTransformer run block by block, LayerNorm'd taps of
the intermediate tokens for the glyph attention network, and the ResNet tail that turns the last tokens into
the visual sequence X.

The transformer is ``timm.models.vision_transformer.VisionTransformer`` built with the official arguments, so
the official ``cls_token``, ``pos_embed``, ``patch_embed`` and ``blocks`` load by name; the unused classifier
``head`` and final ``norm`` are not created (SPEC_SIGA_T T-5). The forward is ours: timm's
``forward_features`` would apply the final norm and cannot expose the taps.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from modules.features import BackboneFeatures
from modules.resnet import BasicBlock


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, N, D] (CLS already dropped, row-major over ``grid``) → map [B, D, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class SequenceTail(nn.Module):
    """The 1-D branch of SPEC_SIGA_T §3.3: conv5 (k(2,3), s(2,1), bias) halves the patch grid's height, then
    SIGA_R's ResNet-45 tail (layer6 ×2, conv6, layer7 ×1, conv7_1, conv7_2) collapses it to 1:
    [B, D, h, w] → V [B, C, 1, w]. Names follow the official ``segmentation`` module."""

    def __init__(self, in_channels: int, channels: int, blocks: tuple[int, int] = (2, 1)):
        super().__init__()
        c = channels
        self.conv5 = nn.Conv2d(in_channels, c, (2, 3), (2, 1), (0, 1))
        self.layer6 = nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks[0])])
        self.conv6, self.bn6 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.layer7 = nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks[1])])
        self.conv7_1, self.bn7_1 = nn.Conv2d(c, c, (2, 3), (2, 1), (0, 1), bias=False), nn.BatchNorm2d(c)
        self.conv7_2, self.bn7_2 = nn.Conv2d(c, c, (2, 3), 1, (0, 1), bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer6(self.conv5(x))
        x = self.layer7(self.relu(self.bn6(self.conv6(x))))
        x = self.relu(self.bn7_1(self.conv7_1(x)))
        return self.relu(self.bn7_2(self.conv7_2(x)))


class ViTBackbone(nn.Module):
    """ViT over a [0, 1] image [B, 3, H, W] → ``BackboneFeatures``.

    ``taps`` are 1-based block numbers (official: 2, 4, 6, 8); after each, its own LayerNorm (eps 1e-5, the
    PyTorch default, unlike the blocks' 1e-6) gives S_i [B, D, H/p, W/p]. The tokens after the last block go
    through ``token_norm`` (Ẑ) and the tail. ``levels`` = (S_0, …, S_{n−1}, Ẑ as a map); no taps (the
    glyph-free baseline) → levels = (). ``sequence`` = X [B, W/p, tail_channels].
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, taps: tuple[int, ...], tail_channels: int, drop_path_rate: float = 0.0):
        super().__init__()
        if any(not 1 <= tap <= depth for tap in taps):
            raise ValueError(f"ViT taps {taps} must be block numbers between 1 and the depth {depth}")
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=3, num_classes=0,
                                     embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                                     qkv_bias=True, final_norm=False, drop_path_rate=drop_path_rate)
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.taps = tuple(taps)
        self.norm_seg = nn.ModuleList([nn.LayerNorm(dim) for _ in taps])
        self.token_norm = nn.LayerNorm(dim)
        self.tail = SequenceTail(dim, tail_channels)
        self.out_channels = tail_channels
        self.feature_channels = (dim,) * (len(taps) + 1) if taps else ()

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        vit = self.vit
        tokens = vit.patch_embed(images)
        x = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1) + vit.pos_embed
        taps: list[torch.Tensor] = []
        for number, block in enumerate(vit.blocks, start=1):
            x = block(x)
            taps.extend(tokens_to_map(self.norm_seg[i](x)[:, 1:], self.grid)
                        for i, tap in enumerate(self.taps) if tap == number)
        final = tokens_to_map(self.token_norm(x)[:, 1:], self.grid)
        sequence = self.tail(final).squeeze(2).transpose(1, 2)  # V [B, C, 1, w] → X [B, w, C]
        return BackboneFeatures((*taps, final) if self.taps else (), sequence)
