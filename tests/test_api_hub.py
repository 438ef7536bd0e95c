"""The Python API (``inference.Recognizer``) and the torch.hub entries (``hubconf.py``): the same readings as
test.py for PIL images, numpy arrays and paths; hub entries that load locally and refuse another model's
checkpoint; untrained builds."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config import make_config
from conftest import make_word_lmdb, raw_entries, run_entry_point, write_tiny_checkpoint
from inference import Recognition, Recognizer, array_to_image, as_rgb_image
from model import build_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["hello", "world", "street", "coffee", "parking", "exit", "london", "station", "open", "hotel", "bank", "sale"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny_trba.pth"
    write_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def words_lmdb(tmp_path_factory):
    """An LMDB of rendered words, and its stored image bytes in index order."""
    root = tmp_path_factory.mktemp("api_data")
    path = make_word_lmdb(root / "words", WORDS, size=(110, 30))
    entries = raw_entries(path)
    images = [entries[b"image-%09d" % index] for index in range(1, len(WORDS) + 1)]
    return path, images


def readings_of_test_py(tiny, words_lmdb, tmp_path) -> list[tuple[str, float]]:
    """(prediction, confidence) per sample as test.py writes them."""
    csv_path = tmp_path / "predictions.csv"
    code, _, err = run_entry_point("test.py", "--checkpoint", tiny, "--eval_data", words_lmdb[0], "--device", "cpu",
                                   "--workers", "0", "--batch_size", "5", "--save_predictions", csv_path)
    assert code == 0, err[-2000:]
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return [(row["prediction"], float(row["confidence"])) for row in csv.DictReader(handle)]


def assert_same(readings: list[Recognition], expected: list[tuple[str, float]]) -> None:
    assert [r.text for r in readings] == [text for text, _ in expected]
    assert [r.confidence for r in readings] == pytest.approx([conf for _, conf in expected], abs=2e-6)


def test_recognizer_reads_pil_numpy_and_paths_like_test_py(tiny, words_lmdb, tmp_path):
    expected = readings_of_test_py(tiny, words_lmdb, tmp_path)
    assert len(expected) == len(WORDS) and len({text for text, _ in expected}) >= 3  # readings that can differ
    _, encoded = words_lmdb
    pictures = [Image.open(io.BytesIO(data)) for data in encoded]
    paths = []
    for index, data in enumerate(encoded):
        paths.append(tmp_path / f"word_{index}.png")
        paths[-1].write_bytes(data)
    reader = Recognizer.from_checkpoint(tiny, device="cpu", batch_size=4)  # other batches than test.py's
    assert_same(reader(pictures), expected)
    assert_same(reader([np.asarray(p.convert("RGB")) for p in pictures]), expected)
    assert_same(reader([str(p) for p in paths]), expected)
    assert_same(reader(tuple(paths)), expected)  # PathLike, a tuple
    single = reader(paths[3])
    assert isinstance(single, Recognition) and single.text == expected[3][0]


def test_array_conversions_and_errors():
    gray = np.full((4, 6), 128, dtype=np.uint8)
    assert np.asarray(array_to_image(gray)).tolist() == np.full((4, 6, 3), 128).tolist()
    assert np.asarray(array_to_image(gray[:, :, None])).shape == (4, 6, 3)
    assert np.asarray(array_to_image(np.ones((2, 2), dtype=np.float32)))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(array_to_image(np.full((2, 2), 65535, dtype=np.uint16)))[0, 0, 0] == 255
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black → white background
    assert np.asarray(array_to_image(rgba))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match=r"shape \(2, 2, 5\)"):
        array_to_image(np.zeros((2, 2, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype complex"):
        array_to_image(np.zeros((2, 2), dtype=np.complex64))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        as_rgb_image("missing.png")
    with pytest.raises(TypeError, match="from int"):
        as_rgb_image(3)


def test_hub_entries_load_locally_and_refuse_other_models(tiny):
    reader = torch.hub.load(str(ROOT), "trba", source="local", checkpoint=tiny, device="cpu")
    expected = Recognizer.from_checkpoint(tiny, device="cpu")
    image = Image.new("RGB", (100, 32), "white")
    assert reader(image) == expected(image)
    for entry, model in (("siga_r", "SIGA_R"), ("tsba", "TSBA"), ("siga_s", "SIGA_S"), ("vitba", "VITBA"),
                         ("siga_t", "SIGA_T")):
        with pytest.raises(ValueError, match=rf"{tiny.name}: a TRBA checkpoint, not {model}$"):
            torch.hub.load(str(ROOT), entry, source="local", checkpoint=tiny, device="cpu")


@pytest.mark.parametrize("model", ["TRBA", "SIGA_R", "TSBA", "SIGA_S", "VITBA", "SIGA_T"])
def test_hub_builds_every_model_untrained(model):
    built = torch.hub.load(str(ROOT), f"build_{model.lower()}", source="local", preset="tiny")
    reference = build_model(make_config("tiny", model=model))
    assert type(built) is type(reference)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert built.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize("model_name", ["TRBA", "SIGA_R"])
def test_locate_gives_each_character_a_position_in_the_given_image(model_name, words_lmdb, tmp_path):
    path = tmp_path / f"{model_name}.pth"
    write_tiny_checkpoint(path, model_name)
    reader = Recognizer.from_checkpoint(path, device="cpu", batch_size=3)
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in words_lmdb[1][:6]]
    pictures[1] = pictures[1].resize((330, 60))  # another size than the stored one: positions follow it
    plain, located = reader(pictures), reader(pictures, locate=True)
    assert [(r.text, r.confidence) for r in located] == [(r.text, r.confidence) for r in plain]
    assert all(r.char_positions is None and r.attention is None for r in plain)
    for picture, reading in zip(pictures, located):
        width, height = picture.size
        assert len(reading.char_positions) == len(reading.text)
        assert all(-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5 for x, y in reading.char_positions)
        steps = min(len(reading.text) + 1, reader.config.num_steps)  # through EOS
        assert reading.attention.shape[0] == steps
        assert np.allclose(reading.attention.sum(1), 1.0, atol=1e-5)  # one distribution over T per step
