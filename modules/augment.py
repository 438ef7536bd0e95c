"""Joint image/mask augmentation at the original resolution (SPEC §1.6).

Geometry (p = 0.5) warps the image and the text mask with one matrix and one interpolation flag;
deterioration (p = 0.25) and colour jitter (p = 0.25) touch the image only. ``mode="sample"`` draws
the geometric op and the deterioration parameters per sample (the evident intent); ``mode="fixed"``
draws them once at construction, reproducing the official once-per-process quirk (SPEC bug #8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)
GEOMETRY_OPS = ("rotation", "affine", "perspective")
DETERIORATION_OPS = ("noise", "blur", "rescale")
MODES = ("sample", "fixed")


def sym(rng: np.random.Generator, magnitude: float) -> float:
    """A value in [−m, m] peaked at 0: (Beta(4, 4) − 0.5)·2·m."""
    return (rng.beta(4, 4) - 0.5) * 2 * magnitude


def asym(rng: np.random.Generator, magnitude: float) -> float:
    """A value in [0, m] skewed towards 0: Beta(1, 4)·m."""
    return rng.beta(1, 4) * magnitude


def _box_size(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer min/max corners of the rotated bounding box of ``points`` [N, 2]."""
    box = cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32))).astype(np.int64)
    return box.min(0), box.max(0)


def rotation_matrix(rng: np.random.Generator, h: int, w: int, degrees: float = 45.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Rotation about the centre on a canvas grown to fit the rotated image."""
    angle = sym(rng, degrees)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    sin, cos = abs(math.sin(math.radians(angle))), abs(math.cos(math.radians(angle)))
    dst_w, dst_h = max(int(h * sin + w * cos), 1), max(int(h * cos + w * sin), 1)
    matrix[0, 2] += (dst_w - w) / 2
    matrix[1, 2] += (dst_h - h) / 2
    return matrix, (dst_w, dst_h)


def affine_matrix(rng: np.random.Generator, h: int, w: int, degrees: float = 45.0, scale=(0.5, 2.0),
                  shear=(45.0, 15.0)) -> tuple[np.ndarray, tuple[int, int]]:
    """The torchvision-0.4 *inverse* affine matrix about the centre, used as a forward map (as ABINet
    and the official code do), on a canvas sized to the box of the transformed corners."""
    rot = math.radians(sym(rng, degrees))
    factor = rng.uniform(*scale)
    sx, sy = math.radians(sym(rng, shear[0])), math.radians(sym(rng, shear[1]))
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    linear = np.array([[d, -b], [-c, a]]) / factor
    centre = np.array([w / 2, h / 2])
    matrix = np.concatenate([linear, (centre - linear @ centre)[:, None]], 1)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    low, high = _box_size(corners @ linear.T + matrix[:, 2])
    dst_w, dst_h = max(int(high[0] - low[0]), 1), max(int(high[1] - low[1]), 1)
    matrix[0, 2] += (dst_w - w) / 2
    matrix[1, 2] += (dst_h - h) / 2
    return matrix, (dst_w, dst_h)


def perspective_matrix(rng: np.random.Generator, h: int, w: int, distortion: float = 0.5
                       ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Inward corner offsets; returns the 3×3 matrix, the warp size and the crop origin."""
    oh = [int(asym(rng, distortion * h / 2)) for _ in range(4)]
    ow = [int(asym(rng, distortion * w / 2)) for _ in range(4)]
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    dst = np.array([[ow[0], oh[0]], [w - 1 - ow[1], oh[1]], [w - 1 - ow[2], h - 1 - oh[2]],
                    [ow[3], h - 1 - oh[3]]], np.float32)
    low, high = _box_size(dst)
    low = np.maximum(low, 0)
    size = (max(int(high[0]), int(low[0]) + 1), max(int(high[1]), int(low[1]) + 1))
    return cv2.getPerspectiveTransform(src, dst), size, (int(low[0]), int(low[1]))


def warp_geometry(op: str, rng: np.random.Generator, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Apply one geometric op with the same matrix and interpolation to every array (image, mask)."""
    h, w = arrays[0].shape[:2]
    flags = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    if op == "perspective":
        matrix, size, (x0, y0) = perspective_matrix(rng, h, w)
        warped = [cv2.warpPerspective(a, matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE) for a in arrays]
        return [a[y0:, x0:] for a in warped]
    matrix, size = rotation_matrix(rng, h, w) if op == "rotation" else affine_matrix(rng, h, w)
    return [cv2.warpAffine(a, matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE) for a in arrays]


@dataclass(frozen=True)
class DeteriorationParams:
    """The deterioration draw: op order, noise variance, blur size/angle, rescale factor."""

    order: tuple[str, ...]
    noise_var: int
    blur_size: int
    blur_angle: float
    rescale_factor: int

    @classmethod
    def draw(cls, rng: np.random.Generator, var: float = 20, degrees: float = 6, factor: float = 4) -> "DeteriorationParams":
        return cls(order=tuple(DETERIORATION_OPS[i] for i in rng.permutation(3)),
                   noise_var=max(int(asym(rng, var)), 1), blur_size=max(int(asym(rng, degrees)), 1),
                   blur_angle=float(rng.uniform(-90, 90)), rescale_factor=int(round(rng.uniform(0, factor))))


def deteriorate(image: np.ndarray, params: DeteriorationParams, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, motion blur and down/up-rescaling of a uint8 RGB array, in ``params.order``."""
    for op in params.order:
        if op == "noise":
            noisy = image.astype(np.float64) + rng.normal(0, math.sqrt(params.noise_var), image.shape)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
        elif op == "blur" and params.blur_size > 1:
            k = params.blur_size
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2, :] = 1.0
            rotation = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), params.blur_angle, 1.0)
            kernel = cv2.warpAffine(kernel, rotation, (k, k)) / k
            image = cv2.filter2D(image, -1, kernel)
        elif op == "rescale" and params.rescale_factor > 0:
            h, w = image.shape[:2]
            small = cv2.resize(image, (512, 128), interpolation=INTERPOLATIONS[int(rng.integers(4))])
            for _ in range(params.rescale_factor):
                small = cv2.pyrDown(small)
            image = cv2.resize(small, (w, h), interpolation=INTERPOLATIONS[int(rng.integers(4))])
    return image


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness=0.5, contrast=0.5, saturation=0.5,
                 hue=0.1) -> Image.Image:
    """torchvision-style ColorJitter driven by ``rng``: the four adjustments in a random order."""
    adjustments = [
        lambda im: TF.adjust_brightness(im, rng.uniform(1 - brightness, 1 + brightness)),
        lambda im: TF.adjust_contrast(im, rng.uniform(1 - contrast, 1 + contrast)),
        lambda im: TF.adjust_saturation(im, rng.uniform(1 - saturation, 1 + saturation)),
        lambda im: TF.adjust_hue(im, rng.uniform(-hue, hue)),
    ]
    for index in rng.permutation(4):
        image = adjustments[index](image)
    return image


