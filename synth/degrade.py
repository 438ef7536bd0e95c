"""Corruptions of finished synthetic word images: resampling, blur, noise, JPEG and tone changes.

Real crops come from low-resolution, shaky, noisy, compressed and badly exposed cameras; applying these
to clean renders narrows the gap between synthetic and real data. Each function takes a float32
[H, W, 3] RGB image in 0..255 and returns a new float32 array of the same shape clipped to 0..255, with
every random choice drawn from the given ``rng`` (the output is a pure function of the inputs).
"""
from __future__ import annotations

import cv2
import numpy as np

#: Rec. 601 luma weights of R, G, B
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_DOWN_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_NEAREST)
_UP_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)


def _finish(image: np.ndarray) -> np.ndarray:
    """The result convention: float32 clipped to 0..255."""
    return np.clip(image, 0, 255).astype(np.float32)


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """float32 [k, k] kernel (k = ``length`` rounded up to odd) summing to 1: an anti-aliased line of
    about ``length`` pixels through the centre at ``angle_deg`` (0 = horizontal), a linear motion path.
    It is drawn 8x larger and area-averaged down, so short lines at any angle stay smooth."""
    length = max(int(length), 1)
    size, zoom = length | 1, 8
    canvas = np.zeros((size * zoom, size * zoom), np.uint8)
    centre = np.full(2, (size * zoom - 1) / 2)
    angle = np.deg2rad(angle_deg)
    half = (length - 1) / 2 * zoom * np.array([np.cos(angle), np.sin(angle)])
    start, end = (np.rint((centre + sign * half) * 16).astype(int) for sign in (-1, 1))  # 4 fractional bits
    cv2.line(canvas, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), 255,
             thickness=zoom, lineType=cv2.LINE_AA, shift=4)
    kernel = cv2.resize(canvas.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (kernel / kernel.sum()).astype(np.float32)


def down_up_resample(rng: np.random.Generator, image: np.ndarray, min_scale: float) -> np.ndarray:
    """Shrink by a random factor in [``min_scale``, 1] and enlarge back, each with a random
    interpolation: the blockiness and softness of text captured at low resolution."""
    height, width = image.shape[:2]
    scale = rng.uniform(min_scale, 1.0)
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    down = _DOWN_INTERPOLATIONS[int(rng.integers(len(_DOWN_INTERPOLATIONS)))]
    up = _UP_INTERPOLATIONS[int(rng.integers(len(_UP_INTERPOLATIONS)))]
    small = cv2.resize(image.astype(np.float32), small_size, interpolation=down)
    return _finish(cv2.resize(small, (width, height), interpolation=up).reshape(image.shape))


def gaussian_blur(rng: np.random.Generator, image: np.ndarray, max_sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur with sigma drawn from [0.25, 1] x ``max_sigma`` (defocus); a copy of the
    image for ``max_sigma`` <= 0."""
    sigma = max_sigma * rng.uniform(0.25, 1.0)
    if sigma <= 0:
        return _finish(image)
    return _finish(cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


def motion_blur(rng: np.random.Generator, image: np.ndarray, max_length: int) -> np.ndarray:
    """Convolution with a :func:`line_kernel` of random length in [2, ``max_length``] and random angle
    (camera shake or a moving subject)."""
    kernel = line_kernel(int(rng.integers(2, max(int(max_length), 2) + 1)), rng.uniform(0, 180))
    return _finish(cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT))


def gaussian_noise(rng: np.random.Generator, image: np.ndarray, max_std: float) -> np.ndarray:
    """Additive Gaussian noise with std drawn from [0.25, 1] x ``max_std``: independent per channel
    (colour sensor noise) or, half the time, one value for all channels (luma-only grain)."""
    std = max_std * rng.uniform(0.25, 1.0)
    channels = image.shape[2] if rng.random() < 0.5 else 1
    noise = rng.normal(0.0, std, image.shape[:2] + (channels,)).astype(np.float32)
    return _finish(image + noise)


def jpeg(rng: np.random.Generator, image: np.ndarray, min_quality: int, max_quality: int) -> np.ndarray:
    """JPEG encode/decode round trip at a random quality in [``min_quality``, ``max_quality``]:
    8x8 blocking, ringing and chroma subsampling (the image is rounded to uint8 first)."""
    quality = int(rng.integers(min_quality, max_quality + 1))
    pixels = cv2.cvtColor(np.clip(np.rint(image), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding of a {image.shape} image failed")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32)


def contrast_jitter(rng: np.random.Generator, image: np.ndarray, max_delta: float) -> np.ndarray:
    """Scale deviations from the mean luma by a random factor in 1 ± ``max_delta`` (flat or punchy
    exposure); the mean tone is kept."""
    mean = float(image.reshape(-1, 3).mean(0) @ LUMA)
    factor = 1.0 + rng.uniform(-max_delta, max_delta)
    return _finish((image - mean) * factor + mean)


def gamma(rng: np.random.Generator, image: np.ndarray, max_log_gamma: float) -> np.ndarray:
    """Gamma curve 255 * (x / 255) ** g with log g uniform in ±``max_log_gamma`` (under/over-exposure
    and display curves): darkens or lightens mid-tones while black and white stay put."""
    exponent = np.exp(rng.uniform(-max_log_gamma, max_log_gamma))
    return _finish(255.0 * np.power(np.clip(image, 0, 255) / 255.0, exponent))
