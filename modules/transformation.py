"""TPS rectifier (RARE-style, SPEC §3.1): localisation network, grid generator, joint image/mask sampling."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def base_fiducials(num_fiducial: int) -> torch.Tensor:
    """Fiducial points on the top (y = −1) and bottom (y = +1) edges, [F, 2] in float64, top row first."""
    xs = torch.linspace(-1.0, 1.0, num_fiducial // 2, dtype=torch.float64)
    top = torch.stack([xs, -torch.ones_like(xs)], 1)
    bottom = torch.stack([xs, torch.ones_like(xs)], 1)
    return torch.cat([top, bottom], 0)


def rare_initial_bias(num_fiducial: int) -> torch.Tensor:
    """RARE's initial localisation output: top y from 0 to −1, bottom y from 1 to 0 (flattened x, y pairs)."""
    half = num_fiducial // 2
    xs = torch.linspace(-1.0, 1.0, half)
    top = torch.stack([xs, torch.linspace(0.0, -1.0, half)], 1)
    bottom = torch.stack([xs, torch.linspace(1.0, 0.0, half)], 1)
    return torch.cat([top, bottom], 0).reshape(-1)


def tps_grid_basis(num_fiducial: int, height: int, width: int) -> torch.Tensor:
    """The constant [H·W, F] matrix mapping fiducials C′ [F, 2] to the sampling grid P′ = basis · C′.

    It is P_hat · Δ_C⁻¹ restricted to its first F columns (the rows of [C′; 0] that are non-zero),
    folded once in float64 so that float32 training keeps an accurate grid (golden README §6).
    """
    ctrl = base_fiducials(num_fiducial)
    dist = torch.cdist(ctrl, ctrl)
    dist.fill_diagonal_(1.0)
    hat_c = dist.pow(2) * dist.log()
    ones = torch.ones(num_fiducial, 1, dtype=torch.float64)
    delta = torch.cat([
        torch.cat([ones, ctrl, hat_c], 1),
        torch.cat([torch.zeros(2, 3, dtype=torch.float64), ctrl.t()], 1),
        torch.cat([torch.zeros(1, 3, dtype=torch.float64), ones.t()], 1),
    ], 0)
    inv_delta = torch.linalg.inv(delta)
    xs = (torch.arange(width, dtype=torch.float64) * 2 - width + 1) / width
    ys = (torch.arange(height, dtype=torch.float64) * 2 - height + 1) / height
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2)  # (x, y), y-major
    r = torch.cdist(grid, ctrl)
    p_hat = torch.cat([torch.ones(grid.shape[0], 1, dtype=torch.float64), grid, r.pow(2) * torch.log(r + 1e-6)], 1)
    return p_hat @ inv_delta[:, :num_fiducial]


class LocalizationNetwork(nn.Module):
    """Predicts the F fiducial points C′ [B, F, 2] of the input image."""

    def __init__(self, num_fiducial: int, in_channels: int, channels: tuple[int, ...], fc_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2, 2) if index < len(channels) - 1 else nn.AdaptiveAvgPool2d(1))
            previous = width
        self.conv = nn.Sequential(*layers)
        self.localization_fc1 = nn.Sequential(nn.Linear(previous, fc_size), nn.ReLU(True))
        self.localization_fc2 = nn.Linear(fc_size, num_fiducial * 2)
        self.num_fiducial = num_fiducial
        self.reset_fc2()

    def reset_fc2(self) -> None:
        """Zero weight and RARE bias, so that training starts from a fixed, plausible warp."""
        nn.init.zeros_(self.localization_fc2.weight)
        with torch.no_grad():
            self.localization_fc2.bias.copy_(rare_initial_bias(self.num_fiducial))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.conv(image).flatten(1)
        return self.localization_fc2(self.localization_fc1(features)).view(-1, self.num_fiducial, 2)


