"""Reading text from image files: a checkpoint's model ready for inference, finding and loading image files of
any PIL mode, preprocessing them exactly like the LMDB datasets do, and recognising them."""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from natsort import natsorted
from PIL import Image, ImageOps

from checkpoint import load_model
from config import Config
from dataset import Collate, Sample
from evaluation import evaluation_mode, predict
from tokenizer import Tokenizer
from utils import use_channels_last


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
_GLOB_CHARS = frozenset("*?[")


def load_for_inference(checkpoint: str | os.PathLike, device_name: str, channels_last: str = "auto"
                       ) -> tuple[torch.nn.Module, Tokenizer, Config, torch.device]:
    """``checkpoint.load_model`` on the named device, in the memory format ``channels_last`` asks for (see
    ``utils.use_channels_last``). A missing file, an unusable device or an unloadable checkpoint is a
    ValueError whose message names it (entry points report it as a usage error)."""
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint not found: {checkpoint}")
    try:
        device = torch.device(device_name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"device {device_name!r} is not usable: {error}") from error
    try:
        model, tokenizer, config = load_model(checkpoint, device)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot load checkpoint {checkpoint}: {error}") from error
    use_channels_last(model, channels_last, device, training=False)
    return model, tokenizer, config, device


# --------------------------------------------------------------------------------------------------
# Finding and loading images
# --------------------------------------------------------------------------------------------------
def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _images_in_directory(directory: Path) -> list[str]:
    return natsorted(str(p) for p in directory.iterdir() if p.is_file() and is_image_name(p))


def expand_image_paths(specs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Files from explicit paths, directories (their image files, natural order) and glob patterns.

    An explicitly named file is kept whatever its extension; files found in a directory or by a glob
    must have an image extension. Returns (paths without duplicates, in order; specs that matched nothing).
    """
    found: list[str] = []
    unmatched: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            matches = [spec]
        elif path.is_dir():
            matches = _images_in_directory(path)
        elif _GLOB_CHARS & set(spec):
            matches = []
            for hit in natsorted(glob.glob(spec, recursive=True)):
                if Path(hit).is_dir():
                    matches.extend(_images_in_directory(Path(hit)))
                elif is_image_name(hit):
                    matches.append(hit)
        else:
            matches = []
        if not matches:
            unmatched.append(spec)
        found.extend(matches)
    return list(dict.fromkeys(found)), unmatched


def _scale_to_uint8(array: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB version of a PIL image of any mode.

    Transparency is composited on white; 16-bit images are scaled (65535 → 255), not clipped;
    32-bit integer images are treated as 8-bit if their maximum is ≤ 255, as 16-bit if ≤ 65535, and
    min–max scaled otherwise; float images as [0, 1] if their maximum is ≤ 1, else clipped to [0, 255].
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        gray = _scale_to_uint8(np.asarray(image), 65535.0)
        return Image.fromarray(gray).convert("RGB")
    if mode == "I":
        array = np.asarray(image).astype(np.int64)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low >= 0 and high <= 255:
            gray = array.astype(np.uint8)
        elif low >= 0 and high <= 65535:
            gray = _scale_to_uint8(array, 65535.0)
        else:
            gray = _scale_to_uint8(array - low, max(high - low, 1))
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 1.0 if array.size and array.max() <= 1.0 else 255.0
        return Image.fromarray(_scale_to_uint8(array, scale)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info) \
        or (mode in ("L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB, applying its EXIF orientation first (see :func:`to_rgb`).

    Raises ``OSError``/``ValueError`` (e.g. ``PIL.UnidentifiedImageError``) for unreadable files.
    """
    with Image.open(path) as image:
        image.load()
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block must not make an otherwise fine image unreadable
            upright = image
        return to_rgb(upright).copy()


def image_paths_for_cli(specs: Iterable[str]) -> list[str]:
    """``expand_image_paths`` for an entry point: warns about each spec that matched nothing and says
    so when no file at all was found (the caller then exits with status 1)."""
    paths, unmatched = expand_image_paths(specs)
    for spec in unmatched:
        print(f"warning: {spec}: no such file, or no image files match", file=sys.stderr)
    if not paths:
        print("error: no image files found", file=sys.stderr)
    return paths


def readable_images(paths: Sequence[str]) -> Iterator[tuple[str, Image.Image]]:
    """(path, RGB image) for every file that decodes; any other file is reported on stderr and skipped."""
    for path in paths:
        try:
            image = load_image(path)
        except Exception as error:  # any decoding failure of one file: report it and go on
            print(f"skipped {path}: unreadable image ({error.__class__.__name__}: {error})", file=sys.stderr)
            continue
        yield path, image


def unreadable_report(read: int, total: int) -> int:
    """The exit status of a CLI that read ``read`` of ``total`` image files, saying what was skipped."""
    if read == 0:
        print(f"error: none of the {total} file(s) could be read as an image", file=sys.stderr)
        return 1
    if read < total:
        print(f"{total - read} of {total} file(s) skipped", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# Preprocessing and recognition
# --------------------------------------------------------------------------------------------------
def preprocess(images: Sequence[Image.Image], config: Config) -> torch.Tensor:
    """Batch [B, 3, img_h, img_w]: bicubic resize and ``dataset.Collate`` (normalised as the config says), as for
    LMDB samples."""
    samples = [Sample(np.asarray(to_rgb(image).resize((config.img_w, config.img_h), Image.BICUBIC), dtype=np.uint8),
                      None, "") for image in images]
    return Collate(config.normalize_images)(samples).images


@dataclass
class Recognition:
    text: str
    confidence: float


def recognize(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, images: Sequence[Image.Image],
              device: torch.device | str = "cpu", batch_size: int = 32,
              amp_dtype: torch.dtype | None = None) -> list[Recognition]:
    """Greedy predictions for PIL images, in batches of ``batch_size``, with the model in eval mode."""
    results: list[Recognition] = []
    batch_size = max(batch_size, 1)
    with evaluation_mode(model):
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start : start + batch_size], config)
            texts, confidences = predict(model, batch, tokenizer, device, amp_dtype)
            results.extend(Recognition(text, confidence) for text, confidence in zip(texts, confidences))
    return results
