"""SVTR-Large, the SIGA_S backbone (SPEC_SIGA_S §3.2): the glyph network's F0, F1, F2 and the visual sequence X.

Module names mirror the official ``model_one.FeatureExtraction`` state_dict (``patch_embed.proj0.0``,
``blocks1.{i}.mixer.qkv``, ``sub_sample1.conv``, ``norm``, ``last_conv``, ...), so an official checkpoint
maps onto this module by stripping one prefix.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.features import BackboneFeatures

MIXERS = ("Local", "Global")


def conv_out(size: int, stride: int) -> int:
    """Output length of a 3×3 convolution with padding 1 and ``stride`` over ``size`` positions."""
    return (size - 1) // stride + 1


def local_attention_mask(height: int, width: int, window: tuple[int, int]) -> torch.Tensor:
    """Additive mask [N, N] (N = height·width, row-major tokens) of the Local mixer, float32: 0 where key
    (h′, w′) lies in the window of query (h, w), −∞ elsewhere. The window spans h′ − h ∈ [−(kh//2),
    kh − 1 − kh//2] (likewise in w), i.e. centred for odd sizes and clipped at the borders, as the official
    padded-and-cropped construction."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    visible = torch.ones(height * width, height * width, dtype=torch.bool)
    for coords, size in ((rows, window[0]), (cols, window[1])):
        offset = coords[None, :] - coords[:, None]  # [query, key]
        visible &= (offset >= -(size // 2)) & (offset <= size - 1 - size // 2)
    return torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens [B, N, D] (row-major over ``grid`` = (H, W)) → map [B, D, H, W]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's residual branch [B, ...] is dropped with probability
    ``rate`` and kept ones are scaled by 1/(1 − rate); the identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Attention(nn.Module):
    """Multi-head self-attention on tokens [B, N, D]; q is scaled by d^−1/2 before the product (as the
    official code, so float64 results agree to rounding). ``local`` says whether the block takes its stage's
    window mask; the mask itself lives on the stage (one per stage, not in the state_dict)."""

    def __init__(self, dim: int, num_heads: int, local: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.local = local
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], mask [N, N] additive (0/−∞) or None → [B, N, D]."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # [B, h, N, d]
        if mask is not None:
            mask = mask.to(dtype=q.dtype, device=q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Linear(D→rD) → exact GELU → Linear(rD→D) on tokens [B, N, D]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x += DropPath(Attn(LN1(x))); x += DropPath(MLP(LN2(x))), tokens [B, N, D]."""

    def __init__(self, dim: int, num_heads: int, local: bool, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = Attention(dim, num_heads, local)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.ModuleList):
    """The blocks of one stage on a fixed token grid; owns the stage's Local window mask [N, N] as a
    non-persistent buffer (built once, follows ``.to()``, absent from the state_dict) and hands it to the
    Local blocks only."""

    def __init__(self, blocks: Sequence[Block], grid: tuple[int, int], window: tuple[int, int]):
        super().__init__(blocks)
        needs_mask = any(block.mixer.local for block in blocks)
        self.register_buffer("local_mask", local_attention_mask(*grid, window) if needs_mask else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] → [B, N, D]."""
        for block in self:
            x = block(x, self.local_mask if block.mixer.local else None)
        return x


class PatchEmbed(nn.Module):
    """Two (3×3 stride-2 conv → BN → GELU) stages: image [B, C, H, W] → F0 [B, D/2, H/2, W/2] and tokens
    [B, H/4·W/4, D] (row-major)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj0 = nn.Sequential(nn.Conv2d(in_channels, dim // 2, 3, 2, 1), nn.BatchNorm2d(dim // 2), nn.GELU())
        self.proj1 = nn.Sequential(nn.Conv2d(dim // 2, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.proj0(x)
        return f0, self.proj1(f0).flatten(2).transpose(1, 2)


class SubSample(nn.Module):
    """Patch merging: map [B, C, H, W] → Conv2d(3×3, stride (2, 1), pad 1) → tokens [B, ⌈H/2⌉·W, C′] →
    LayerNorm(eps 1e-5), no activation."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, (2, 1), 1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


class SVTRLarge(nn.Module):
    """SVTR backbone (defaults: SVTR-Large of SIGA_S at 48×160).

    Image [B, 3, H, W] → ``BackboneFeatures(levels=(F0, F1, F2), sequence=X)`` with, at the defaults,
    F0 [B, 96, 24, 80] (after the first patch-embedding stage), F1 [B, 192, 12, 40] (stage 1),
    F2 [B, 256, 6, 40] (stage 2) and X [B, 40, 384] (stage 3 → norm → row mean → 1×1 conv → Hardswish).
    ``mixers`` lists 'Local'/'Global' for every block in order over the stages; ``local_window`` is the
    (rows, cols) window of the Local mixers; drop-path rates rise linearly from 0 to ``drop_path_rate``
    over all blocks.
    """

    def __init__(self, img_size: tuple[int, int] = (48, 160), in_channels: int = 3,
                 embed_dims: tuple[int, int, int] = (192, 256, 512), depths: tuple[int, int, int] = (3, 9, 9),
                 num_heads: tuple[int, int, int] = (6, 8, 16),
                 mixers: Sequence[str] = ("Local",) * 10 + ("Global",) * 11, local_window: tuple[int, int] = (7, 11),
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, out_channels: int = 384):
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == 3:
            raise ValueError("embed_dims, depths and num_heads need one entry per stage (3)")
        if len(mixers) != sum(depths) or not set(mixers) <= set(MIXERS):
            raise ValueError(f"mixers must list {sum(depths)} entries from {MIXERS}, got {list(mixers)}")
        self.img_size = tuple(img_size)
        height, width = (conv_out(conv_out(size, 2), 2) for size in self.img_size)
        self.grids = ((height, width), (conv_out(height, 2), width), (conv_out(conv_out(height, 2), 2), width))
        self.out_channels = out_channels
        self.feature_channels = (embed_dims[0] // 2, embed_dims[0], embed_dims[1])
        self.patch_embed = PatchEmbed(in_channels, embed_dims[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, height * width, embed_dims[0]))
        rates = torch.linspace(0.0, drop_path_rate, sum(depths), dtype=torch.float64).tolist()
        first = 0
        for index, (dim, depth, heads, grid) in enumerate(zip(embed_dims, depths, num_heads, self.grids), start=1):
            blocks = [Block(dim, heads, mixers[i] == "Local", mlp_ratio, rates[i]) for i in range(first, first + depth)]
            setattr(self, f"blocks{index}", Stage(blocks, grid, tuple(local_window)))
            first += depth
        self.sub_sample1 = SubSample(embed_dims[0], embed_dims[1])
        self.sub_sample2 = SubSample(embed_dims[1], embed_dims[2])
        self.norm = nn.LayerNorm(embed_dims[2], eps=1e-6)
        self.last_conv = nn.Conv2d(embed_dims[2], out_channels, 1, bias=False)
        self.hardswish = nn.Hardswish()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SVTR's own initialisation (SPEC_SIGA_S §5.3): pos_embed xavier-normal, Linear N(0, 0.01), conv
        kaiming-normal (fan_out), zero biases, unit/zero norms. Of these only pos_embed survives the model's
        training initialisation."""
        nn.init.xavier_normal_(self.pos_embed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        """Image [B, C, H, W] with (H, W) = img_size → levels (F0, F1, F2) and sequence X [B, W/4, out_channels]."""
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[2:])} does not match img_size {self.img_size}")
        f0, tokens = self.patch_embed(x)
        f1 = tokens_to_map(self.blocks1(tokens + self.pos_embed), self.grids[0])
        f2 = tokens_to_map(self.blocks2(self.sub_sample1(f1)), self.grids[1])
        last = tokens_to_map(self.norm(self.blocks3(self.sub_sample2(f2))), self.grids[2])
        v = self.hardswish(self.last_conv(F.adaptive_avg_pool2d(last, (1, self.grids[2][1]))))  # [B, C, 1, W/4]
        return BackboneFeatures((f0, f1, f2), v.squeeze(2).transpose(1, 2))
