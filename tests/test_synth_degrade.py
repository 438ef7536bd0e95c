"""synth.degrade: determinism, shapes/dtypes/ranges and the intended effect of each corruption."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import pytest

from synth.degrade import (contrast_jitter, down_up_resample, gamma, gaussian_blur, gaussian_noise, jpeg,
                           line_kernel, motion_blur)

CORRUPTIONS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "down_up_resample": lambda rng, image: down_up_resample(rng, image, 0.3),
    "gaussian_blur": lambda rng, image: gaussian_blur(rng, image, 2.0),
    "motion_blur": lambda rng, image: motion_blur(rng, image, 9),
    "gaussian_noise": lambda rng, image: gaussian_noise(rng, image, 12.0),
    "jpeg": lambda rng, image: jpeg(rng, image, 10, 60),
    "contrast_jitter": lambda rng, image: contrast_jitter(rng, image, 0.5),
    "gamma": lambda rng, image: gamma(rng, image, 0.6),
}


def word_like_image(seed: int = 0, height: int = 40, width: int = 120) -> np.ndarray:
    """float32 [h, w, 3]: a smooth coloured background with dark strokes (sharp edges, like text)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.float32)
    image[:] = rng.uniform(120, 220, 3)
    image += np.linspace(-20, 20, width, dtype=np.float32)[None, :, None]
    for _ in range(8):
        x, y = int(rng.integers(5, width - 5)), int(rng.integers(5, height - 5))
        cv2.line(image, (x, y), (x + int(rng.integers(-10, 10)), y + int(rng.integers(-10, 10))),
                 tuple(float(v) for v in rng.uniform(0, 60, 3)), 2)
    return image


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean squared Laplacian of the luma: large for sharp edges and noise, small after blurring."""
    return float(np.mean(cv2.Laplacian(image.mean(-1).astype(np.float32), cv2.CV_32F) ** 2))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_determinism_shape_dtype_range(name: str):
    corrupt, image = CORRUPTIONS[name], word_like_image()
    before = image.copy()
    first, again = (corrupt(np.random.default_rng(7), image) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, corrupt(np.random.default_rng(8), image))
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert first.shape == image.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 255


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "down_up_resample"])
def test_blurs_reduce_high_frequency_energy(name: str):
    image = word_like_image(1)
    energies = [high_frequency_energy(CORRUPTIONS[name](np.random.default_rng(seed), image)) for seed in range(10)]
    assert np.median(energies) < 0.7 * high_frequency_energy(image)
    assert max(energies) <= high_frequency_energy(image) * 1.05


def test_jpeg_changes_pixels_but_keeps_the_mean():
    image = word_like_image(2)
    for seed in range(5):
        out = jpeg(np.random.default_rng(seed), image, 10, 40)
        assert np.abs(out - np.rint(image)).max() > 5
        assert np.allclose(out.reshape(-1, 3).mean(0), image.reshape(-1, 3).mean(0), atol=3.0)
        assert np.array_equal(out, np.rint(out))  # decoded uint8 values


def test_noise_std_within_the_drawn_range():
    image = np.full((64, 64, 3), 128.0, np.float32)
    for seed in range(20):
        residual = gaussian_noise(np.random.default_rng(seed), image, 10.0) - image
        assert 0.25 * 10.0 * 0.9 < residual.std() < 10.0 * 1.1
        assert abs(residual.mean()) < 1.0


def test_noise_is_luma_only_or_per_channel():
    image = np.full((32, 32, 3), 128.0, np.float32)
    kinds = set()
    for seed in range(20):
        residual = gaussian_noise(np.random.default_rng(seed), image, 10.0) - image
        kinds.add(bool(np.array_equal(residual[..., 0], residual[..., 1])))
    assert kinds == {True, False}


def test_down_up_keeps_shape_for_odd_sizes():
    for height, width in [(1, 1), (7, 3), (33, 101)]:
        image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
        for seed in range(5):
            assert down_up_resample(np.random.default_rng(seed), image, 0.2).shape == (height, width, 3)


def test_contrast_and_gamma_tone_curves():
    image = word_like_image(3)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    for seed in range(10):
        out = contrast_jitter(np.random.default_rng(seed), image, 0.3)
        ratio = (out - out.reshape(-1, 3).mean(0) @ luma).std() / (image - image.reshape(-1, 3).mean(0) @ luma).std()
        assert 0.69 < ratio < 1.31
    extremes = np.array([[[0, 0, 0], [255, 255, 255]]], np.float32)
    for seed in range(10):
        np.testing.assert_allclose(gamma(np.random.default_rng(seed), extremes, 0.6), extremes, atol=1e-3)


@pytest.mark.parametrize("length, angle", [(1, 0.0), (2, 0.0), (5, 45.0), (9, 90.0), (8, 130.0)])
def test_line_kernel_is_normalised_and_oriented(length: int, angle: float):
    kernel = line_kernel(length, angle)
    size = length | 1
    assert kernel.shape == (size, size) and kernel.dtype == np.float32
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.min() >= 0
    if length >= 5:
        ys, xs = np.mgrid[0:size, 0:size] - size // 2
        direction = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))])
        across = np.abs(xs * direction[1] - ys * direction[0])
        assert kernel[across <= 1.0].sum() > 0.9
