"""Reading text from image files: a checkpoint's model ready for inference, finding and loading image files of
any PIL mode, preprocessing them exactly like the LMDB datasets do, and recognising them."""
from __future__ import annotations

import glob
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from natsort import natsorted
from PIL import Image, ImageOps

from char_attention import locate_peaks
from checkpoint import load_model
from config import Config
from dataset import Collate, Sample
from evaluation import evaluation_mode, predict
from tokenizer import Tokenizer
from utils import AMP_DTYPES, autocast, bf16_emulation_reason, use_channels_last


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
_GLOB_CHARS = frozenset("*?[")


def load_for_inference(checkpoint: str | os.PathLike, device_name: str, channels_last: str = "auto",
                       expected_model: str | None = None) -> tuple[torch.nn.Module, Tokenizer, Config, torch.device]:
    """``checkpoint.load_model`` on the named device, in the memory format ``channels_last`` asks for (see
    ``utils.use_channels_last``). A missing file, an unusable device or an unloadable checkpoint (or one of
    another model than ``expected_model``) is a one-line ValueError naming it (entry points report it as a
    usage error)."""
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint not found: {checkpoint}")
    try:
        device = torch.device(device_name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"device {device_name!r} is not usable: {error}") from error
    model, tokenizer, config = load_model(checkpoint, device, expected_model)
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


#: what :meth:`Recognizer.read` accepts as one image
ImageInput = Union[Image.Image, np.ndarray, str, os.PathLike]


def array_to_image(array: np.ndarray) -> Image.Image:
    """An RGB PIL image from an H×W (gray) or H×W×C array with C = 1, 3 (RGB order) or 4 (RGBA).

    uint8 is taken as is, bool as 0/255, uint16 scaled by 1/257, floats as [0, 1] if their maximum is ≤ 1,
    else clipped to [0, 255]. Other shapes or dtypes are a ValueError saying what was given."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape[:2]:
        raise ValueError(f"image array of shape {array.shape}: expected H×W, or H×W×C with C = 1, 3 or 4")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        pixels = _scale_to_uint8(array, 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64))
        pixels = _scale_to_uint8(finite, 1.0 if finite.max() <= 1.0 else 255.0)
    else:
        raise ValueError(f"image array of dtype {array.dtype}: expected uint8, uint16, bool or float")
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))


def as_rgb_image(image: ImageInput) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a numpy array (:func:`array_to_image`) or an image file path."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_image(image)
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{image}: no such image file")
        return load_image(image)
    raise TypeError(f"cannot read an image from {type(image).__name__}: give a PIL image, a numpy array or a path")


@dataclass
class Recognition:
    """One image's reading: the greedy ``text`` and its ``confidence`` (product of the per-character
    maximum probabilities, EOS included). With ``locate=True`` also, per character, where the model read it:
    ``char_positions`` as (x, y) pixels of the image as given (the glyph-map peak of a SIGA model, else the
    1-D attention peak at the rectified line's centre, carried back through the TPS grid; see
    ``char_attention``), and ``attention``, the decoder's 1-D attention [steps, T] over the T columns of the
    visual sequence, one row per decoding step through EOS."""

    text: str
    confidence: float
    char_positions: list[tuple[float, float]] | None = None
    attention: np.ndarray | None = None


class Recognizer:
    """A trained model ready to read words: ``Recognizer.from_checkpoint(path)(images)``.

    Takes PIL images, numpy arrays and image file paths, preprocesses them exactly like the LMDB datasets
    (bicubic resize to the model's input, the config's normalisation) and decodes greedily in batches.
    ``demo.py``, ``test.py`` and the ``hubconf.py`` entries load models through it.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: Config,
                 device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.device, self.amp_dtype, self.batch_size = torch.device(device), amp_dtype, batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | None = None, amp: str = "off",
                        channels_last: str = "auto", batch_size: int = 32,
                        expected_model: str | None = None) -> "Recognizer":
        """Load a checkpoint of this repo or an official one; ``device`` defaults to CUDA when present;
        ``amp`` is "off" or "bf16"; ``expected_model`` (e.g. "SIGA_R") refuses a checkpoint of another model.
        Every loading problem, a missing file included, is a one-line ValueError naming the file."""
        if amp not in ("off", "bf16"):
            raise ValueError(f"amp must be 'off' or 'bf16', got {amp!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, config, torch_device = load_for_inference(path, device, channels_last, expected_model)
        emulated = bf16_emulation_reason(torch_device) if amp == "bf16" else None
        if emulated:
            warnings.warn(f"amp bf16: {emulated}", stacklevel=2)
        return cls(model, tokenizer, config, torch_device, AMP_DTYPES[amp], batch_size)

    def read(self, images: Sequence[ImageInput], locate: bool = False) -> list[Recognition]:
        """One :class:`Recognition` per image, in order; ``locate`` adds where each character was read (a
        traced decoding: same texts, slightly slower)."""
        pictures = [as_rgb_image(image) for image in images]
        results: list[Recognition] = []
        with evaluation_mode(self.model):
            for start in range(0, len(pictures), self.batch_size):
                chunk = pictures[start : start + self.batch_size]
                batch = preprocess(chunk, self.config)
                if locate:
                    results.extend(self._located(batch, [picture.size for picture in chunk]))
                else:
                    texts, confidences = predict(self.model, batch, self.tokenizer, self.device, self.amp_dtype)
                    results.extend(Recognition(text, confidence) for text, confidence in zip(texts, confidences))
        return results

    @torch.inference_mode()
    def _located(self, batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Recognition]:
        """Readings of a preprocessed batch with the character positions in images of ``sizes`` (w, h)."""
        with autocast(self.device, self.amp_dtype):
            trace = self.model.trace(batch.to(self.device))
        texts, confidences = self.tokenizer.decode(trace.logits)
        peaks = locate_peaks(trace, torch.tensor(sizes), self.tokenizer.eos_id)
        positions = peaks.original["glyph" if "glyph" in peaks.original else "1d"].cpu().numpy()
        attention = trace.attention.float().cpu().numpy()
        steps = peaks.steps.tolist()
        return [Recognition(text, confidence, [(float(x), float(y)) for x, y in positions[row, : len(text)]],
                            attention[row, :, : steps[row]].T.copy())
                for row, (text, confidence) in enumerate(zip(texts, confidences))]

    def __call__(self, images: ImageInput | Sequence[ImageInput], locate: bool = False
                 ) -> Recognition | list[Recognition]:
        """One image → its Recognition; a list or tuple of images → a list."""
        if isinstance(images, (list, tuple)):
            return self.read(images, locate)
        return self.read([images], locate)[0]
