"""Built-in synthetic word crops: the project's embedded default training data (no downloads).

Labels are words from ``tools/words.txt`` in random case, mixed with random alphanumeric strings.
Text is rendered with matplotlib's bundled DejaVu fonts (plus any TTF/OTF under ``--fonts_dir``) over
plain, gradient, noise, smoothed-noise or stripe backgrounds, mildly rotated and perspective-warped,
optionally blurred and noised, and resized to a random height. Each crop goes to a clovaai-format
image LMDB (JPEG q=95) and its exact glyph foreground to a mask LMDB (``mask-%09d``, PNG {0,1},
SPEC §1.4); the glyph layer gets the same warp and resize as the image and is thresholded at 0.5.
Sample ``i`` of seed ``s`` comes from ``np.random.default_rng([s, i])``, so the output is
byte-identical for a seed whatever the number of workers.

Usage, from the repository root: ``python -m tools.synth --out OUT [--mask_out MASK_OUT] [--num N]`` or
``python -m tools.synth --demo_root ROOT`` (see ``--help``).

Provenance of ``tools/words.txt`` (11 014 lowercase words, one per line): the running prose (words of
whitespace-separated text outside inline code) of four groups of text on the build machine —
(1) the Python 3.11 standard library's docstrings and comments plus ``pydoc_data/topics.py`` (PSF
licence); (2) docstrings and comments of numpy, scipy and matplotlib (BSD); (3) docstrings and comments
of torch, torchvision, nltk, networkx, sympy, docutils, IPython, Pillow, setuptools, pip, pygments and
mpmath (BSD/MIT/Apache-2.0/public domain); (4) the non-code text of the Rust toolchain's HTML books
(The Book, Reference, Nomicon, Rust by Example, Cargo, rustc, rustdoc, edition/embedded/unstable books;
MIT/Apache-2.0). A word is kept when it is 2–15 ASCII letters with a vowel and no letter tripled,
occurs in lowercase prose in at least two of the four groups (all four for two-letter words), is not
mostly a code identifier (at most 10 identifier uses per prose use) and is not, case-insensitively,
a label of the real ``IIIT5k_train_2000`` LMDB, which is held out as a real-word test set.
"""
from __future__ import annotations

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

from lmdb_io import MASK_KEY, LmdbWriter, encode_png, is_lmdb_dir

WORDS_FILE = Path(__file__).with_name("words.txt")
ALNUM = string.digits + string.ascii_letters
LUMA = np.array([0.299, 0.587, 0.114])
VAL_SEED_OFFSET = 1_000_003  # the validation split's seed is seed + this, so it never repeats a train sample


@dataclass(frozen=True)
class SynthConfig:
    """Label and appearance knobs of the generator."""

    random_fraction: float = 0.2  # share of labels that are random [0-9a-zA-Z] strings
    random_max_length: int = 10
    max_label_length: int = 25
    min_height: int = 32  # output crop height, drawn uniformly in [min_height, max_height]
    max_height: int = 64
    min_contrast: float = 70.0  # minimum luma distance between the text and background colours
    max_rotation: float = 5.0  # degrees
    max_perspective: float = 0.05  # corner jitter as a fraction of the crop size
    blur_probability: float = 0.3
    noise_probability: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_fraction <= 1.0:
            raise ValueError(f"random_fraction must be in [0, 1], got {self.random_fraction}")
        if self.random_max_length < 1 or self.max_label_length < 1:
            raise ValueError("label lengths must be at least 1")
        if not 8 <= self.min_height <= self.max_height:
            raise ValueError(f"need 8 <= min_height <= max_height, got {self.min_height}, {self.max_height}")
        if not 0.0 <= self.min_contrast <= 200.0:
            raise ValueError(f"min_contrast must be in [0, 200], got {self.min_contrast}")


@lru_cache(maxsize=4)
def load_words(max_length: int = 25) -> tuple[str, ...]:
    """The shipped word list, restricted to words of at most ``max_length`` characters."""
    words = tuple(w for w in WORDS_FILE.read_text(encoding="utf-8").split() if len(w) <= max_length)
    if not words:
        raise ValueError(f"{WORDS_FILE}: no word of at most {max_length} characters")
    return words