class JointAugment:
    """Augment an RGB PIL image and (optionally) its float text mask [h, w] together."""

    def __init__(self, mode: str = "sample", rng: np.random.Generator | None = None, geometry_p: float = 0.5,
                 deterioration_p: float = 0.25, color_p: float = 0.25, geometry_ops: tuple[str, ...] = GEOMETRY_OPS):
        if mode not in MODES:
            raise ValueError(f"aug mode must be one of {MODES}, got {mode!r}")
        unknown = set(geometry_ops) - set(GEOMETRY_OPS)
        if unknown or not geometry_ops:
            raise ValueError(f"geometry ops must be a non-empty subset of {GEOMETRY_OPS}, got {geometry_ops}")
        self.mode = mode
        self.geometry_p, self.deterioration_p, self.color_p = geometry_p, deterioration_p, color_p
        self.geometry_ops = tuple(geometry_ops)
        self.fixed_geometry: str | None = None
        self.fixed_deterioration: DeteriorationParams | None = None
        if mode == "fixed":
            rng = rng if rng is not None else np.random.default_rng()
            self.fixed_geometry = self.geometry_ops[int(rng.integers(len(self.geometry_ops)))]
            self.fixed_deterioration = DeteriorationParams.draw(rng)

    def __call__(self, image: Image.Image, mask: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[Image.Image, np.ndarray | None]:
        if rng.random() < self.geometry_p:
            op = self.fixed_geometry or self.geometry_ops[int(rng.integers(len(self.geometry_ops)))]
            arrays = [np.asarray(image)] + ([mask.astype(np.float32)] if mask is not None else [])
            warped = warp_geometry(op, rng, arrays)
            image = Image.fromarray(warped[0])
            mask = warped[1] if mask is not None else None
        if rng.random() < self.deterioration_p:
            params = self.fixed_deterioration or DeteriorationParams.draw(rng)
            image = Image.fromarray(deteriorate(np.asarray(image), params, rng))
        if rng.random() < self.color_p:
            image = color_jitter(image, rng)
        return image, mask
