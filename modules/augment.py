"""Joint image/mask augmentation at the original resolution, before resizing (SPEC §1.6).

Three stages run in order, each behind its own coin flip:

* geometry (p = 0.5): rotation, affine or perspective; the image **and** the text mask are warped with
  one matrix and one interpolation flag (OpenCV, ``BORDER_REPLICATE``), so they stay aligned; the mask
  may become non-binary at the edges and is binarised only later (SPEC §4.2);
* deterioration (p = 0.25, image only): Gaussian noise, motion blur and down/up-rescaling in some order;
* colour jitter (p = 0.25, image only): brightness/contrast/saturation/hue like torchvision's
  ``ColorJitter(0.5, 0.5, 0.5, 0.1)``, but driven by the caller's numpy generator.

``mode="sample"`` draws the geometric op type and the deterioration parameters per sample (the evident
intent). ``mode="fixed"`` reproduces the official quirk: the op type and every deterioration parameter
(noise variance, blur size and angle, rescale factor, op order) are drawn once, at construction.
Every per-sample draw comes from the ``rng`` passed to :meth:`JointAugment.__call__`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = ["JointAugment", "Warp", "DeteriorationParams", "GEOMETRY_OPS", "DETERIORATION_OPS", "MODES",
           "sym", "asym", "rotation_warp", "affine_warp", "perspective_warp", "gaussian_noise", "motion_blur",
           "rescale", "color_jitter"]

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)
GEOMETRY_OPS = ("rotation", "affine", "perspective")
DETERIORATION_OPS = ("noise", "blur", "rescale")
MODES = ("sample", "fixed")


# --------------------------------------------------------------------------------------------------
# sampling helpers

def sym(rng: np.random.Generator, magnitude: float) -> float:
    """A value in [−m, m] peaked at 0: (Beta(4, 4) − 0.5)·2·m."""
    return float((rng.beta(4, 4) - 0.5) * 2 * magnitude)


def asym(rng: np.random.Generator, magnitude: float) -> float:
    """A value in [0, m] skewed towards 0: Beta(1, 4)·m."""
    return float(rng.beta(1, 4) * magnitude)


def random_interpolation(rng: np.random.Generator) -> int:
    """An OpenCV interpolation flag drawn uniformly from NEAREST, LINEAR, CUBIC, AREA."""
    return INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]


# --------------------------------------------------------------------------------------------------
# geometry

@dataclass(frozen=True)
class Warp:
    """One geometric warp: a 2×3 (affine) or 3×3 (perspective) forward matrix, the output size
    ``(w, h)``, the interpolation flag and the origin ``(x, y)`` of a crop taken after warping."""

    matrix: np.ndarray
    size: tuple[int, int]
    interpolation: int
    crop: tuple[int, int] = (0, 0)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Warp one array ([h, w] or [h, w, c]) with replicated borders, then crop."""
        warp = cv2.warpPerspective if self.matrix.shape[0] == 3 else cv2.warpAffine
        out = warp(array, self.matrix, self.size, flags=self.interpolation, borderMode=cv2.BORDER_REPLICATE)
        x0, y0 = self.crop
        return np.ascontiguousarray(out[y0:, x0:])


