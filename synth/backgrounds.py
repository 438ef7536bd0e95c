"""Backgrounds of synthetic word images: crops of natural photos and procedural textures around a colour.

Real scene text sits on photos, walls, paper and signs, so a recogniser trained only on flat colours
learns to rely on a clean background. This module supplies both kinds: random crops of the sample photos
and textures that ship inside installed packages (no downloads), and procedural patterns — gradients,
noise, value-noise clouds, stripes, checks, grid lines and paper-like fibres — whose variations stay
moderate so the text drawn on top keeps its contrast. :func:`background` returns the background together
with its mean luma, so a caller can pick a contrasting text colour afterwards.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import matplotlib
import numpy as np
from PIL import Image

from synth.degrade import LUMA, line_kernel

#: photos and textures of scikit-image's wheel (``skimage/data/``) used as natural backgrounds, with the
#: licence each one's loader docstring in ``skimage/data/_fetchers.py`` states: only those with a stated free
#: licence, and none showing text (``page.png``, ``text.png``: it would be unlabelled text)
SKIMAGE_IMAGE_LICENCES: dict[str, str] = {
    "astronaut.png": "NASA photo; no known copyright restrictions, public domain",
    "brick.png": "CC0 (CC0Textures Bricks25)",
    "camera.png": "CC0 by the photographer (Lav Varshney)",
    "chelsea.png": "CC0 by the photographer (Stefan van der Walt)",
    "coffee.png": "CC0 by the photographer (Rachel Michetti)",
    "grass.png": "CC0 (DeviantArt, linolafett)",
    "gravel.png": "CC0 (CC0Textures Gravel04)",
    "rocket.jpg": "SpaceX photo released into the public domain",
    "retina.jpg": "CC0 1.0 (Wikimedia Commons, Mikael Häggström)",
    "hubble_deep_field.jpg": "NASA; may be freely used in the public domain",
    "coins.png": "Brooklyn Museum collection; no known copyright restrictions",
    "ihc.png": "CMMI; no known copyright restrictions",
}
NATURAL_IMAGE_FILES: tuple[str, ...] = tuple(SKIMAGE_IMAGE_LICENCES)
#: matplotlib's sample photo (``mpl-data/sample_data/``): Grace Hopper, U.S. Navy photo, public domain
MATPLOTLIB_IMAGE_FILES: tuple[str, ...] = ("grace_hopper.jpg",)

NATURAL_IMAGE_SOURCES = (
    "Natural backgrounds are random crops of sample images shipped inside installed wheels (no downloads): "
    "from scikit-image (`skimage/data/`, pinned in requirements.txt) "
    + "; ".join(f"`{name}` ({licence})" for name, licence in SKIMAGE_IMAGE_LICENCES.items())
    + "; and from matplotlib (`mpl-data/sample_data/`) `grace_hopper.jpg` (U.S. Navy photo, public domain). "
    "`skimage/data/README.txt` itself states no licence; the per-image statements above are those of the "
    "loader docstrings in `skimage/data/_fetchers.py`, and scikit-image as a whole is BSD-3-Clause."
)


def _skimage_data_dir() -> Path:
    """``skimage/data`` of the installed scikit-image, found without importing the (slow) package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("natural backgrounds need scikit-image's sample photos; "
                                  "run `pip install -r requirements.txt`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB of an image file; greyscale is replicated and transparency put over white."""
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(flat, image).convert("RGB"))
        return np.asarray(image.convert("RGB"))


@lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """All natural background images (read-only uint8 RGB [H, W, 3]) that the installed packages provide,
    loaded once per process. Files of :data:`NATURAL_IMAGE_FILES` missing from another scikit-image version are
    skipped; none at all raises, as the engine would otherwise silently fall back to flat backgrounds."""
    paths = [_skimage_data_dir() / name for name in NATURAL_IMAGE_FILES]
    paths += [Path(matplotlib.get_data_path()) / "sample_data" / name for name in MATPLOTLIB_IMAGE_FILES]
    images = tuple(_load_rgb(path) for path in paths if path.is_file())
    if not images:
        raise FileNotFoundError(f"no natural background images found under {paths[0].parent}; "
                                "run `pip install -r requirements.txt`")
    return images


def _colour_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Modest random brightness, contrast, saturation and hue shift of a float32 RGB image."""
    image = image * rng.uniform(0.8, 1.2)
    mean = float(image.mean())
    image = np.clip((image - mean) * rng.uniform(0.7, 1.2) + mean, 0, 255)
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.3), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


def natural_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [height, width, 3] in 0..255: a random crop of a random natural image.

    The crop side is 0.5x-4x the target (log-uniform, clipped to the image), so both fine detail and
    broad structure appear; a random flip and 90-degree rotation multiply the variety, half the crops get
    a colour jitter and half a light blur, which keeps the texture from overwhelming the text."""
    images = natural_images()
    image = images[int(rng.integers(len(images)))]
    image = np.rot90(image, int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    scale = np.exp(rng.uniform(np.log(0.5), np.log(4.0)))
    crop_h = int(np.clip(round(height * scale), 1, image.shape[0]))
    crop_w = int(np.clip(round(width * scale), 1, image.shape[1]))
    top = int(rng.integers(image.shape[0] - crop_h + 1))
    left = int(rng.integers(image.shape[1] - crop_w + 1))
    crop = np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w]).astype(np.float32)
    shrinking = crop_h * crop_w > height * width
    crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = _colour_jitter(rng, crop)
    if rng.random() < 0.5:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.5, 1.5), borderType=cv2.BORDER_REFLECT)
    return np.clip(crop, 0, 255).astype(np.float32)


