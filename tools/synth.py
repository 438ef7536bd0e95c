"""Built-in synthetic word crops: the project's embedded default data (no downloads).

Labels are words from ``tools/words.txt`` (words of the English prose in Python's own
documentation and docstrings, PSF licence, minus every label of the real IIIT5k_train_2000 LMDB,
which serves as a held-out real-word set) mixed with random alphanumeric strings. Text is rendered
with matplotlib's bundled DejaVu fonts (plus any TTF/OTF under ``--fonts_dir``) over plain, gradient,
noise or texture backgrounds, then mildly rotated/warped, blurred and noised. Each crop is written to
a clovaai-format image LMDB and its exact glyph foreground to a mask LMDB (``mask-%09d``, PNG {0,1},
SPEC §1.4), both deterministic per seed whatever the number of workers.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import io
import os
import shutil
import string
from dataclasses import dataclass
from functools import lru_cache, partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from dataset import MASK_KEY, LmdbWriter, encode_png, is_lmdb_dir

WORDS_FILE = Path(__file__).with_name("words.txt")
ALNUM = string.digits + string.ascii_letters


@dataclass(frozen=True)
class SynthConfig:
    """Appearance and label knobs of the generator."""

    random_fraction: float = 0.2  # share of random alphanumeric labels
    random_max_length: int = 10
    max_label_length: int = 25
    min_font_size: int = 18
    max_font_size: int = 44
    min_contrast: float = 70.0  # minimum grey-level distance between text and background colours
    max_rotation: float = 5.0  # degrees
    max_perspective: float = 0.06  # corner jitter as a fraction of the crop size
    blur_probability: float = 0.3
    noise_probability: float = 0.3


@lru_cache(maxsize=1)
def load_words() -> tuple[str, ...]:
    words = tuple(w for w in WORDS_FILE.read_text(encoding="utf-8").split() if w)
    if not words:
        raise ValueError(f"{WORDS_FILE}: empty word list")
    return words


def find_fonts(fonts_dir: str | os.PathLike | None = None) -> list[str]:
    """matplotlib's DejaVu fonts plus every .ttf/.otf under ``fonts_dir``, sorted for determinism.

    The DejaVu*Display faces are left out: they hold only a handful of glyphs.
    """
    bundled = sorted(str(p) for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf")
                     if "Display" not in p.name)
    extra = []
    if fonts_dir is not None:
        extra = sorted(str(p) for p in Path(fonts_dir).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    return bundled + extra


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def sample_label(rng: np.random.Generator, config: SynthConfig) -> str:
    """A dictionary word in random case, or a random alphanumeric string."""
    if rng.random() < config.random_fraction:
        length = int(rng.integers(1, config.random_max_length + 1))
        return "".join(ALNUM[i] for i in rng.integers(0, len(ALNUM), length))
    words = load_words()
    word = words[int(rng.integers(len(words)))][: config.max_label_length]
    style = rng.random()
    return word.upper() if style < 0.25 else word.capitalize() if style < 0.5 else word


def _colours(rng: np.random.Generator, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Background and text RGB colours whose grey levels differ by at least ``min_contrast``."""
    while True:
        background, text = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        weights = np.array([0.299, 0.587, 0.114])
        if abs(background @ weights - text @ weights) >= config.min_contrast:
            return background, text