def _box_bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer (min, max) corners of the axis-aligned box around the minimum-area rectangle of ``points``."""
    box = cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32))).astype(np.int64)
    return box.min(0), box.max(0)


def _pixel_corners(h: int, w: int) -> np.ndarray:
    """The four corner pixel centres, clockwise from the top left, as float64 [4, 2] (x, y)."""
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def rotation_warp(rng: np.random.Generator, h: int, w: int, degrees: float = 45.0) -> Warp:
    """Rotation by sym(degrees) about the centre (counter-clockwise positive), scale 1, on a canvas
    grown to ``int(h|sin|+w|cos|) × int(h|cos|+w|sin|)`` with the centre moved to the new centre."""
    angle = sym(rng, degrees)
    interpolation = random_interpolation(rng)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    sin, cos = abs(math.sin(math.radians(angle))), abs(math.cos(math.radians(angle)))
    dst_w, dst_h = max(int(h * sin + w * cos), 1), max(int(h * cos + w * sin), 1)
    matrix[0, 2] += (dst_w - w) / 2
    matrix[1, 2] += (dst_h - h) / 2
    return Warp(matrix, (dst_w, dst_h), interpolation)


def inverse_affine_linear(angle: float, scale: float, shear: tuple[float, float]) -> np.ndarray:
    """The 2×2 part of the torchvision-0.4-style *inverse* affine matrix (angles in degrees).

    With r = angle, (sx, sy) = shear: a = cos(r−sy)/cos(sy), b = −cos(r−sy)·tan(sx)/cos(sy) − sin r,
    c = sin(r−sy)/cos(sy), d = −sin(r−sy)·tan(sx)/cos(sy) + cos r; the inverse is [[d, −b], [−c, a]]/scale
    (the forward rotation-shear matrix [[a, b], [c, d]] has determinant 1).
    """
    r, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(r - sy) / math.cos(sy)
    b = -math.cos(r - sy) * math.tan(sx) / math.cos(sy) - math.sin(r)
    c = math.sin(r - sy) / math.cos(sy)
    d = -math.sin(r - sy) * math.tan(sx) / math.cos(sy) + math.cos(r)
    return np.array([[d, -b], [-c, a]], np.float64) / scale


def affine_warp(rng: np.random.Generator, h: int, w: int, degrees: float = 45.0,
                scale: tuple[float, float] = (0.5, 2.0), shear: tuple[float, float] = (45.0, 15.0)) -> Warp:
    """Random rotation/scale/shear about the centre (no translation).

    Faithful quirk (inherited from ABINet): the *inverse* matrix of :func:`inverse_affine_linear`,
    completed with the centre terms, is handed to ``warpAffine`` as the forward map. The canvas is the
    integer box around the transformed corners; the translation moves the centre to its centre.
    """
    angle = sym(rng, degrees)
    factor = float(rng.uniform(*scale))
    shear_xy = (sym(rng, shear[0]), sym(rng, shear[1]))
    interpolation = random_interpolation(rng)
    linear = inverse_affine_linear(angle, factor, shear_xy)
    centre = np.array([w / 2, h / 2])
    matrix = np.concatenate([linear, (centre - linear @ centre)[:, None]], axis=1)
    low, high = _box_bounds(_pixel_corners(h, w) @ linear.T + matrix[:, 2])
    dst_w, dst_h = max(int(high[0] - low[0]), 1), max(int(high[1] - low[1]), 1)
    matrix[0, 2] += (dst_w - w) / 2
    matrix[1, 2] += (dst_h - h) / 2
    return Warp(matrix, (dst_w, dst_h), interpolation)


def perspective_warp(rng: np.random.Generator, h: int, w: int, distortion: float = 0.5) -> Warp:
    """Move each corner inwards by (int(asym(d·w/2)), int(asym(d·h/2))); warp to the (max x, max y) of
    the box around the new quad and crop from its (min x, min y), both clipped at ≥ 0.

    Images thinner than 2 pixels have no quad to distort and get the identity.
    """
    oh = [int(asym(rng, distortion * h / 2)) for _ in range(4)]
    ow = [int(asym(rng, distortion * w / 2)) for _ in range(4)]
    interpolation = random_interpolation(rng)
    if h < 2 or w < 2:
        return Warp(np.eye(3), (w, h), interpolation)
    src = _pixel_corners(h, w).astype(np.float32)
    dst = np.array([[ow[0], oh[0]], [w - 1 - ow[1], oh[1]], [w - 1 - ow[2], h - 1 - oh[2]],
                    [ow[3], h - 1 - oh[3]]], np.float32)
    low, high = _box_bounds(dst)
    x0, y0 = (int(v) for v in np.maximum(low, 0))
    size = (max(int(high[0]), x0 + 1), max(int(high[1]), y0 + 1))     # never an empty crop
    return Warp(cv2.getPerspectiveTransform(src, dst), size, interpolation, (x0, y0))


GEOMETRY_BUILDERS: dict[str, Callable[[np.random.Generator, int, int], Warp]] = {
    "rotation": rotation_warp, "affine": affine_warp, "perspective": perspective_warp}


# --------------------------------------------------------------------------------------------------
# deterioration (image only, uint8 [h, w, 3])

def gaussian_noise(image: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, √var) per pixel and channel; clip to [0, 255]; uint8."""
    noisy = image.astype(np.float32) + rng.normal(0.0, math.sqrt(var), image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def motion_blur_kernel(size: int, angle: float) -> np.ndarray:
    """A size×size kernel: a horizontal line through the centre row, rotated by ``angle`` degrees, /size."""
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2, :] = 1.0
    centre = ((size - 1) / 2, (size - 1) / 2)
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D(centre, angle, 1.0), (size, size))
    return kernel / size


