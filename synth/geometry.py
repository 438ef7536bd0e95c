"""Geometric distortions of synthetic word images that keep the image and its glyph layers aligned.

Scene text is rotated, sheared (italic or slanted views), seen in perspective, printed on bent or
uneven surfaces and laid out along curves. Every step here is ONE coordinate mapping applied to all
layers alike — the RGB image and the float32 [H, W] glyph alpha — so the glyph mask used as supervision
stays exactly on the rendered text. Random choices come from the given ``rng``. Pixel coordinates are
(x, y) with x to the right, y downwards and pixel centres at integers.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def _translation(dx: float, dy: float) -> np.ndarray:
    """3x3 homogeneous translation by (dx, dy)."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _corners(height: int, width: int) -> np.ndarray:
    """float64 [4, 2] (x, y) centres of the corner pixels: top-left, top-right, bottom-right, bottom-left."""
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """float64 [N, 2] images of (x, y) ``points`` [N, 2] under the 3x3 ``matrix`` (with the perspective divide)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.hstack([points, np.ones((len(points), 1))]) @ np.asarray(matrix, np.float64).T
    return mapped[:, :2] / mapped[:, 2:]


def random_homography(rng: np.random.Generator, height: int, width: int, max_rotation_deg: float,
                      max_shear: float, max_perspective: float) -> np.ndarray:
    """float64 3x3 matrix mapping source pixel coords (x, y, 1) of a ``height`` x ``width`` image to
    destination coords, as ``cv2.warpPerspective`` expects.

    Composed of a rotation by ±``max_rotation_deg`` about the image centre, a horizontal shear
    x += s * (y - centre_y) with |s| <= ``max_shear``, and a jitter of each mapped corner by up to
    ``max_perspective`` of the width (x) or height (y); keep ``max_perspective`` below ~0.25 so the
    quadrilateral cannot fold. Finally translated so the mapped corners' bounding box starts at (0, 0),
    i.e. the whole warped image lies in :func:`output_size`."""
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]])
    shear = np.array([[1.0, rng.uniform(-max_shear, max_shear), 0.0], [0, 1, 0], [0, 0, 1]])
    affine = _translation(centre_x, centre_y) @ rotation @ shear @ _translation(-centre_x, -centre_y)
    source = _corners(height, width)
    jitter = rng.uniform(-max_perspective, max_perspective, (4, 2)) * np.array([width, height])
    target = apply_homography(affine, source) + jitter
    matrix = cv2.getPerspectiveTransform(source.astype(np.float32), target.astype(np.float32))
    low = apply_homography(matrix, source).min(0)
    return _translation(-low[0], -low[1]) @ matrix


def output_size(matrix: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """(width, height) of the smallest canvas anchored at (0, 0) that holds the images of the corner
    pixels of a ``height`` x ``width`` image under ``matrix`` (the ``dsize`` for ``warp_layers``)."""
    high = apply_homography(matrix, _corners(height, width)).max(0)
    return int(np.ceil(high[0] - 1e-6)) + 1, int(np.ceil(high[1] - 1e-6)) + 1


def warp_layers(layers: Sequence[np.ndarray], matrix: np.ndarray, size: tuple[int, int],
                border_modes: Sequence[int]) -> list[np.ndarray]:
    """Each layer (float32 [H, W] or [H, W, C]) warped by the same ``matrix`` to ``size`` = (width,
    height) with bilinear interpolation, ``border_modes[i]`` (a ``cv2.BORDER_*``) filling outside
    layer i: ``BORDER_REFLECT`` (or ``BORDER_CONSTANT``) for images, ``BORDER_CONSTANT`` (0) for alphas."""
    matrix = np.asarray(matrix, np.float64)
    warped = []
    for layer, mode in zip(layers, border_modes, strict=True):
        out = cv2.warpPerspective(np.asarray(layer, np.float32), matrix, size, flags=cv2.INTER_LINEAR,
                                  borderMode=mode, borderValue=0)
        warped.append(out.reshape((size[1], size[0]) + np.shape(layer)[2:]))  # cv2 drops a 1-channel axis
    return warped


def elastic_field(rng: np.random.Generator, height: int, width: int, alpha: float, sigma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y): float32 [height, width] sampling maps for ``cv2.remap`` — the pixel grid plus a
    smooth random displacement (uniform noise Gaussian-smoothed with ``sigma`` > 0 px, rescaled to a
    peak of ``alpha`` px), like text on a crumpled or uneven surface."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    maps = []
    for grid in (xs, ys):
        noise = rng.uniform(-1, 1, (height, width)).astype(np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        maps.append(grid + smooth * np.float32(alpha / max(float(np.abs(smooth).max()), 1e-6)))
    return maps[0], maps[1]


def remap_layers(layers: Sequence[np.ndarray], map_x: np.ndarray, map_y: np.ndarray,
                 border_modes: Sequence[int]) -> list[np.ndarray]:
    """Each layer resampled at (``map_x``, ``map_y``) with bilinear interpolation (the same field for
    all layers), ``border_modes[i]`` filling samples outside layer i; output size is the maps' size."""
    remapped = []
    for layer, mode in zip(layers, border_modes, strict=True):
        out = cv2.remap(np.asarray(layer, np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=mode,
                        borderValue=0)
        remapped.append(out.reshape(map_x.shape + np.shape(layer)[2:]))  # cv2 drops a 1-channel axis
    return remapped


def curve_offsets(rng: np.random.Generator, xs: np.ndarray, width: float, max_bend: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(dy, angle): float64 vertical baseline offsets (px, positive = down) and tangent angles
    (radians, atan of d(dy)/dx, positive = descending to the right) at positions ``xs`` in [0, ``width``].

    Half the time a parabolic arc (0 at the middle, a at both ends: a smile for a > 0, a frown for
    a < 0), otherwise a sine of 0.3-1 periods over the width with a random phase; the amplitude a is
    uniform in ±``max_bend`` x ``width``, so |dy| <= ``max_bend`` x ``width``."""
    xs = np.asarray(xs, np.float64)
    amplitude = rng.uniform(-max_bend, max_bend) * width
    if rng.random() < 0.5:
        u = 2 * xs / width - 1
        dy, slope = amplitude * u ** 2, amplitude * 4 * u / width
    else:
        frequency = 2 * np.pi * rng.uniform(0.3, 1.0) / width
        phase = frequency * xs + rng.uniform(0, 2 * np.pi)
        dy, slope = amplitude * np.sin(phase), amplitude * frequency * np.cos(phase)
    return dy, np.arctan(slope)
