"""synth.backgrounds: bundled natural images, natural crops, procedural textures and background choice."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from synth import backgrounds
from synth.backgrounds import (LUMA, MATPLOTLIB_IMAGE_FILES, NATURAL_IMAGE_FILES, NATURAL_IMAGE_SOURCES, PATTERNS, background,
                               natural_crop, natural_images, procedural_background)

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 32, 100
COLOUR = np.array([90.0, 140.0, 200.0])

RANDOM_FUNCTIONS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "natural_crop": lambda rng: natural_crop(rng, HEIGHT, WIDTH),
    "procedural_background": lambda rng: procedural_background(rng, HEIGHT, WIDTH, COLOUR),
    "background": lambda rng: background(rng, HEIGHT, WIDTH, COLOUR, 0.5)[0],
}


def test_natural_images_are_bundled_rgb_uint8():
    images = natural_images()
    assert len(images) == len(NATURAL_IMAGE_FILES) + len(MATPLOTLIB_IMAGE_FILES) >= 13
    assert natural_images() is images  # cached
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 100
        assert not image.flags.writeable  # shared by every caller through the cache
    assert all(name in NATURAL_IMAGE_SOURCES for name in NATURAL_IMAGE_FILES + ("grace_hopper.jpg",))


def test_images_load_without_importing_scikit_image():
    """scikit-image is only located (its import is slow); checked in a fresh interpreter."""
    code = "import sys; from synth.backgrounds import natural_images; natural_images(); assert 'skimage' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_missing_scikit_image_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(backgrounds.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install -r requirements.txt"):
        backgrounds._skimage_data_dir()


@pytest.mark.parametrize("name", RANDOM_FUNCTIONS)
def test_determinism_per_seed(name: str):
    draw = RANDOM_FUNCTIONS[name]
    first, again, other = (draw(np.random.default_rng(seed)) for seed in (11, 11, 12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", RANDOM_FUNCTIONS)
def test_shape_dtype_range(name: str):
    rng = np.random.default_rng(0)
    for _ in range(30):
        image = RANDOM_FUNCTIONS[name](rng)
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 255


def test_natural_crops_are_textured_and_varied():
    rng = np.random.default_rng(1)
    crops = [natural_crop(rng, HEIGHT, WIDTH) for _ in range(100)]
    assert np.mean([crop.std() > 5 for crop in crops]) > 0.8
    assert np.std([crop.mean() for crop in crops]) > 20


@pytest.mark.parametrize("pattern", PATTERNS, ids=[pattern.__name__ for pattern in PATTERNS])
def test_each_pattern_is_a_bounded_field(pattern):
    field = pattern(np.random.default_rng(2), HEIGHT, WIDTH)
    assert field.shape == (HEIGHT, WIDTH) and np.isfinite(field).all()
    assert np.abs(field).max() <= 1.0 + 1e-5


def test_procedural_variation_is_moderate_around_the_colour():
    rng = np.random.default_rng(3)
    deviations, stds = [], []
    for _ in range(200):
        colour = rng.uniform(0, 255, 3)
        image = procedural_background(rng, HEIGHT, WIDTH, colour)
        deviations.append(np.abs(image - colour).max())
        stds.append(image.std(axis=(0, 1)).max())
    assert max(deviations) <= 30.5
    assert np.mean(np.array(stds) > 1.0) > 0.6  # most backgrounds are not plain


def test_background_returns_its_mean_luma_and_honours_the_probability():
    rng = np.random.default_rng(4)
    deviations = {}
    for probability in (0.0, 1.0):
        deviations[probability] = []
        for _ in range(20):
            image, luma = background(rng, HEIGHT, WIDTH, COLOUR, probability)
            assert luma == pytest.approx(float(image.reshape(-1, 3).mean(0) @ LUMA), abs=1e-3)
            deviations[probability].append(np.abs(image - COLOUR).max())
    assert max(deviations[0.0]) <= 30.5  # procedural only
    assert np.mean(np.array(deviations[1.0]) > 30.5) > 0.5  # natural crops stray further from the colour
