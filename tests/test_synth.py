"""The built-in synthetic word generator: word list, determinism, glyph masks, LMDB layout, demo data."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from golden import require
from lmdb_io import MASK_KEY, open_lmdb, read_num_samples
from tools import synth
from tools.synth import SynthConfig, build_demo_data, find_fonts, render_sample, write_synth_lmdb

REPO = Path(__file__).resolve().parents[1]
IIIT5K = REPO.parent / "shared" / "data" / "IIIT5k_train_2000"
FONTS = find_fonts()
CONFIG = SynthConfig()


def lmdb_items(path: Path) -> dict[bytes, bytes]:
    env = open_lmdb(path)
    try:
        with env.begin() as txn:
            return dict(txn.cursor())
    finally:
        env.close()


def decode_png(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)))


def test_words_file_is_small_clean_and_one_word_per_line():
    assert synth.WORDS_FILE.stat().st_size <= 1 << 20
    lines = synth.WORDS_FILE.read_text(encoding="utf-8").splitlines()
    assert 10_000 <= len(lines) <= 30_000
    assert len(set(w.lower() for w in lines)) == len(lines)
    assert all(re.fullmatch(r"[0-9A-Za-z]{2,25}", w) for w in lines)


def test_words_are_disjoint_from_iiit5k_train_labels():
    require(IIIT5K / "data.mdb")
    env = open_lmdb(IIIT5K)
    try:
        count = read_num_samples(env, IIIT5K)
        with env.begin() as txn:
            held_out = {txn.get(b"label-%09d" % i).decode().lower() for i in range(1, count + 1)}
    finally:
        env.close()
    words = {w.lower() for w in synth.WORDS_FILE.read_text(encoding="utf-8").split()}
    assert count == 2000 and not words & held_out


def test_render_sample_is_a_pure_function_of_seed_and_index():
    for index in (0, 7, 123):
        first, second = render_sample(index, 5, FONTS, CONFIG), render_sample(index, 5, FONTS, CONFIG)
        assert first[2] == second[2]
        assert np.asarray(first[0]).tobytes() == np.asarray(second[0]).tobytes()
        assert np.array_equal(first[1], second[1])
    assert synth._encoded_sample(3, 5, FONTS, CONFIG) == synth._encoded_sample(3, 5, FONTS, CONFIG)
    others = [np.asarray(render_sample(i, 6, FONTS, CONFIG)[0]) for i in (0, 7)]
    assert not any(np.array_equal(o, np.asarray(render_sample(i, 5, FONTS, CONFIG)[0])) for o, i in zip(others, (0, 7)))


def test_masks_cover_the_glyphs_and_labels_are_valid():
    for index in range(40):
        image, mask, label = render_sample(index, 11, FONTS, CONFIG)
        pixels = np.asarray(image, np.float32)
        assert image.mode == "RGB" and mask.dtype == np.uint8 and mask.shape == pixels.shape[:2]
        assert CONFIG.min_height <= image.height <= CONFIG.max_height
        assert set(np.unique(mask)) == {0, 1}
        foreground, background = pixels[mask == 1].mean(0), pixels[mask == 0].mean(0)
        assert np.linalg.norm(foreground - background) > 30, (index, label)
        assert re.fullmatch(r"[0-9A-Za-z]{1,25}", label)


def test_random_fraction_zero_gives_dictionary_words_in_three_cases():
    words = set(synth.load_words())
    labels = [render_sample(i, 2, FONTS, SynthConfig(random_fraction=0.0))[2] for i in range(60)]
    assert all(label.lower() in words for label in labels)
    assert {"lower", "upper", "title"} <= {"lower" if l.islower() else "upper" if l.isupper() else "title"
                                          for l in labels}
    with pytest.raises(ValueError):
        SynthConfig(random_fraction=1.5)


def test_lmdb_layout_and_same_bytes_for_any_worker_count(tmp_path):
    count = 50
    write_synth_lmdb(tmp_path / "w1", tmp_path / "w1_mask", count, seed=3, workers=1, progress=False)
    write_synth_lmdb(tmp_path / "w2", tmp_path / "w2_mask", count, seed=3, workers=2, progress=False)
    images, masks = lmdb_items(tmp_path / "w1"), lmdb_items(tmp_path / "w1_mask")
    assert images == lmdb_items(tmp_path / "w2") and masks == lmdb_items(tmp_path / "w2_mask")
    assert images[b"num-samples"] == masks[b"num-samples"] == str(count).encode()
    assert len(images) == 2 * count + 1 and len(masks) == count + 1
    for index in range(1, count + 1):
        label = images[b"label-%09d" % index].decode()
        image = Image.open(io.BytesIO(images[b"image-%09d" % index]))
        mask = decode_png(masks[(MASK_KEY % index).encode()])
        assert label and len(label) <= 25 and image.format == "JPEG"
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) == {0, 1}
    first_image, first_mask, first_label = render_sample(0, 3, FONTS, CONFIG)
    assert images[b"label-000000001"].decode() == first_label
    assert np.array_equal(decode_png(masks[b"mask-000000001"]), first_mask)
    assert not list(tmp_path.glob(".*partial"))


def test_interrupted_write_leaves_nothing_and_existing_output_is_protected(tmp_path, monkeypatch):
    original = synth.render_sample

    def failing(index, *args, **kwargs):
        if index == 5:
            raise RuntimeError("interrupted")
        return original(index, *args, **kwargs)

    monkeypatch.setattr(synth, "render_sample", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 10, seed=0, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "render_sample", original)

    write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 4, seed=0, workers=1, progress=False)
    with pytest.raises(FileExistsError):
        write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 3, seed=1, workers=1, progress=False)
    write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 3, seed=1, workers=1, progress=False, overwrite=True)
    assert lmdb_items(tmp_path / "db")[b"num-samples"] == b"3" and len(lmdb_items(tmp_path / "db")) == 7


def test_build_demo_data_creates_splits_once(tmp_path):
    paths = build_demo_data(tmp_path / "demo", num_train=12, num_val=6, seed=4, workers=1)
    for split, count in (("train", 12), ("val", 6)):
        assert paths[f"{split}_images"] == tmp_path / "demo" / "images" / split
        assert paths[f"{split}_masks"] == tmp_path / "demo" / "masks" / split
        assert lmdb_items(paths[f"{split}_images"])[b"num-samples"] == str(count).encode()
        assert lmdb_items(paths[f"{split}_masks"])[b"num-samples"] == str(count).encode()
    train, val = lmdb_items(paths["train_images"]), lmdb_items(paths["val_images"])
    assert not {v for k, v in train.items() if k.startswith(b"image-")} & {v for k, v in val.items()
                                                                           if k.startswith(b"image-")}
    stamp = (paths["train_images"] / "data.mdb").stat().st_mtime_ns
    build_demo_data(tmp_path / "demo", num_train=12, num_val=6, seed=4, workers=1)
    assert (paths["train_images"] / "data.mdb").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "demo" / "images").iterdir()) == ["train", "val"]


def test_cli_writes_image_and_default_mask_lmdb(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "tools.synth", "--out", str(out), "--num", "5", "--workers", "1",
                             "--seed", "9", "--random_fraction", "0.5"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    images, masks = lmdb_items(out), lmdb_items(tmp_path / "cli_mask")
    assert images[b"num-samples"] == masks[b"num-samples"] == b"5"
    assert images[b"label-000000005"].decode() == render_sample(4, 9, FONTS, SynthConfig(random_fraction=0.5))[2]