def motion_blur(image: np.ndarray, size: int, angle: float) -> np.ndarray:
    """Linear motion blur; ``size`` 1 is the identity."""
    if size <= 1:
        return image
    return cv2.filter2D(image, -1, motion_blur_kernel(size, angle))


def rescale(image: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """Resize to 512×128, ``pyrDown`` ``factor`` times, resize back (random interpolations); 0 = identity."""
    if factor <= 0:
        return image
    h, w = image.shape[:2]
    small = cv2.resize(image, (512, 128), interpolation=random_interpolation(rng))
    for _ in range(factor):
        small = cv2.pyrDown(small)
    return cv2.resize(small, (w, h), interpolation=random_interpolation(rng))


@dataclass(frozen=True)
class DeteriorationParams:
    """One deterioration draw: the op order, the noise variance, the blur size/angle, the rescale factor."""

    order: tuple[str, ...]
    noise_var: int
    blur_size: int
    blur_angle: float
    rescale_factor: int

    @classmethod
    def draw(cls, rng: np.random.Generator, var: float = 20, degrees: float = 6, factor: float = 4
             ) -> "DeteriorationParams":
        """``CVDeterioration(var=20, degrees=6, factor=4)``: var = max(int(asym(20)), 1),
        k = max(int(asym(6)), 1), angle ~ U(−90, 90), f = round(U(0, 4)), random op order."""
        return cls(order=tuple(DETERIORATION_OPS[i] for i in rng.permutation(len(DETERIORATION_OPS))),
                   noise_var=max(int(asym(rng, var)), 1),
                   blur_size=max(int(asym(rng, degrees)), 1),
                   blur_angle=float(rng.uniform(-90, 90)),
                   rescale_factor=int(round(rng.uniform(0, factor))))

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Run the three ops in ``order`` on a uint8 [h, w, 3] array; noise values/interpolations from ``rng``."""
        for op in self.order:
            if op == "noise":
                image = gaussian_noise(image, self.noise_var, rng)
            elif op == "blur":
                image = motion_blur(image, self.blur_size, self.blur_angle)
            else:
                image = rescale(image, self.rescale_factor, rng)
        return image


# --------------------------------------------------------------------------------------------------
# colour (image only)

def color_jitter(image: Image.Image, rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.5,
                 saturation: float = 0.5, hue: float = 0.1) -> Image.Image:
    """torchvision ``ColorJitter`` semantics (factors U[max(0, 1−x), 1+x], hue U[−h, h], the four
    adjustments in a random order), with every draw taken from ``rng`` instead of torch's RNG."""
    factors = {
        "brightness": rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        "contrast": rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        "saturation": rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
        "hue": rng.uniform(-hue, hue),
    }
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    names = list(factors)
    for index in rng.permutation(len(names)):
        name = names[index]
        image = adjust[name](image, float(factors[name]))
    return image


# --------------------------------------------------------------------------------------------------
# the pipeline

class JointAugment:
    """Augment an RGB PIL image and, optionally, its float text mask [h, w] together (SPEC §1.6).

    ``mode``: ``"sample"`` (per-sample op type and deterioration parameters) or ``"fixed"`` (both drawn
    once here from ``rng``, the official behaviour). ``geometry_ops`` restricts the geometric ops
    (e.g. to force one in tests). The ``*_p`` are the three stages' probabilities.
    """

    def __init__(self, mode: str = "sample", rng: np.random.Generator | None = None, geometry_p: float = 0.5,
                 deterioration_p: float = 0.25, color_p: float = 0.25,
                 geometry_ops: tuple[str, ...] | list[str] = GEOMETRY_OPS):
        if mode not in MODES:
            raise ValueError(f"augmentation mode must be one of {MODES}, got {mode!r}")
        geometry_ops = tuple(geometry_ops)
        if not geometry_ops or set(geometry_ops) - set(GEOMETRY_OPS):
            raise ValueError(f"geometry_ops must be a non-empty subset of {GEOMETRY_OPS}, got {geometry_ops}")
        self.mode = mode
        self.geometry_p, self.deterioration_p, self.color_p = geometry_p, deterioration_p, color_p
        self.geometry_ops = geometry_ops
        self.fixed_geometry: str | None = None
        self.fixed_deterioration: DeteriorationParams | None = None
        if mode == "fixed":
            rng = rng if rng is not None else np.random.default_rng()
            self.fixed_geometry = self._sample_geometry_op(rng)
            self.fixed_deterioration = DeteriorationParams.draw(rng)

    def __repr__(self) -> str:
        fixed = f", geometry={self.fixed_geometry}, deterioration={self.fixed_deterioration}" if self.mode == "fixed" else ""
        return (f"JointAugment(mode={self.mode!r}, p=({self.geometry_p}, {self.deterioration_p}, {self.color_p}), "
                f"geometry_ops={self.geometry_ops}{fixed})")

    def _sample_geometry_op(self, rng: np.random.Generator) -> str:
        return self.geometry_ops[int(rng.integers(len(self.geometry_ops)))]

    def geometry_op(self, rng: np.random.Generator) -> str:
        """The geometric op type of one sample (the construction-time one in fixed mode)."""
        return self.fixed_geometry if self.fixed_geometry is not None else self._sample_geometry_op(rng)

    def deterioration(self, rng: np.random.Generator) -> DeteriorationParams:
        """The deterioration parameters of one sample (the construction-time ones in fixed mode)."""
        return self.fixed_deterioration if self.fixed_deterioration is not None else DeteriorationParams.draw(rng)

    def __call__(self, image: Image.Image, mask: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[Image.Image, np.ndarray | None]:
        """Augmented (RGB image, mask at the image's new size, or None when ``mask`` is None).

        A geometric warp makes the mask float32 (interpolated edges); otherwise it keeps its dtype, so an
        integer {0,1} mask is still resized as an integer image like the official data path (SPEC §1.7).
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (image.height, image.width):
                raise ValueError(f"mask shape {mask.shape} != image (h, w) {(image.height, image.width)}")
        if rng.random() < self.geometry_p:
            op = self.geometry_op(rng)
            warp = GEOMETRY_BUILDERS[op](rng, image.height, image.width)
            image = Image.fromarray(warp.apply(np.asarray(image)))
            if mask is not None:
                mask = warp.apply(mask.astype(np.float32))
        if rng.random() < self.deterioration_p:
            image = Image.fromarray(self.deterioration(rng).apply(np.asarray(image), rng))
        if rng.random() < self.color_p:
            image = color_jitter(image, rng)
        return image, mask