def _background(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """float32 [h, w, 3]: plain, linear gradient, noise or smoothed-noise texture around ``colour``."""
    kind = int(rng.integers(4))
    canvas = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if kind == 1:
        direction = rng.normal(size=2)
        ys, xs = np.mgrid[0:height, 0:width]
        ramp = (xs * direction[0] + ys * direction[1]).astype(np.float32)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) - 0.5
        canvas = canvas + ramp[..., None] * rng.uniform(-40, 40, 3).astype(np.float32)
    elif kind == 2:
        canvas = canvas + rng.normal(0, rng.uniform(3, 12), (height, width, 1)).astype(np.float32)
    elif kind == 3:
        texture = rng.normal(0, 1, (max(height // 4, 2), max(width // 4, 2))).astype(np.float32)
        texture = cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)
        canvas = canvas + texture[..., None] * rng.uniform(5, 20)
    return canvas


def _warp(rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, config: SynthConfig):
    """One mild rotation + perspective matrix applied to the image and the text layer alike."""
    height, width = alpha.shape
    angle = np.deg2rad(rng.uniform(-config.max_rotation, config.max_rotation))
    centre = np.array([width / 2, height / 2])
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rotation.T + centre
    moved += rng.uniform(-1, 1, (4, 2)) * config.max_perspective * np.array([width, height])
    moved -= moved.min(0)
    out_w, out_h = int(np.ceil(moved[:, 0].max())) + 1, int(np.ceil(moved[:, 1].max())) + 1
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32))
    image = cv2.warpPerspective(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpPerspective(alpha, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return image, alpha


def render_sample(index: int, seed: int, fonts: list[str], config: SynthConfig = SynthConfig()
                  ) -> tuple[Image.Image, np.ndarray, str]:
    """The ``index``-th sample of stream ``seed``: (RGB crop, uint8 {0,1} glyph mask, label)."""
    rng = np.random.default_rng([seed, index])
    label = sample_label(rng, config)
    font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(config.min_font_size, config.max_font_size + 1)))
    left, top, right, bottom = font.getbbox(label)
    pad_x, pad_y = (rng.uniform(0.05, 0.6, 2) * font.size).astype(int) + 2
    width, height = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    layer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(layer).text((pad_x - left, pad_y - top), label, fill=255, font=font)
    background_colour, text_colour = _colours(rng, config)
    canvas = _background(rng, height, width, background_colour)
    alpha = np.asarray(layer, np.float32) / 255.0
    canvas, alpha = _warp(rng, canvas, alpha, config)
    image = canvas * (1 - alpha[..., None]) + text_colour.astype(np.float32) * alpha[..., None]
    if rng.random() < config.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < config.noise_probability:
        image = image + rng.normal(0, rng.uniform(2, 10), image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    mask = (alpha > 0.5).astype(np.uint8)
    return Image.fromarray(image), mask, label


def _encoded_sample(index: int, seed: int, fonts: list[str], config: SynthConfig) -> tuple[bytes, bytes, str]:
    image, mask, label = render_sample(index, seed, fonts, config)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), encode_png(mask), label


def write_synth_lmdb(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, num_samples: int, seed: int,
                     workers: int = 2, fonts_dir: str | os.PathLike | None = None,
                     config: SynthConfig | None = None, progress: bool = True) -> None:
    """Render ``num_samples`` crops into an image LMDB and the matching mask LMDB (1-based keys)."""
    config = config or SynthConfig()
    fonts = find_fonts(fonts_dir)
    if not fonts:
        raise FileNotFoundError("no fonts found (matplotlib's DejaVu fonts are missing)")
    job = partial(_encoded_sample, seed=seed, fonts=fonts, config=config)
    with LmdbWriter(image_dir) as images, LmdbWriter(mask_dir) as masks:
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(job, range(num_samples), chunksize=64) if pool else map(job, range(num_samples))
            for image_bytes, mask_bytes, label in tqdm(results, total=num_samples, disable=not progress,
                                                       desc=f"synth {Path(image_dir).name}"):
                index = images.add_sample(image_bytes, label)
                masks.num_samples = index
                masks.put(MASK_KEY % index, mask_bytes)
        finally:
            if pool:
                pool.close()
                pool.join()


def build_demo_data(root: str | os.PathLike, num_train: int = 20000, num_val: int = 1000, seed: int = 0,
                    workers: int = 2) -> dict[str, Path]:
    """Create ``root/{images,masks}/{train,val}`` unless present; each split is written to a temporary
    directory and moved into place, so an interrupted run never leaves a complete-looking half LMDB."""
    root = Path(root)
    paths = {}
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        paths[f"{split}_images"], paths[f"{split}_masks"] = image_dir, mask_dir
        if is_lmdb_dir(image_dir) and is_lmdb_dir(mask_dir):
            continue
        staging = root / f".staging-{split}"
        shutil.rmtree(staging, ignore_errors=True)
        write_synth_lmdb(staging / "images", staging / "masks", count, split_seed, workers)
        for source, target in ((staging / "images", image_dir), (staging / "masks", mask_dir)):
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        shutil.rmtree(staging)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="image LMDB to write")
    parser.add_argument("--mask_out", help="mask LMDB to write (default: <out>_mask)")
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fonts_dir", help="extra .ttf/.otf fonts (searched recursively)")
    parser.add_argument("--random_fraction", type=float, default=SynthConfig.random_fraction)
    parser.add_argument("--demo_root", help="build the demo train/val split under this root instead")
    args = parser.parse_args(argv)
    if args.demo_root:
        for name, path in build_demo_data(args.demo_root, seed=args.seed, workers=args.workers).items():
            print(f"{name}: {path}")
        return
    if not args.out:
        parser.error("give --out (or --demo_root)")
    write_synth_lmdb(args.out, args.mask_out or args.out.rstrip("/") + "_mask", args.num, args.seed, args.workers,
                     args.fonts_dir, SynthConfig(random_fraction=args.random_fraction))


if __name__ == "__main__":
    main()