class GridGenerator(nn.Module):
    """Turns fiducials into a sampling grid; its constant basis is a recomputed, unsaved buffer."""

    def __init__(self, num_fiducial: int, height: int, width: int):
        super().__init__()
        self.num_fiducial, self.height, self.width = num_fiducial, height, width
        self.register_buffer("basis", tps_grid_basis(num_fiducial, height, width).float(), persistent=False)

    def _apply(self, fn, recurse=True):
        """Recompute the basis in float64 after a dtype/device move (a float32 copy upcast loses precision)."""
        super()._apply(fn, recurse)
        exact = tps_grid_basis(self.num_fiducial, self.height, self.width)
        self.basis = exact.to(device=self.basis.device, dtype=self.basis.dtype)
        return self

    def forward(self, fiducials: torch.Tensor) -> torch.Tensor:
        """[B, F, 2] → grid [B, H, W, 2]."""
        grid = torch.matmul(self.basis.to(fiducials.dtype), fiducials)
        return grid.view(-1, self.height, self.width, 2)


class TPSRectifier(nn.Module):
    """Thin-plate-spline rectification; the mask, when given, is warped with the image's grid."""

    def __init__(self, num_fiducial: int, height: int, width: int, in_channels: int = 3,
                 channels: tuple[int, ...] = (64, 128, 256, 512), fc_size: int = 256):
        super().__init__()
        self.localization = LocalizationNetwork(num_fiducial, in_channels, channels, fc_size)
        self.grid_generator = GridGenerator(num_fiducial, height, width)

        self.frozen_statistics = False

    def set_identity(self) -> None:
        """Predict the base fiducials whatever the input (zero weight, base-fiducial bias): the identity warp,
        so that a frozen TPS without pretrained weights passes images through unchanged (up to resampling)."""
        fc2 = self.localization.localization_fc2
        nn.init.zeros_(fc2.weight)
        with torch.no_grad():
            fc2.bias.copy_(base_fiducials(self.localization.num_fiducial).reshape(-1).to(fc2.bias.dtype))

    def freeze(self, statistics: bool = False) -> None:
        """Exclude every TPS parameter from training (SPEC §3.1). Its BatchNorms still follow
        ``train()`` like the official code (§7 #7) unless ``statistics`` keeps them in eval mode."""
        self.requires_grad_(False)
        self.frozen_statistics = statistics
        self.train(self.training)

    def train(self, mode: bool = True) -> "TPSRectifier":
        super().train(mode)
        if self.frozen_statistics:
            self.localization.eval()
        return self

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image [B, 3, H, W] (and mask [B, 1, H, W]) → rectified image (and mask) of the same size.

        Always in float32, also under autocast: bfloat16 errors in the fiducials shift the whole sampling
        grid, and the TPS is a small share of the model's FLOPs (README, Benchmark)."""
        rectified, warped_mask, _ = self._rectify(image, mask)
        return rectified, warped_mask

    def rectify_with_grid(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rectified image and the sampling grid [B, H, W, 2] that made it: input coordinates in [−1, 1]
        (x, y), read by ``grid_sample`` with ``align_corners=True`` (for tracing where a model looked)."""
        rectified, _, grid = self._rectify(image, None)
        return rectified, grid

    def _rectify(self, image: torch.Tensor, mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        with torch.autocast(image.device.type, enabled=False):
            image = image.to(torch.promote_types(image.dtype, torch.float32))
            grid = self.grid_generator(self.localization(image))
            rectified = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                                      align_corners=True)
            if mask is None:
                return rectified, None, grid
            warped_mask = F.grid_sample(mask.to(grid.dtype), grid, mode="bilinear", padding_mode="border",
                                        align_corners=True)
            return rectified, warped_mask, grid


def identity_grid(image: torch.Tensor) -> torch.Tensor:
    """The sampling grid [B, H, W, 2] of no warp for image [B, C, H, W]: with ``align_corners=True`` output pixel
    (i, j) reads input pixel (i, j) (up to float rounding). On the image's device, in its floating dtype (float32
    at least)."""
    batch, _, height, width = image.shape
    dtype = torch.promote_types(image.dtype, torch.float32)
    xs = torch.linspace(-1.0, 1.0, width, device=image.device, dtype=dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=image.device, dtype=dtype)
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)], -1)
    return grid.expand(batch, height, width, 2)


class NoRectifier(nn.Module):
    """The rectifier slot of a model without one (SIGA_T): image and mask pass through unchanged."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return image, mask

    def rectify_with_grid(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image unchanged and the identity sampling grid (see ``TPSRectifier.rectify_with_grid``)."""
        return image, identity_grid(image)
