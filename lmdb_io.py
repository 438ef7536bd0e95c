"""Reading and writing LMDBs in the clovaai layout, and decoding the images stored in them.

An image LMDB holds ``num-samples`` and 1-based ``image-%09d`` / ``label-%09d`` keys (SPEC §1.1);
a mask LMDB holds ``mask-%09d`` PNGs with values {0, 1} under the same index (SPEC §1.4).

Every reader of stored image bytes (the dataset, the mask generator, ``tools.create_lmdb_dataset``)
decodes them with :func:`decode_image`, so an image one of them accepts the others accept too.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_KEY = "image-%09d"
LABEL_KEY = "label-%09d"
MASK_KEY = "mask-%09d"
NUM_SAMPLES_KEY = b"num-samples"

# What PIL raises for bytes that are not a (complete, sane) image; anything else is a bug and propagates.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DataSourceError(RuntimeError):
    """An LMDB that cannot be read at all (as opposed to one corrupt sample, which is skipped)."""


class UndecodableImage(ValueError):
    """Stored bytes that are not a usable image.

    ``str(error)`` is the full reason for a per-sample report, e.g. ``undecodable image (OSError: image
    file is truncated)``; ``summary`` drops PIL's own text (``undecodable image (OSError)``) so that
    skip tallies group the same failure of different samples under one reason.
    """

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def decode_image(data: bytes) -> Image.Image:
    """The RGB image encoded in ``data`` (any format PIL reads), fully decoded.

    Raises :class:`UndecodableImage`, naming the class of the PIL error, when PIL cannot read the
    bytes (or reads an image with no pixels), so callers handle one exception type.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except _DECODE_ERRORS as error:
        name = error.__class__.__name__
        # PIL's text for an unknown format shows the BytesIO's address, which differs on every run.
        detail = "not a recognised image format" if isinstance(error, UnidentifiedImageError) else str(error)
        raise UndecodableImage(f"undecodable image ({name}: {detail})", f"undecodable image ({name})") from error
    if rgb.width == 0 or rgb.height == 0:
        raise UndecodableImage(f"empty image ({rgb.width}x{rgb.height})", "empty image")
    return rgb


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array (used for {0,1} masks) or an HxWx3 RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def is_lmdb_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding an LMDB ``data.mdb``."""
    return (Path(path) / "data.mdb").is_file()


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Open an LMDB read-only with the settings of SPEC §1.1; a clear error when it is not one."""
    if not is_lmdb_dir(path):
        raise FileNotFoundError(f"{path}: not an LMDB directory (no data.mdb inside)")
    return lmdb.open(str(path), max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)


def read_num_samples(env: lmdb.Environment, path: str | os.PathLike) -> int:
    """The ``num-samples`` entry of an image LMDB, with an error naming ``path`` if absent or bad."""
    with env.begin(write=False) as txn:
        raw = txn.get(NUM_SAMPLES_KEY)
    if raw is None:
        raise ValueError(f"{path}: LMDB has no 'num-samples' key")
    try:
        return int(raw.decode())
    except ValueError as error:
        raise ValueError(f"{path}: 'num-samples' is not an integer: {raw!r}") from error


def find_lmdb_leaves(root: str | os.PathLike) -> list[Path]:
    """Every LMDB directory at or below ``root``, sorted (a 'leaf' dataset of SPEC §1.1)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data path does not exist")
    leaves = [Path(d) for d, _, files in os.walk(root, followlinks=True) if "data.mdb" in files]
    if not leaves:
        raise FileNotFoundError(f"{root}: no LMDB (directory with data.mdb) found at or below it")
    return sorted(leaves)


class LmdbWriter:
    """Write an LMDB in the clovaai layout, committing in chunks; ``num-samples`` is written on close.

    Used by the synthetic generator, ``tools.create_lmdb_dataset`` and the mask generator.
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 40, commit_every: int = 1000):
        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.env = lmdb.open(str(path), map_size=map_size)
        self.commit_every = commit_every
        self._cache: dict[bytes, bytes] = {}
        self.num_samples = 0

    def put(self, key: str, value: bytes) -> None:
        """Queue one key/value; the queue is committed every ``commit_every`` entries to bound memory."""
        self._cache[key.encode()] = value
        if len(self._cache) >= self.commit_every:
            self.flush()

    def add_sample(self, image_bytes: bytes, label: str) -> int:
        """Append one image/label pair under the next 1-based index and return that index."""
        self.num_samples += 1
        self.put(IMAGE_KEY % self.num_samples, image_bytes)
        self.put(LABEL_KEY % self.num_samples, label.encode("utf-8"))
        return self.num_samples

    def flush(self) -> None:
        """Commit the queued entries in one write transaction."""
        if self._cache:
            with self.env.begin(write=True) as txn:
                for key, value in self._cache.items():
                    txn.put(key, value)
            self._cache.clear()

    def close(self, num_samples: int | None = None) -> None:
        """Flush and write ``num-samples`` (the count of added samples unless given)."""
        count = self.num_samples if num_samples is None else num_samples
        self.put(NUM_SAMPLES_KEY.decode(), str(count).encode())
        self.flush()
        self.env.close()

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
