"""Shared test helpers: rendered word images and tiny clovaai-format LMDBs built from them.

Use the ``word_lmdb`` fixture (it returns :func:`make_word_lmdb`) or import the functions directly
(``from conftest import make_word_lmdb``; pytest puts ``tests/`` on the path).
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import lmdb
import pytest
from PIL import Image, ImageDraw, ImageFont

CORRUPT_IMAGE_BYTES = b"this is not an image"


@lru_cache(maxsize=8)
def word_font(size: int = 22) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's bundled fonts (PIL's default font if matplotlib is absent)."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def render_word(word: str, size: tuple[int, int] = (100, 32), color=(20, 20, 20), background=(235, 235, 235),
                mode: str = "RGB") -> Image.Image:
    """``word`` in dark text centred on a light background; ``size`` is (width, height)."""
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = word_font(max(8, int(height * 0.7)))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top), word, fill=color, font=font)
    return image.convert(mode) if mode != "RGB" else image


def encode_image(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def make_word_lmdb(path: str | Path, words: Sequence[str], size: tuple[int, int] = (100, 32),
                   corrupt_indices: Iterable[int] = (), labels: Sequence[str] | None = None) -> Path:
    """An LMDB at ``path`` with one rendered PNG per word, labelled with the word (or ``labels``).

    ``corrupt_indices`` are 1-based sample indices whose image bytes are not an image.
    """
    from lmdb_io import LmdbWriter  # imported here so that a broken data layer does not break every test file

    corrupt = set(corrupt_indices)
    labels = list(words) if labels is None else list(labels)
    if len(labels) != len(words):
        raise ValueError("words and labels differ in length")
    with LmdbWriter(path) as writer:
        for index, (word, label) in enumerate(zip(words, labels), start=1):
            data = CORRUPT_IMAGE_BYTES if index in corrupt else encode_image(render_word(word, size))
            writer.add_sample(data, label)
    return Path(path)


@pytest.fixture
def word_lmdb():
    """The :func:`make_word_lmdb` builder."""
    return make_word_lmdb


def raw_entries(path: Path) -> dict[bytes, bytes]:
    """Every key/value of the LMDB at ``path``."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        entries = dict(txn.cursor())
    env.close()
    return entries


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Synthetic word LMDBs: ``train/synth`` (48 samples, masks under ``masks/synth``) and ``val/synth_val`` (12)."""
    from tools.synth import write_synth_lmdb

    root = tmp_path_factory.mktemp("data")
    write_synth_lmdb(root / "train" / "synth", root / "masks" / "synth", 48, seed=5, workers=1, progress=False)
    write_synth_lmdb(root / "val" / "synth_val", root / "val_masks", 12, seed=6, workers=1, progress=False)
    return root


def write_tiny_checkpoint(path: Path, model_name: str = "TRBA", seed: int = 0) -> tuple:
    """A tiny checkpoint in train.py's format with sharpened generator weights, so that greedy predictions
    vary in length; returns (model in eval mode, tokenizer, config)."""
    import torch

    from checkpoint import atomic_save, training_state
    from config import make_config
    from model import build_model
    from optimization import build_optimizer, build_scheduler
    from tokenizer import Tokenizer

    torch.manual_seed(seed)
    config = make_config("tiny", model=model_name)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    generator = model.decoder.generator if model_name == "TRBA" else model.siga.final_decoder.generator
    with torch.no_grad():
        generator.weight.mul_(10.0)
        generator.bias[tokenizer.eos_id] += 1.0
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)
    atomic_save(training_state(model, config, tokenizer, optimizer=optimizer.state_dict(),
                               scheduler=scheduler.state_dict(), iteration=0, best_accuracy=-1.0), path)
    return model.eval(), tokenizer, config


def run_entry_point(script: str, *args, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run an entry point (``train.py``, ``test.py``, ...) as a program in this process, the way ``python
    script args`` would (``runpy`` as ``__main__``; entry points are never imported as modules):
    (exit status, stdout, stderr). Faster than a subprocess, which pays torch's import again."""
    import contextlib
    import os
    import runpy
    import sys

    root = Path(__file__).resolve().parents[1]
    argv, cwd_before = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [str(root / script), *map(str, args)]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(root / script), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            err.write(str(exit_.code) + "\n")
    finally:
        sys.argv = argv
        os.chdir(cwd_before)
    return code, out.getvalue(), err.getvalue()
