"""The synthetic LMDB writer (tools/synth.py) on top of synth.engine: the shipped word list, LMDB layout and
worker-count independence, interrupted and protected writes, the demo data and its stamp, --set and the CLI."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from golden import require
from lmdb_io import MASK_KEY, open_lmdb, read_num_samples
from synth.engine import ENGINE_VERSION, EngineConfig, render_sample
from synth.fonts import FontCatalogue, discover_fonts
from synth.vocabulary import WORDS_FILE, VocabularyConfig
from tools import synth
from tools.synth import (STAMP_FILE, VAL_SEED_OFFSET, build_demo_data, builtin_data, main, parse_engine_settings,
                         write_synth_lmdb)

REPO = Path(__file__).resolve().parents[1]
IIIT5K = REPO.parent / "shared" / "data" / "IIIT5k_train_2000"


@pytest.fixture(scope="module")
def catalogue() -> FontCatalogue:
    """The faces write_synth_lmdb draws from by default (every discovered face)."""
    return FontCatalogue(discover_fonts())


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
    assert WORDS_FILE == REPO / "synth" / "words.txt"
    assert WORDS_FILE.stat().st_size <= 1 << 20
    lines = WORDS_FILE.read_text(encoding="utf-8").splitlines()
    assert 10_000 <= len(lines) <= 30_000
    assert len(set(lines)) == len(lines)
    # the provenance rule: 2-15 lowercase ASCII letters with a vowel and no letter tripled
    assert all(re.fullmatch(r"[a-z]{2,15}", w) for w in lines)
    assert all(re.search(r"[aeiouy]", w) and not re.search(r"(.)\1\1", w) for w in lines)


def test_words_are_disjoint_from_iiit5k_train_labels():
    require(IIIT5K / "data.mdb")
    env = open_lmdb(IIIT5K)
    try:
        count = read_num_samples(env, IIIT5K)
        with env.begin() as txn:
            held_out = {txn.get(b"label-%09d" % i).decode().lower() for i in range(1, count + 1)}
    finally:
        env.close()
    words = {w.lower() for w in WORDS_FILE.read_text(encoding="utf-8").split()}
    assert count == 2000 and not words & held_out


def test_lmdb_layout_and_same_bytes_for_any_worker_count(tmp_path, catalogue):
    count = 40
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
        assert label and len(label) <= EngineConfig().vocabulary.max_length + 1
        assert image.format == "JPEG" and image.mode == "RGB"
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) == {0, 1}
    # sample i of the LMDB is render_sample(i - 1, seed): same label, same mask, the image after JPEG q=95
    for index in (0, count - 1):
        image, mask, label = render_sample(index, 3, catalogue, EngineConfig())
        key = index + 1
        assert images[b"label-%09d" % key].decode() == label
        assert np.array_equal(decode_png(masks[(MASK_KEY % key).encode()]), mask)
        stored = np.asarray(Image.open(io.BytesIO(images[b"image-%09d" % key])), np.float32)
        assert np.abs(stored - np.asarray(image, np.float32)).mean() < 8  # JPEG q=95 of noisy crops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w1", "w1_mask", "w2", "w2_mask"]  # no partials left


def test_config_changes_what_is_written(tmp_path):
    config = EngineConfig(min_height=20, max_height=22, vocabulary=VocabularyConfig(max_length=4))
    write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 12, seed=1, workers=1, config=config, progress=False)
    images = lmdb_items(tmp_path / "db")
    for index in range(1, 13):
        assert len(images[b"label-%09d" % index].decode()) <= 5
        assert 20 <= Image.open(io.BytesIO(images[b"image-%09d" % index])).height <= 22


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
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 3, seed=1, workers=1, progress=False)
    assert lmdb_items(tmp_path / "db")[b"num-samples"] == b"4"
    write_synth_lmdb(tmp_path / "db", tmp_path / "db_mask", 3, seed=1, workers=1, progress=False, overwrite=True)
    assert lmdb_items(tmp_path / "db")[b"num-samples"] == b"3" and len(lmdb_items(tmp_path / "db")) == 7
    assert lmdb_items(tmp_path / "db_mask")[b"num-samples"] == b"3"

    # an existing directory that is not an LMDB is never replaced, even with overwrite
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an LMDB"):
        write_synth_lmdb(tmp_path / "notes", tmp_path / "notes_mask", 2, seed=0, workers=1, progress=False,
                         overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError):
        write_synth_lmdb(tmp_path / "same", tmp_path / "same", 2, seed=0, workers=1, progress=False)
    with pytest.raises(ValueError):
        write_synth_lmdb(tmp_path / "zero", tmp_path / "zero_mask", 0, seed=0, workers=1, progress=False)


def demo_counts(paths: dict[str, Path]) -> tuple[int, int]:
    return tuple(int(lmdb_items(paths[f"{split}_images"])[b"num-samples"]) for split in ("train", "val"))


def test_build_demo_data_creates_splits_once_and_rebuilds_on_a_new_stamp(tmp_path, catalogue):
    root = tmp_path / "demo"
    paths = build_demo_data(root, num_train=12, num_val=6, seed=4, workers=1, log=lambda message: None)
    for split, count in (("train", 12), ("val", 6)):
        assert paths[f"{split}_images"] == root / "images" / split
        assert paths[f"{split}_masks"] == root / "masks" / split
        assert lmdb_items(paths[f"{split}_images"])[b"num-samples"] == str(count).encode()
        assert lmdb_items(paths[f"{split}_masks"])[b"num-samples"] == str(count).encode()
    assert paths["images"] == root / "images" and paths["masks"] == root / "masks"
    stamp = json.loads((root / STAMP_FILE).read_text())
    assert {key: stamp[key] for key in ("engine", "num_train", "num_val", "seed")} == {
        "engine": ENGINE_VERSION, "num_train": 12, "num_val": 6, "seed": 4}
    assert stamp["config"] == json.loads(json.dumps(dataclasses.asdict(synth.PLAIN_ENGINE)))
    assert stamp["config"]["plain"] and stamp["config"]["p_natural_background"] == 0.0  # the demo set: plain
    train, val = lmdb_items(paths["train_images"]), lmdb_items(paths["val_images"])
    assert train[b"label-000000001"].decode() == render_sample(0, 4, catalogue, synth.PLAIN_ENGINE)[2]
    assert val[b"label-000000001"].decode() == render_sample(0, 4 + VAL_SEED_OFFSET, catalogue,
                                                             synth.PLAIN_ENGINE)[2]
    assert not ({v for k, v in train.items() if k.startswith(b"image-")}
                & {v for k, v in val.items() if k.startswith(b"image-")})

    # the same request again: nothing is rewritten
    built = (paths["train_images"] / "data.mdb").stat().st_mtime_ns
    messages = []
    build_demo_data(root, num_train=12, num_val=6, seed=4, workers=1, log=messages.append)
    assert (paths["train_images"] / "data.mdb").stat().st_mtime_ns == built and messages == []
    assert sorted(p.name for p in (root / "images").iterdir()) == ["train", "val"]

    # another config, size, or a stamp from another engine version, or a missing split: rebuilt
    build_demo_data(root, num_train=12, num_val=6, seed=4, workers=1, log=messages.append, config=EngineConfig())
    assert len(messages) == 2 and json.loads((root / STAMP_FILE).read_text())["config"]["p_clean"] == 0.3
    messages.clear()
    build_demo_data(root, num_train=8, num_val=6, seed=4, workers=1, log=messages.append)
    assert demo_counts(paths) == (8, 6) and len(messages) == 2
    assert json.loads((root / STAMP_FILE).read_text())["num_train"] == 8
    stamp = json.loads((root / STAMP_FILE).read_text())
    (root / STAMP_FILE).write_text(json.dumps({**stamp, "engine": ENGINE_VERSION + "-old"}))
    build_demo_data(root, num_train=8, num_val=6, seed=4, workers=1, log=messages.append)
    assert len(messages) == 4 and json.loads((root / STAMP_FILE).read_text())["engine"] == ENGINE_VERSION
    for leftover in (root / "masks" / "val").iterdir():
        leftover.unlink()
    build_demo_data(root, num_train=8, num_val=6, seed=4, workers=1, log=messages.append)
    assert len(messages) == 6 and demo_counts(paths) == (8, 6)
    assert lmdb_items(paths["val_masks"])[b"num-samples"] == b"6"


def test_parse_engine_settings():
    config = parse_engine_settings(["p_blur=0", "max_height=48", "font_scale=(0.5, 0.7)",
                                    "vocabulary.max_length=10", "vocabulary.balance_lengths=False"])
    assert config.p_blur == 0 and config.max_height == 48 and config.font_scale == (0.5, 0.7)
    assert config.vocabulary.max_length == 10 and config.vocabulary.balance_lengths is False
    assert config.p_noise == EngineConfig().p_noise and config.vocabulary.min_length == 1
    assert parse_engine_settings([]) == EngineConfig()
    for bad, field in (("p_nonexistent=1", "p_nonexistent"), ("vocabulary.colour=1", "colour"),
                       ("p_blur=1.5", "p_blur"), ("p_blur", "p_blur"), ("p_blur=fast", "p_blur"),
                       ("vocabulary.min_length=0", "min_length")):
        with pytest.raises(ValueError, match=field):
            parse_engine_settings([bad])


def test_cli_writes_image_and_default_mask_lmdb(tmp_path, catalogue):
    out = tmp_path / "cli"
    settings = ["--set", "vocabulary.max_length=5", "--set", "p_natural_background=0"]
    result = subprocess.run([sys.executable, "-m", "tools.synth", "--out", str(out), "--num", "5", "--workers", "1",
                             "--seed", "9", *settings], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert f"images: {out}" in result.stdout and f"masks: {out}_mask" in result.stdout
    images, masks = lmdb_items(out), lmdb_items(tmp_path / "cli_mask")
    assert images[b"num-samples"] == masks[b"num-samples"] == b"5"
    config = parse_engine_settings(["vocabulary.max_length=5", "p_natural_background=0"])
    for index in range(5):
        label = images[b"label-%09d" % (index + 1)].decode()
        assert label == render_sample(index, 9, catalogue, config)[2] and len(label) <= 6
    assert render_sample(4, 9, catalogue, config)[2] == images[b"label-000000005"].decode()


@pytest.mark.parametrize("setting, field", [("p_nonexistent=1", "p_nonexistent"), ("p_blur=2", "p_blur"),
                                            ("max_height", "max_height"), ("p_jpeg=often", "p_jpeg"),
                                            ("vocabulary.max_length=0", "max_length")])
def test_cli_rejects_a_bad_set_with_a_usage_error(tmp_path, capsys, setting, field):
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "db"), "--num", "2", "--workers", "1", "--set", setting])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error and field in error
    assert not (tmp_path / "db").exists()


def test_cli_needs_an_output_and_passes_demo_options(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--num", "2"])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(synth, "build_demo_data", lambda root, **kwargs: calls.append((root, kwargs)) or
                        {"train_images": Path(root) / "images" / "train"})
    main(["--demo_root", str(tmp_path / "demo"), "--num", "30", "--seed", "2", "--workers", "1",
          "--set", "p_blur=0.5"])
    assert calls == [(str(tmp_path / "demo"), {"num_train": 30, "seed": 2, "workers": 1,
                                               "config": dataclasses.replace(synth.PLAIN_ENGINE, p_blur=0.5)})]
    assert f"train_images: {tmp_path / 'demo' / 'images' / 'train'}" in capsys.readouterr().out


def test_builtin_data_of_each_preset_and_what_gets_built(monkeypatch):
    """Without data arguments the demo and cpu presets train on their full-variety set after their plain one
    (every other preset on the demo's sets); only the sets a run reads are built, plain first."""
    cpu = builtin_data("cpu", curriculum=True)
    assert cpu["train_data"] == "data/synth_cpu/images/train" and cpu["valid_data"] == "data/synth_cpu/images/val"
    assert cpu["curriculum_data"] == "data/synth_cpu_plain/images/train"
    assert cpu["curriculum_mask_root"] == "data/synth_cpu_plain/masks/train"
    demo = builtin_data("demo", curriculum=True)
    assert demo["train_data"] == "data/synth_varied/images/train"
    assert demo["mask_root"] == "data/synth_varied/masks/train"
    assert demo["curriculum_data"] == "data/synth_plain/images/train"
    assert builtin_data("tiny", curriculum=False) == dict(demo, curriculum_data=None, curriculum_mask_root=None)
    built = []
    monkeypatch.setattr(synth, "build_demo_data", lambda root, **kwargs: built.append((str(root), kwargs)))
    synth.build_builtin_data(demo["train_data"], demo["curriculum_data"])
    synth.build_builtin_data(cpu["train_data"], None)
    assert built == [("data/synth_plain", {"num_train": 40_000, "config": synth.PLAIN_ENGINE}),
                     ("data/synth_varied", {"num_train": 50_000, "config": EngineConfig()}),
                     ("data/synth_cpu", {"num_train": 300_000, "config": EngineConfig()})]
    built.clear()
    main(["--builtin", "cpu"])
    assert [root for root, _ in built] == ["data/synth_cpu_plain", "data/synth_cpu"]