def _unit(field: np.ndarray) -> np.ndarray:
    """``field`` shifted to zero mean and scaled to a peak magnitude of 1 (a flat field stays 0)."""
    field = field - field.mean()
    return field / max(float(np.abs(field).max()), 1e-6)


def _coords(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates projected on a random direction: (along, across) float32 [h, w] arrays."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xs * cos + ys * sin, ys * cos - xs * sin


def _plain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """No variation."""
    return np.zeros((height, width), np.float32)


def _linear_gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ramp along a random direction."""
    return _unit(_coords(rng, height, width)[0])


def _radial_gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Distance from a random centre (possibly outside the image), like a vignette or a spotlight."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(-0.5, 1.5, 2) * (height, width)
    return _unit(np.hypot(xs - cx, ys - cy))


def _pixel_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Independent per-pixel grain, at a third of the amplitude of the smooth patterns."""
    return np.clip(rng.standard_normal((height, width)), -3, 3).astype(np.float32) / 9.0


def _clouds(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Multi-octave value noise: random grids upsampled bicubically, each octave half the cell size and
    half the weight of the previous one ("clouds", stains, uneven lighting)."""
    cell = rng.uniform(0.3, 1.0) * max(height, width)
    field = np.zeros((height, width), np.float32)
    for octave in range(int(rng.integers(1, 5))):
        size = max(cell / 2 ** octave, 2.0)
        grid = rng.random((int(height / size) + 2, int(width / size) + 2)).astype(np.float32)
        field += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / 2 ** octave
    return _unit(field)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sine or square stripes of random period, direction and phase."""
    along = _coords(rng, height, width)[0]
    wave = np.sin(along * (2 * np.pi / rng.uniform(3, 24)) + rng.uniform(0, 2 * np.pi))
    return np.sign(wave) if rng.random() < 0.5 else wave


def _checks(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (possibly rotated) checkerboard of random square size."""
    along, across = _coords(rng, height, width)
    period = 2 * np.pi / rng.uniform(4, 32)
    return (np.sign(np.sin(along * period + 1e-3)) * np.sign(np.sin(across * period + 1e-3))).astype(np.float32)


def _grid_lines(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Thin lines of random spacing — ruled or squared paper, tiles — usually axis-aligned, darker or
    lighter than the ground."""
    if rng.random() < 0.3:
        along, across = _coords(rng, height, width)
    else:
        across, along = np.mgrid[0:height, 0:width].astype(np.float32)
    spacing, thickness = rng.uniform(6, 30), rng.uniform(1, 2.5)
    lines = np.mod(across + rng.uniform(0, spacing), spacing) < thickness
    if rng.random() < 0.6:
        lines |= np.mod(along + rng.uniform(0, spacing), spacing) < thickness
    return lines.astype(np.float32) * rng.choice([-1.0, 1.0])


def _fibres(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Paper or fabric: noise smeared along one or two directions (fibres, weave) plus fine grain."""
    field = rng.standard_normal((height, width)).astype(np.float32) * 0.3
    angle = rng.uniform(0, 180)
    for offset in range(int(rng.integers(1, 3))):
        kernel = line_kernel(int(rng.integers(5, 16)), angle + 90 * offset)
        noise = rng.standard_normal((height, width)).astype(np.float32)
        field += cv2.filter2D(noise, -1, kernel, borderType=cv2.BORDER_REFLECT)
    return _unit(field)


PATTERNS: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _plain, _linear_gradient, _radial_gradient, _pixel_noise, _clouds, _stripes, _checks, _grid_lines, _fibres)


def procedural_background(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """float32 [height, width, 3] in 0..255 around RGB ``colour``: one or two random patterns of
    :data:`PATTERNS` added to it, tinted per channel, with a peak variation of at most ~30 grey levels
    so a text colour chosen against ``colour`` keeps its contrast."""
    base = np.asarray(colour, np.float32).reshape(1, 1, 3)
    field = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        field += PATTERNS[int(rng.integers(len(PATTERNS)))](rng, height, width).astype(np.float32)
    amplitude = rng.uniform(8, 30) / max(float(np.abs(field).max()), 1.0)
    tint = rng.uniform(0.7, 1.0, 3).astype(np.float32)
    return np.clip(base + field[..., None] * (amplitude * tint), 0, 255).astype(np.float32)


def background(rng: np.random.Generator, height: int, width: int, colour: np.ndarray,
               natural_probability: float) -> tuple[np.ndarray, float]:
    """(float32 [height, width, 3] background in 0..255, its mean luma).

    With probability ``natural_probability`` the background is a :func:`natural_crop` blended a random
    0-60% towards ``colour`` (so its overall tone stays controllable), otherwise a
    :func:`procedural_background` around ``colour``. Call it before choosing the text colour and pick
    one whose luma is far from the returned mean luma."""
    if rng.random() < natural_probability:
        blend = np.float32(rng.uniform(0.0, 0.6))
        base = np.asarray(colour, np.float32).reshape(1, 1, 3)
        image = natural_crop(rng, height, width) * (1 - blend) + base * blend
    else:
        image = procedural_background(rng, height, width, colour)
    return image.astype(np.float32), float(image.reshape(-1, 3).mean(0) @ LUMA)