def find_fonts(fonts_dir: str | os.PathLike | None = None) -> list[str]:
    """matplotlib's DejaVu fonts plus every .ttf/.otf under ``fonts_dir``, sorted for determinism.

    The DejaVu*Display faces are left out: they hold only a handful of glyphs.
    """
    bundled = sorted(str(p) for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf")
                     if "Display" not in p.name)
    extra = []
    if fonts_dir is not None:
        if not Path(fonts_dir).is_dir():
            raise FileNotFoundError(f"{fonts_dir}: fonts directory does not exist")
        extra = sorted(str(p) for p in Path(fonts_dir).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    fonts = bundled + extra
    if not fonts:
        raise FileNotFoundError("no fonts found (matplotlib's DejaVu fonts are missing and no --fonts_dir given)")
    return fonts


@lru_cache(maxsize=1024)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def sample_label(rng: np.random.Generator, config: SynthConfig) -> str:
    """A dictionary word in lower (50 %), UPPER (25 %) or Capitalised (25 %) case, or, with probability
    ``random_fraction``, a random alphanumeric string of 1..random_max_length characters."""
    if rng.random() < config.random_fraction:
        length = int(rng.integers(1, min(config.random_max_length, config.max_label_length) + 1))
        return "".join(ALNUM[i] for i in rng.integers(0, len(ALNUM), length))
    words = load_words(config.max_label_length)
    word = words[int(rng.integers(len(words)))]
    style = rng.random()
    return word.upper() if style < 0.25 else word.capitalize() if style < 0.5 else word


def _colours(rng: np.random.Generator, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Background and text RGB colours whose lumas differ by at least ``min_contrast``; each colour is
    pulled a random amount towards its grey level, as most real signs are far from fully saturated."""
    while True:
        background, text = rng.uniform(0, 255, (2, 3))
        background, text = (c @ LUMA + (c - c @ LUMA) * rng.uniform(0, 1) for c in (background, text))
        if abs((background - text) @ LUMA) >= config.min_contrast:
            return background.astype(np.float32), text.astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """float32 [h, w, 3] around ``colour``: plain, linear gradient, pixel noise, smoothed-noise texture
    or stripes; the variations stay within about ±25 grey levels so the text keeps its contrast."""
    kind = int(rng.integers(5))
    canvas = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if kind == 0:
        return canvas
    if kind == 2:
        return canvas + rng.normal(0, rng.uniform(3, 10), (height, width, 1)).astype(np.float32)
    if kind == 3:
        grid = (max(height // int(rng.integers(2, 9)), 2), max(width // int(rng.integers(2, 9)), 2))
        texture = cv2.resize(rng.normal(0, 1, grid).astype(np.float32), (width, height),
                             interpolation=cv2.INTER_CUBIC)
        return canvas + texture[..., None] * rng.uniform(-12, 12, 3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    if kind == 1:
        pattern = (along - along.min()) / max(float(np.ptp(along)), 1e-6) - 0.5
        amplitude = rng.uniform(-50, 50, 3)
    else:
        pattern = np.sin(along * (2 * np.pi / rng.uniform(3, 20)) + rng.uniform(0, 2 * np.pi))
        amplitude = rng.uniform(-15, 15, 3)
    return canvas + pattern[..., None] * amplitude.astype(np.float32)


def _warp(rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, config: SynthConfig
          ) -> tuple[np.ndarray, np.ndarray]:
    """One mild rotation + perspective transform applied identically to the background and the text
    layer; the output is enlarged to hold the whole warped crop."""
    height, width = alpha.shape
    angle = np.deg2rad(rng.uniform(-config.max_rotation, config.max_rotation))
    centre = np.array([width / 2, height / 2])
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rotation.T + centre
    moved += rng.uniform(-1, 1, (4, 2)) * config.max_perspective * np.array([width, height])
    moved -= moved.min(0)
    size = (int(np.ceil(moved[:, 0].max())) + 1, int(np.ceil(moved[:, 1].max())) + 1)
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32))
    image = cv2.warpPerspective(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpPerspective(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return image, alpha


def render_sample(index: int, seed: int, fonts: list[str], config: SynthConfig = SynthConfig()
                  ) -> tuple[Image.Image, np.ndarray, str]:
    """The ``index``-th sample of stream ``seed``: (RGB crop, uint8 {0,1} glyph mask of the same
    height and width, label). A pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    label = sample_label(rng, config)
    out_height = int(rng.integers(config.min_height, config.max_height + 1))
    font_size = max(8, round(out_height * rng.uniform(0.6, 0.9)))
    font = _font(fonts[int(rng.integers(len(fonts)))], font_size)
    left, top, right, bottom = font.getbbox(label)
    pad_left, pad_right = (rng.uniform(0.05, 0.5, 2) * font_size).astype(int) + 1
    pad_top, pad_bottom = (rng.uniform(0.05, 0.3, 2) * font_size).astype(int) + 1
    width, height = right - left + pad_left + pad_right, bottom - top + pad_top + pad_bottom
    layer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(layer).text((pad_left - left, pad_top - top), label, fill=255, font=font)
    background_colour, text_colour = _colours(rng, config)
    canvas = _background(rng, height, width, background_colour)
    alpha = np.asarray(layer, np.float32) / 255.0
    canvas, alpha = _warp(rng, canvas, alpha, config)
    scale = out_height / alpha.shape[0]
    size = (max(1, round(alpha.shape[1] * scale)), out_height)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = cv2.resize(canvas, size, interpolation=interpolation)
    alpha = cv2.resize(alpha, size, interpolation=interpolation)
    image = canvas * (1 - alpha[..., None]) + text_colour * alpha[..., None]
    if rng.random() < config.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < config.noise_probability:
        image = image + rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    mask = (alpha > 0.5).astype(np.uint8)
    return Image.fromarray(image), mask, label


def _encoded_sample(index: int, seed: int, fonts: list[str], config: SynthConfig) -> tuple[bytes, bytes, str]:
    """(JPEG q=95 image bytes, PNG mask bytes, label) of one sample, as written to the LMDBs."""
    image, mask, label = render_sample(index, seed, fonts, config)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), encode_png(mask), label


def _prepare_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty directory unless ``overwrite`` and it is an LMDB."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not is_lmdb_dir(path):
        raise FileExistsError(f"{path}: exists and is not an LMDB directory; not replacing it")


def write_synth_lmdb(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, num_samples: int, seed: int,
                     workers: int = 2, fonts_dir: str | os.PathLike | None = None,
                     config: SynthConfig | None = None, progress: bool = True, overwrite: bool = False) -> None:
    """Render samples 0..num_samples-1 of ``seed`` into an image LMDB and the matching mask LMDB
    (1-based keys, ``num-samples`` set in both).

    Both are built in hidden sibling directories and moved into place only when complete (mask
    first, image last), so an interrupted run leaves no image LMDB behind that looks finished.
    Existing outputs are replaced only with ``overwrite`` and only if they are LMDBs.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    config = config or SynthConfig()
    fonts = find_fonts(fonts_dir)
    targets = (Path(image_dir), Path(mask_dir))
    if targets[0].resolve() == targets[1].resolve():
        raise ValueError(f"image and mask LMDBs must be different directories, got {image_dir} twice")
    for target in targets:
        _prepare_target(target, overwrite)
    partials = [target.with_name(f".{target.name}.partial") for target in targets]
    job = partial(_encoded_sample, seed=seed, fonts=fonts, config=config)
    try:
        for path in partials:
            shutil.rmtree(path, ignore_errors=True)
        images, masks = LmdbWriter(partials[0]), LmdbWriter(partials[1])
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(job, range(num_samples), chunksize=32) if pool else map(job, range(num_samples))
            for image_bytes, mask_bytes, label in tqdm(results, total=num_samples, disable=not progress,
                                                       desc=f"synth {targets[0].name}", unit="img"):
                index = images.add_sample(image_bytes, label)
                masks.put(MASK_KEY % index, mask_bytes)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            images.close()
            masks.close(images.num_samples)
        for target in targets:  # an old image LMDB must not outlive its replaced mask LMDB
            if target.exists():
                shutil.rmtree(target)
        for path, target in zip(partials[::-1], targets[::-1]):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        for path in partials:
            shutil.rmtree(path, ignore_errors=True)


#: where train.py and bench.py keep the built-in demo data (relative to the working directory)
DEMO_ROOT = Path("data/synth_demo")


def build_demo_data(root: str | os.PathLike, num_train: int = 20000, num_val: int = 1000, seed: int = 0,
                    workers: int = 2) -> dict[str, Path]:
    """Create ``root/{images,masks}/{train,val}`` unless both LMDBs of a split are present; train uses
    ``seed`` and val ``seed + 1_000_003``. Returns the image/mask roots and the four LMDB paths."""
    root = Path(root)
    paths = {"images": root / "images", "masks": root / "masks"}
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + VAL_SEED_OFFSET)):
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        paths[f"{split}_images"], paths[f"{split}_masks"] = image_dir, mask_dir
        if is_lmdb_dir(image_dir) and is_lmdb_dir(mask_dir):
            continue
        for leftover in (image_dir, mask_dir):  # one half of an interrupted build
            if leftover.exists():
                shutil.rmtree(leftover)
        write_synth_lmdb(image_dir, mask_dir, count, split_seed, workers)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Write one image/mask LMDB pair (``--out``) or the demo splits (``--demo_root``), printing their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="image LMDB directory to write")
    parser.add_argument("--mask_out", help="mask LMDB directory to write (default: <out>_mask)")
    parser.add_argument("--num", type=int, help="number of samples (default 20000; with --demo_root, "
                                                "the training split's size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fonts_dir", help="extra .ttf/.otf fonts (searched recursively)")
    parser.add_argument("--random_fraction", type=float, default=SynthConfig.random_fraction)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output LMDBs")
    parser.add_argument("--demo_root", help="build the demo train/val LMDBs under this root instead")
    args = parser.parse_args(argv)
    num = 20000 if args.num is None else args.num
    if args.demo_root:
        for name, path in build_demo_data(args.demo_root, num_train=num, seed=args.seed, workers=args.workers).items():
            print(f"{name}: {path}")
        return
    if not args.out:
        parser.error("give --out (or --demo_root)")
    mask_out = args.mask_out or args.out.rstrip("/") + "_mask"
    write_synth_lmdb(args.out, mask_out, num, args.seed, args.workers, args.fonts_dir,
                     SynthConfig(random_fraction=args.random_fraction), overwrite=args.overwrite)
    print(f"images: {args.out}\nmasks: {mask_out}")


if __name__ == "__main__":
    main()
