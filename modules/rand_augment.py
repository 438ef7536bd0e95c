"""Mask-aware RandAugment of SIGA_T (SPEC_SIGA_T §1.3): the 36 STRAug ops in 8 groups, applied to the resized
32×128 image together with its binary text mask.

Why a re-implementation: the official ops (the SIGA_T copy of STRAug) draw from numpy's global RNG, need
skimage/Wand and the frost photographs, and the PyPI ``straug`` has other magnitude tables and cannot carry a
mask. Here every draw comes from the caller's ``numpy.random.Generator``, only numpy/Pillow/OpenCV/scipy are
used, and photometric ops change the image only while Pixelate and the warp/geometry ops move image and mask
with one geometry (§1.3 table, magnitudes in :data:`TABLES`).

``faithful=False`` (clean): masks are warped with nearest-neighbour interpolation (a binary mask stays
binary), Shrink translates image and mask alike (T-10 fixed), GaussianBlur uses σ = table[mag] (T-11 fixed)
and Frost blends c0·img + c1·frost. ``faithful=True`` keeps the official quirks: the mask follows the image's
bilinear/bicubic interpolation (computed in float and rounded/clipped like the official uint8 mask), Shrink
draws the mask's translation independently and always in x, GaussianBlur at mag 2 draws σ from the table,
Frost blends c0²·img + c1²·frost. The op objects are built once per :class:`RandAugment` (T-13); groups are
drawn by index (T-8).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from scipy.ndimage import gaussian_filter

__all__ = ["RandAugment", "Op", "GROUPS", "GEOMETRIC_OPS", "TABLES"]

Geometry = Callable[[np.ndarray, bool], np.ndarray]  # (array, nearest: the clean mask path) -> warped array
SIDE = 224  # Curve and Rotate work on a SIDE×SIDE square

#: magnitude tables of §1.3, indexed by mag ∈ {0, 1, 2}
TABLES: dict[str, tuple] = {
    "Posterize": (1, 3, 6), "Solarize": (64, 128, 192), "Sharpness": (0.1, 0.7, 1.3), "Color": (0.1, 0.7, 1.3),
    "Contrast": (0.4, 0.3, 0.2), "Brightness": (0.1, 0.2, 0.3), "JpegCompression": (25, 18, 15),
    "Pixelate": (0.6, 0.5, 0.4),
    "GaussianNoise": (0.08, 0.10, 0.12), "ShotNoise": (13, 8, 3), "ImpulseNoise": (0.03, 0.07, 0.11),
    "SpeckleNoise": (0.15, 0.20, 0.25),
    "GaussianBlur": (0.5, 1, 2), "DefocusBlur": (2, 3, 4), "MotionBlur": ((10, 3), (12, 4), (14, 5)),
    "GlassBlur": (0.7, 0.75, 0.8), "ZoomBlur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02)),
    "Fog": ((1.5, 2), (2.0, 2), (2.5, 1.7)),
    # Snow: (loc, scale, threshold, blur radius, blur sigma, blend); the official unused zoom factor is dropped
    "Snow": ((0.1, 0.3, 0.5, 10, 4, 0.8), (0.2, 0.3, 0.5, 12, 4, 0.7), (0.55, 0.3, 0.9, 12, 8, 0.7)),
    "Frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7)), "Rain": (50, 70, 90), "Shadow": (64, 96, 128),
    "Curve": (1.1, 0.95, 0.8), "Distort": (0.2, 0.3, 0.4), "Stretch": (0.2, 0.3, 0.4),
    "Rotate": (10, 20, 30), "Perspective": (0.1, 0.2, 0.3), "Shrink": (0.2, 0.3, 0.4),
}

GROUPS: dict[str, tuple[str, ...]] = {
    "process": ("Posterize", "Solarize", "Invert", "Equalize", "AutoContrast", "Sharpness", "Color"),
    "camera": ("Contrast", "Brightness", "JpegCompression", "Pixelate"),
    "noise": ("GaussianNoise", "ShotNoise", "ImpulseNoise", "SpeckleNoise"),
    "blur": ("GaussianBlur", "DefocusBlur", "MotionBlur", "GlassBlur", "ZoomBlur"),
    "weather": ("Fog", "Snow", "Frost", "Rain", "Shadow"),
    "pattern": ("VGrid", "HGrid", "Grid", "RectGrid", "EllipseGrid"),
    "warp": ("Curve", "Distort", "Stretch"),
    "geometry": ("Rotate", "Perspective", "Shrink"),
}
GEOMETRIC_OPS = frozenset({"Pixelate", "Curve", "Distort", "Stretch", "Rotate", "Perspective", "Shrink"})


# --------------------------------------------------------------------------------------------------
# array helpers

def _float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) / 255.0


def _to_image(a: np.ndarray) -> Image.Image:
    """[0, 1] array → uint8 RGB image, truncating like the official ``astype(np.uint8)``."""
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


def _pil(a: np.ndarray, fn: Callable, resample: int, nearest: bool) -> np.ndarray:
    """Run ``fn(PIL image, resample)`` on an array (uint8 RGB or float32 "F"); NEAREST when ``nearest``."""
    return np.asarray(fn(Image.fromarray(a), Image.NEAREST if nearest else resample))


def _resize(a: np.ndarray, size: tuple[int, int], resample: int, nearest: bool) -> np.ndarray:
    return _pil(np.ascontiguousarray(a), lambda im, r: im.resize(size, r), resample, nearest)


def _translate(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """PIL affine translation (output(x, y) = input(x + dx, y + dy)), nearest, as the official TranslateXAbs."""
    size = (a.shape[1], a.shape[0])
    return _pil(a, lambda im, r: im.transform(size, Image.AFFINE, (1, 0, dx, 0, 1, dy), r), Image.NEAREST, True)


def _signed(rng: np.random.Generator, bound: float) -> float:
    value = rng.uniform(0, bound)
    return -value if rng.uniform(0, 1) > 0.5 else value


def _map_size(w: int, h: int) -> int:
    return 2 ** math.ceil(math.log2(max(w, h)) + 1)


def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] (the official ``plasma_fractal``); ``size`` a power of two."""
    a = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = a[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        a[half::step, half::step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres = a[half::step, half::step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        a[0::step, half::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        a[half::step, 0::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / decay
    a -= a.min()
    return a / a.max()


def _motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's one-sided motion-blur kernel: width 2⌈radius⌉+1 Gaussian weights along ``angle``°."""
    width = 2 * math.ceil(radius) + 1
    i = np.arange(width)
    weights = np.exp(-(i ** 2) / (2 * sigma ** 2))
    dx = np.ceil(i * math.cos(math.radians(angle)) - 0.5).astype(int)
    dy = np.ceil(i * math.sin(math.radians(angle)) - 0.5).astype(int)
    kernel = np.zeros((2 * width - 1, 2 * width - 1), np.float32)
    np.add.at(kernel, (dy + width - 1, dx + width - 1), weights / weights.sum())
    return kernel


def _motion_blur(a: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    return cv2.filter2D(a, -1, _motion_kernel(radius, sigma, angle), borderType=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------------------------------
# photometric ops: (image, mag, rng) -> image

def _parameterless(img: Image.Image, mag: int, rng: np.random.Generator, fn: Callable) -> Image.Image:
    """Invert, Equalize, AutoContrast: a PIL ImageOps function without magnitude."""
    return fn(img)


def _posterize_solarize(img: Image.Image, mag: int, rng: np.random.Generator, kind: str) -> Image.Image:
    """Posterize to R(c, c + 2) bits or Solarize above the threshold R(c, c + 64)."""
    c = TABLES[kind][mag]
    if kind == "Posterize":
        return ImageOps.posterize(img, int(rng.integers(c, c + 2)))
    return ImageOps.solarize(img, int(rng.integers(c, c + 64)))


def _enhance(img: Image.Image, mag: int, rng: np.random.Generator, kind: str) -> Image.Image:
    """Sharpness or Color: PIL ImageEnhance with factor U(c, c + 0.6)."""
    c = TABLES[kind][mag]
    return getattr(ImageEnhance, kind)(img).enhance(rng.uniform(c, c + 0.6))


def _contrast(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    a = _float(img)
    means = a.mean(axis=(0, 1), keepdims=True)
    return _to_image((a - means) * TABLES["Contrast"][mag] + means)


def _brightness(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    """HSV value + c: with hue and saturation fixed, RGB scales with V, so RGB·V'/V (grey V' where V = 0)."""
    a = _float(img)
    v = a.max(axis=2, keepdims=True)
    v_new = np.clip(v + TABLES["Brightness"][mag], 0, 1)
    return _to_image(np.where(v > 0, a * v_new / np.maximum(v, 1e-12), v_new))


def _jpeg(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=TABLES["JpegCompression"][mag])
    return Image.open(buffer).convert("RGB")


def _noise(img: Image.Image, mag: int, rng: np.random.Generator, kind: str) -> Image.Image:
    """Gaussian x + N(0, c), shot Poisson(x·c)/c, impulse salt & pepper, speckle x + x·N(0, c)."""
    a, low = _float(img), TABLES[kind][mag]
    width = {"GaussianNoise": 0.03, "ShotNoise": 7, "ImpulseNoise": 0.04, "SpeckleNoise": 0.05}[kind]
    c = rng.uniform(low, low + width)
    if kind == "GaussianNoise":
        return _to_image(a + rng.normal(size=a.shape, scale=c))
    if kind == "ShotNoise":
        return _to_image(rng.poisson(a * c) / c)
    if kind == "SpeckleNoise":
        return _to_image(a + a * rng.normal(size=a.shape, scale=c))
    flipped, salted = rng.random(a.shape) <= c, rng.random(a.shape) <= 0.5
    return _to_image(np.where(flipped, salted.astype(np.float64), a))


def _gaussian_blur(img: Image.Image, mag: int, rng: np.random.Generator, faithful: bool = False) -> Image.Image:
    """Kernel (min(W,H)/2 // 4)·2 + 1 (9 for 32×128); faithful: mag 2 draws σ from the table (T-11)."""
    sigmas = TABLES["GaussianBlur"]
    sigma = sigmas[int(rng.integers(len(sigmas)))] if faithful and mag >= 2 else sigmas[mag]
    k = (int(min(img.size) / 2) // 4) * 2 + 1
    return Image.fromarray(cv2.GaussianBlur(np.asarray(img), (k, k), sigma))


def _defocus_blur(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    grid = np.arange(-8, 9)  # 17×17 support
    x, y = np.meshgrid(grid, grid)
    disk = ((x ** 2 + y ** 2) <= TABLES["DefocusBlur"][mag] ** 2).astype(np.float32)
    kernel = cv2.GaussianBlur(disk / disk.sum(), (3, 3), 0.1)
    return _to_image(cv2.filter2D(_float(img), -1, kernel))


def _motion(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    radius, sigma = TABLES["MotionBlur"][mag]
    return Image.fromarray(_motion_blur(np.asarray(img), radius, sigma, rng.uniform(-45, 45)))


def _glass_blur(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    """Gaussian, 2 passes of local pixel "swaps", Gaussian. The official swap of numpy row views copies the
    up/left neighbour (offsets in {−1, 0}) without moving the pixel back; visiting pixels bottom-right first,
    a pass is exactly the vectorised gather below."""
    sigma = TABLES["GlassBlur"][mag]
    a = np.uint8(gaussian_filter(_float(img), (sigma, sigma, 0), mode="nearest") * 255)
    h, w = a.shape[:2]
    ys, xs = np.arange(2, h)[:, None], np.arange(2, w)[None, :]
    for _ in range(2):
        offsets = rng.integers(-1, 1, size=(h - 2, w - 2, 2))
        a[2:, 2:] = a[ys + offsets[..., 1], xs + offsets[..., 0]]
    return _to_image(gaussian_filter(a / 255.0, (sigma, sigma, 0), mode="nearest"))


def _zoom_blur(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    zooms = np.arange(*TABLES["ZoomBlur"][mag])
    out = _float(img)
    for z in zooms:
        zw, zh = int(w * z), int(h * z)
        x, y = (zw - w) // 2, (zh - h) // 2
        out += _float(img.resize((zw, zh), Image.BICUBIC).crop((x, y, x + w, y + h)))
    return _to_image(out / (len(zooms) + 1))


def _fog(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    c, decay = TABLES["Fog"][mag]
    w, h = img.size
    a = _float(img)
    top = a.max()
    a = a + c * _plasma(_map_size(w, h), decay, rng)[:h, :w, None]
    return _to_image(a * top / (top + c))


def _snow(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    loc, scale, threshold, radius, sigma, blend = TABLES["Snow"][mag]
    a = np.asarray(img, dtype=np.float32) / 255.0
    layer = rng.normal(size=a.shape[:2], loc=loc, scale=scale)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45))[..., None] / 255.0
    a = blend * a
    a = a + (1 - blend) * np.maximum(a, cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[..., None] * 1.5 + 0.5)
    return _to_image(a + layer + np.rot90(layer, k=2))


def _frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Procedural stand-in for the 6 official frost photographs (not available here): a plasma-fractal haze
    with thin bright crystal streaks at random angles, lightly blurred, tinted ice-blue; float RGB in [0, 255]."""
    streaks = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(h * w // 64, h * w // 32))):
        x, y, angle, length = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, math.pi), rng.uniform(2, 8)
        dx, dy = length * math.cos(angle), length * math.sin(angle)
        cv2.line(streaks, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), float(rng.uniform(0.3, 0.8)))
    haze = _plasma(_map_size(w, h), 1.8, rng)[:h, :w]
    ice = np.clip(0.35 + 0.4 * haze + cv2.GaussianBlur(streaks, (0, 0), 0.6), 0, 1)
    return ice[..., None] * np.array([0.82, 0.9, 1.0]) * 255


def _frost(img: Image.Image, mag: int, rng: np.random.Generator, faithful: bool = False) -> Image.Image:
    """c0·img + c1·frost; faithful: c0²·img + c1²·frost (the official applies the coefficients twice, T-11)."""
    c0, c1 = TABLES["Frost"][mag]
    if faithful:
        c0, c1 = c0 * c0, c1 * c1
    frost = _frost_texture(img.size[1], img.size[0], rng)
    return Image.fromarray(np.clip(c0 * np.asarray(img, np.float64) + c1 * frost, 0, 255).astype(np.uint8))


def _rain(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    img, (w, h), c = img.copy(), img.size, TABLES["Rain"][mag]
    n_drops, slant = int(rng.integers(c, c + 20)), math.radians(int(rng.integers(-60, 60)))
    draw = ImageDraw.Draw(img)
    for _ in range(1, n_drops):
        length = int(rng.integers(5, 10))
        x1, y1 = int(rng.integers(0, max(w - length, 1))), int(rng.integers(0, max(h - length, 1)))
        draw.line([(x1, y1), (int(x1 + length * math.sin(slant)), int(y1 + length * math.cos(slant)))],
                  width=1, fill=(200, 200, 200))
    return img


def _shadow(img: Image.Image, mag: int, rng: np.random.Generator) -> Image.Image:
    (w, h), c = img.size, TABLES["Shadow"][mag]
    overlay = Image.new("RGBA", img.size, (255, 255, 255, 0))
    alpha = int(rng.integers(c, c + 32))
    x1, x2, x3, x4 = (int(rng.integers(*bounds)) for bounds in ((0, w // 2), (w // 2, w), (w // 2, w), (0, w // 2)))
    ImageDraw.Draw(overlay).polygon([(x1, 0), (x2, 0), (x3, h - 1), (x4, h - 1)], fill=(0, 0, 0, alpha))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def _grid(img: Image.Image, mag: int, rng: np.random.Generator, vertical: bool, horizontal: bool) -> Image.Image:
    """1-px black lines with 3 − mag pixels of image between them (VGrid, HGrid, Grid = both)."""
    img, (w, h), stripe = img.copy(), img.size, 3 - mag
    draw = ImageDraw.Draw(img)
    for i in range(1, w // (stripe + 1) + 1 if vertical else 1):
        draw.line([(stripe * i + i - 1, 0), (stripe * i + i - 1, h)], width=1, fill="black")
    for i in range(1, h // (stripe + 1) + 1 if horizontal else 1):
        draw.line([(0, stripe * i + i - 1), (w, stripe * i + i - 1)], width=1, fill="black")
    return img


def _rect_grid(img: Image.Image, mag: int, rng: np.random.Generator, ellipse: bool) -> Image.Image:
    """Concentric 1-px black rectangles (or ellipses) around the centre, 3 − mag pixels apart."""
    img, (w, h), stripe = img.copy(), img.size, 3 - mag
    draw = ImageDraw.Draw(img)
    shape = draw.ellipse if ellipse else draw.rectangle
    for i in range(1, (h // 2) // (stripe + 1) + (4 if ellipse else 1)):
        d = stripe * i + i - 1
        shape([(w // 2 - d * w // h, h // 2 - d), (w // 2 + d * w / h, h // 2 + d)], width=1, outline="black")
    return img


# --------------------------------------------------------------------------------------------------
# geometric ops: (size, mag, rng, faithful) -> (image geometry, mask geometry)

def _tps(src: list, dst: list, w: int, h: int) -> Geometry:
    """Thin-plate-spline warp moving the content at ``src`` to ``dst`` (what the official cv2 TPS transformer's
    ``estimateTransformation(dst, src)`` + ``warpImage`` does): backward map f(dst_i) = src_i with
    U(r) = r² log r², bilinear (or nearest) remap, black border."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    n = len(dst)

    def kernel(p: np.ndarray) -> np.ndarray:
        d2 = ((p[:, None, :] - dst[None, :, :]) ** 2).sum(-1)
        return d2 * np.log(np.maximum(d2, 1e-12))

    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n], system[:n, n + 1:] = kernel(dst), 1, dst
    system[n, :n], system[n + 1:, :n] = 1, dst.T
    coef = np.linalg.solve(system, np.vstack([src, np.zeros((3, 2))]))
    ys, xs = np.mgrid[0:h, 0:w]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    mapped = (kernel(grid) @ coef[:n] + coef[n] + grid @ coef[n + 1:]).astype(np.float32)
    map_x, map_y = mapped[:, 0].reshape(h, w), mapped[:, 1].reshape(h, w)
    return lambda a, nearest: cv2.remap(np.ascontiguousarray(a), map_x, map_y,
                                        cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _pixelate(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """BOX down to c·size and back. A clean binary mask is box-averaged like the image and re-binarised at 0.5
    (nearest sampling would pick one pixel per block and misalign with the block averages)."""
    (w, h), c = size, TABLES["Pixelate"][mag]

    def geometry(a: np.ndarray, nearest: bool) -> np.ndarray:
        out = _resize(_resize(a, (int(w * c), int(h * c)), Image.BOX, False), (w, h), Image.BOX, False)
        return (out >= 0.5).astype(a.dtype) if nearest and np.isin(a, (0, 1)).all() else out
    return geometry, geometry


def _curve(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """Bend the text along an arc of radius U(r0, r0 + 0.1)·side on a SIDE² square (optionally flipped)."""
    s, r0, flip = SIDE, TABLES["Curve"][mag], rng.uniform(0, 1) > 0.5
    r = rng.uniform(r0, r0 + 0.1) * s
    x1 = (r ** 2 - (s / 2) ** 2) ** 0.5
    h1, t = r - x1, rng.uniform(0.4, 0.5) * s
    w2, h2 = s / 2 * t / r, h1 + x1 * t / r
    sin_b, cos_b = ((1 - x1 / r) / 2) ** 0.5, ((1 + x1 / r) / 2) ** 0.5
    w3, h3, w4, h4 = s / 2 - r * sin_b, r - r * cos_b, s / 2 - (r - t) * sin_b, r - (r - t) * cos_b
    w5, h5 = w2 / 2, h1 + x1 * t / r / 2
    src = [(0, 0), (s, 0), (s / 2, 0), (0, s), (s, s), (s / 4, 0), (3 * s / 4, 0), (s / 2, s), (s / 4, s),
           (3 * s / 4, s), (0, s / 2), (s, s / 2)]
    dst = [(0, h1), (s, h1), (s / 2, 0), (w2, h2), (s - w2, h2), (w3, h3), (s - w3, h3), (s / 2, t), (w4, h4),
           (s - w4, h4), (w5, h5), (s - w5, h5)]
    tps = _tps(src, dst, s, s)

    def geometry(a: np.ndarray, nearest: bool) -> np.ndarray:
        a = _resize(a, (s, s), Image.BICUBIC, nearest)
        a = tps(a[::-1] if flip else a, nearest)
        a = a[::-1][s // 2:] if flip else a[:s // 2]
        return _resize(a, size, Image.BICUBIC, nearest)
    return geometry, geometry


def _distort(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """TPS: the 8 border points (4 top, 4 bottom) move by up to frac·0.33W and frac·0.5H, inwards at the ends."""
    (w, h), f = size, TABLES["Distort"][mag]
    src, dst = [], []
    for y, y_range in ((0, (0, f)), (h, (-f, 0))):
        for x, x_range in ((0, (0, f)), (0.33 * w, (-f, f)), (0.66 * w, (-f, f)), (w, (-f, 0))):
            src.append((x, y))
            dst.append((x + rng.uniform(*x_range) * 0.33 * w, y + rng.uniform(*y_range) * 0.5 * h))
    tps = _tps(src, dst, w, h)
    return tps, tps


def _stretch(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """TPS: 10 points on 4 verticals move horizontally by up to frac·0.33W (the ends inwards)."""
    (w, h), f = size, TABLES["Stretch"][mag]
    src, dst = [], []
    for x, x_range, ys in ((0, (0, f), (0, h, h / 2)), (0.33 * w, (-f, f), (0, h)), (0.66 * w, (-f, f), (0, h)),
                           (w, (-f, 0), (0, h, h / 2))):
        dx = rng.uniform(*x_range) * 0.33 * w
        src += [(x, y) for y in ys]
        dst += [(x + dx, y) for y in ys]
    tps = _tps(src, dst, w, h)
    return tps, tps


def _rotate(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """Bicubic to SIDE², rotate ±U(b − 10, b)° (bicubic, expand), bicubic back to W×H."""
    b = TABLES["Rotate"][mag]
    angle = rng.uniform(b - 10, b)
    angle = -angle if rng.uniform(0, 1) < 0.5 else angle

    def geometry(a: np.ndarray, nearest: bool) -> np.ndarray:
        a = _resize(a, (SIDE, SIDE), Image.BICUBIC, nearest)
        a = _pil(a, lambda im, r: im.rotate(angle, resample=r, expand=True), Image.BICUBIC, nearest)
        return _resize(a, size, Image.BICUBIC, nearest)
    return geometry, geometry


def _perspective(size: tuple[int, int], mag: int, rng: np.random.Generator,
                 faithful: bool) -> tuple[Geometry, Geometry]:
    """Squeeze the right (or left) side: its corners move to U(l, l+0.1)·H and U(1−l−0.1, 1−l)·H."""
    (w, h), low = size, TABLES["Perspective"][mag]
    right = rng.uniform(0, 1) > 0.5
    top, bottom = rng.uniform(low, low + 0.1) * h, rng.uniform(1 - low - 0.1, 1 - low) * h
    src = np.float32([[0, 0], [w, 0], [0, h], [w, h]])
    dst = np.float32([[0, 0], [w, top], [0, h], [w, bottom]] if right else [[0, top], [w, 0], [0, bottom], [w, h]])
    matrix = cv2.getPerspectiveTransform(src, dst)

    def geometry(a: np.ndarray, nearest: bool) -> np.ndarray:
        return cv2.warpPerspective(a, matrix, (w, h), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return geometry, geometry


def _shrink(size: tuple[int, int], mag: int, rng: np.random.Generator, faithful: bool) -> tuple[Geometry, Geometry]:
    """TPS inward shrink by x = U(f−0.1, f)·0.33W, y = U(f−0.1, f)·0.5H, then a translation by ±U(0, x) in x
    (p 0.5) or ±U(0, y) in y. Faithful: the mask's translation is drawn anew and always in x (T-10)."""
    (w, h), f = size, TABLES["Shrink"][mag]
    x, y = rng.uniform(f - 0.1, f) * 0.33 * w, rng.uniform(f - 0.1, f) * 0.5 * h
    columns = ((0, x), (0.33 * w, 0), (0.66 * w, 0), (w, -x))
    src = [(cx, cy) for cx, _ in columns for cy in (0, h)]
    dst = [(cx + shift, cy) for cx, shift in columns for cy in (y, h - y)]
    tps = _tps(src, dst, w, h)
    shift = (_signed(rng, x), 0.0) if rng.uniform(0, 1) < 0.5 else (0.0, _signed(rng, y))
    mask_shift = (_signed(rng, x), 0.0) if faithful else shift
    return (lambda a, nearest: _translate(tps(a, nearest), *shift),
            lambda a, nearest: _translate(tps(a, nearest), *mask_shift))


def _op_functions(faithful: bool) -> dict[str, Callable]:
    """Every op name → its function (photometric: (image, mag, rng); geometric: (size, mag, rng, faithful))."""
    fixed = {name: partial(_parameterless, fn=fn) for name, fn in (
        ("Invert", ImageOps.invert), ("Equalize", ImageOps.equalize), ("AutoContrast", ImageOps.autocontrast))}
    noise = {name: partial(_noise, kind=name) for name in GROUPS["noise"]}
    return {**fixed, **noise, "Posterize": partial(_posterize_solarize, kind="Posterize"),
            "Solarize": partial(_posterize_solarize, kind="Solarize"),
            "Sharpness": partial(_enhance, kind="Sharpness"), "Color": partial(_enhance, kind="Color"),
            "Contrast": _contrast, "Brightness": _brightness, "JpegCompression": _jpeg, "Pixelate": _pixelate,
            "GaussianBlur": partial(_gaussian_blur, faithful=faithful), "DefocusBlur": _defocus_blur,
            "MotionBlur": _motion, "GlassBlur": _glass_blur, "ZoomBlur": _zoom_blur,
            "Fog": _fog, "Snow": _snow, "Frost": partial(_frost, faithful=faithful), "Rain": _rain, "Shadow": _shadow,
            "VGrid": partial(_grid, vertical=True, horizontal=False),
            "HGrid": partial(_grid, vertical=False, horizontal=True),
            "Grid": partial(_grid, vertical=True, horizontal=True),
            "RectGrid": partial(_rect_grid, ellipse=False), "EllipseGrid": partial(_rect_grid, ellipse=True),
            "Curve": _curve, "Distort": _distort, "Stretch": _stretch,
            "Rotate": _rotate, "Perspective": _perspective, "Shrink": _shrink}


# --------------------------------------------------------------------------------------------------
# the augmentation

@dataclass(frozen=True)
class Op:
    """One op: ``op(image, mask, mag, rng) -> (image, mask)``; only geometric ops touch the mask."""
    name: str
    fn: Callable
    faithful: bool

    def __call__(self, image: Image.Image, mask: np.ndarray | None, mag: int,
                 rng: np.random.Generator) -> tuple[Image.Image, np.ndarray | None]:
        if self.name not in GEOMETRIC_OPS:
            return self.fn(image, mag, rng), mask
        image_geometry, mask_geometry = self.fn(image.size, mag, rng, self.faithful)
        out = Image.fromarray(np.ascontiguousarray(image_geometry(np.asarray(image), False)))
        if mask is None:
            return out, None
        warped = mask_geometry(np.ascontiguousarray(mask, dtype=np.float32), not self.faithful)
        if self.faithful:  # the official uint8 mask: interpolated values are rounded and clipped
            warped = np.clip(warped, 0, 1)
            warped = np.rint(warped) if np.issubdtype(mask.dtype, np.integer) else warped
        return out, warped.astype(mask.dtype)


class RandAugment:
    """SIGA_T's ``DataAugment`` (SPEC_SIGA_T §1.3): with probability ``intact_prob`` nothing; otherwise
    ``num_groups`` distinct groups in random order, one uniform op each, magnitude uniform in {0, 1, 2} (or
    ``magnitude``). Every draw comes from the ``rng`` given to the call."""

    def __init__(self, num_groups: int = 3, intact_prob: float = 0.5, magnitude: int | None = None,
                 faithful: bool = False):
        if not 1 <= num_groups <= len(GROUPS):
            raise ValueError(f"num_groups must be in [1, {len(GROUPS)}], got {num_groups}")
        if not 0.0 <= intact_prob <= 1.0:
            raise ValueError(f"intact_prob must be in [0, 1], got {intact_prob}")
        if magnitude not in (None, 0, 1, 2):
            raise ValueError(f"magnitude must be None, 0, 1 or 2, got {magnitude}")
        self.num_groups, self.intact_prob, self.magnitude, self.faithful = num_groups, intact_prob, magnitude, faithful
        self.ops = {name: Op(name, fn, faithful) for name, fn in _op_functions(faithful).items()}

    def sample_ops(self, rng: np.random.Generator) -> list[tuple[str, str, int]]:
        """The (group, op name, magnitude) triples one augmented call applies, in order (group indices, T-8)."""
        names = list(GROUPS)
        chosen = []
        for index in rng.choice(len(names), size=self.num_groups, replace=False):
            ops = GROUPS[names[index]]
            op = ops[int(rng.integers(len(ops)))]
            mag = int(rng.integers(3)) if self.magnitude is None else self.magnitude
            chosen.append((names[index], op, mag))
        return chosen

    def __call__(self, image: Image.Image, mask: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[Image.Image, np.ndarray | None]:
        """Augment an RGB image and its [H, W] mask (int or float, or None) together."""
        if rng.uniform() < self.intact_prob:
            return image, mask
        for _, name, mag in self.sample_ops(rng):
            image, mask = self.ops[name](image, mask, mag, rng)
        return image, mask
