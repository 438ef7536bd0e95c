"""test.py and demo.py end to end with a tiny checkpoint, run as programs (``conftest.run_entry_point``) and
checked against readings, labels and scores worked out here: a reference greedy reader, labels chosen so
that the test decides which readings are right, and a hand-written Levenshtein distance for the NED.
Also inference.py's image loading."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint import load_model
from conftest import make_word_lmdb, render_word, run_entry_point, write_tiny_checkpoint
from dataset import Collate, LmdbDataset
from inference import expand_image_paths, load_image, preprocess, to_rgb

WORDS = ["hello", "world", "street", "coffee", "parking", "exit", "london", "station", "open", "hotel",
         "bank", "sale", "market", "zebra", "quiet", "taxi", "museum", "garden", "river", "north"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: evaluation set → (rendered words, 0-based positions labelled with their own reading, 1-based corrupt indices)
SETS = {"IIIT5k_3000": (WORDS[:10], {0, 1, 2, 5, 7, 9}, ()),  # 6/10 right
        "SVT": (WORDS[10:], {0, 3}, ()),  # 2/10 right
        "extra/custom": (WORDS[3:7], {0, 2}, (2,))}  # 2/4 right: the unreadable sample counts as wrong


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def normalize(text: str) -> str:
    """The benchmark protocol (SPEC §6): lowercase, keep [0-9a-z]."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def similarity(prediction: str, target: str) -> float:
    """SPEC §6 per sample: 1 − ED / max(len), 0 if either string is empty."""
    if not prediction or not target:
        return 0.0
    return 1.0 - levenshtein(prediction, target) / max(len(prediction), len(target))


def test_reference_edit_distance_on_known_strings():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3 and levenshtein("same", "same") == 0
    assert similarity("hello", "hallo") == pytest.approx(0.8) and similarity("ab", "abcd") == pytest.approx(0.5)
    assert similarity("", "") == 0.0 and similarity("a", "") == 0.0


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module's in-process inference on one thread (the model is tiny, and OpenMP threads contending
    for a busy machine's cores make every LSTM call far slower), restoring the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny TRBA checkpoint in train.py's format (weights sharpened so predictions vary in length)."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    model, tokenizer, config = write_tiny_checkpoint(path)
    return SimpleNamespace(path=path, model=model, tokenizer=tokenizer, config=config)


def reference_reading(tiny, image: Image.Image) -> tuple[str, float]:
    """The greedy reading of one RGB image, written out here: bicubic resize, ImageNet normalisation, the
    in-memory model's final logits, the arg-max ids cut at the first EOS (id 0; characters are ids 1..n) and
    the confidence: the product of the per-step maximum probabilities through the EOS step, 0 when empty."""
    resized = np.asarray(image.resize((tiny.config.img_w, tiny.config.img_h), Image.BICUBIC), dtype=np.float32)
    pixels = (torch.from_numpy(resized) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        probabilities = tiny.model(pixels.permute(2, 0, 1)[None], early_stop=False).logits[0].softmax(-1)
    best, ids = probabilities.max(-1)
    ids = ids.tolist()
    end = ids.index(0) if 0 in ids else len(ids)
    text = "".join(tiny.tokenizer.charset[i - 1] for i in ids[:end])
    return text, best[: end + 1].prod().item() if text else 0.0


def wrong_label(reading: str, position: int) -> str:
    """A label the reading does not match: one character appended, or reversed with one appended."""
    return reading + "q" if position % 2 else reading[::-1].upper() + "X"


@pytest.fixture(scope="module")
def bench(tiny, tmp_path_factory):
    """An evaluation root with the LMDBs of SETS, and per set the expected CSV rows (LMDB index, reading,
    normalised label, right or not, confidence); an unreadable sample's row is empty and wrong."""
    root = tmp_path_factory.mktemp("eval") / "evaluation"
    expected = {}
    for name, (words, right, corrupt) in SETS.items():
        labels, rows = [], []
        for position, word in enumerate(words):
            reading, confidence = reference_reading(tiny, render_word(word))
            label = reading.upper() + "!" if position in right else wrong_label(reading, position)
            labels.append(label)
            if position + 1 in corrupt:
                rows.append(SimpleNamespace(index=position + 1, prediction="", target="", correct=0, confidence=0.0))
            else:
                rows.append(SimpleNamespace(index=position + 1, prediction=reading, target=normalize(label),
                                            correct=int(position in right), confidence=confidence))
        make_word_lmdb(root / name, words, corrupt_indices=corrupt, labels=labels)
        expected[name] = rows
    return SimpleNamespace(root=root, expected=expected)


def scores(rows: list) -> dict:
    """n, accuracy (%), mean NED and mean confidence of expected rows, computed here."""
    n = len(rows)
    return {"n": n, "accuracy": 100.0 * sum(r.correct for r in rows) / n,
            "ned": sum(similarity(normalize(r.prediction), r.target) for r in rows) / n,
            "confidence": sum(r.confidence for r in rows) / n}


def assert_scores(row: dict, expected: dict, name: str) -> None:
    assert row["n"] == expected["n"], name
    assert row["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9), name
    assert row["ned"] == pytest.approx(expected["ned"], abs=1e-9), name
    # a product of up to 26 probabilities: the reference's batch of one and float32 rounding move it by ≤ 2.3e-4
    assert row["confidence"] == pytest.approx(expected["confidence"], rel=1e-3), name


def test_test_py_on_benchmark_root(tiny, bench, tmp_path):
    csv_path, json_path = tmp_path / "predictions.csv", tmp_path / "table.json"
    code, out, err = run_entry_point("test.py", "--checkpoint", tiny.path, "--eval_data", bench.root, "--device", "cpu",
                                     "--workers", "0", "--save_predictions", csv_path, "--json", json_path,
                                     cwd=tmp_path)
    assert code == 0, err[-3000:]
    table = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("-", "dataset"))}
    assert set(SETS) <= set(table)
    assert out.index("IIIT5k_3000") < out.index("SVT") < out.index("extra/custom")  # benchmarks first, SPEC order
    missing_line = next(line for line in out.splitlines() if line.startswith("missing:"))
    missing = missing_line.removeprefix("missing:").replace(",", " ").split()
    assert missing == ["IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80",
                       "MPSC", "ArbitText"]
    assert "sample 2 unreadable" in err and "counted as wrong" in err  # the corrupt sample is reported
    assert re.search(r"extra/custom\s+4\s+50\.00 .*\(1 unreadable, counted wrong\)", out)  # n is never shrunk
    assert "total (2/10 standard benchmarks)" in out and "total (all 3 sets)" in out

    report = json.loads(json_path.read_text())
    rows = {row["name"]: row for row in report["datasets"]}
    assert list(rows) == list(SETS)
    assert [rows[name]["accuracy"] for name in SETS] == pytest.approx([60.0, 20.0, 50.0])
    assert rows["extra/custom"]["unreadable"] == 1 and rows["extra/custom"]["n"] == 4
    assert report["totals"]["all"]["unreadable"] == 1 and report["totals"]["all"]["n"] == 24
    for name, expected in bench.expected.items():
        assert_scores(rows[name], scores(expected), name)
    standard = report["totals"]["standard"]
    assert standard["datasets"] == ["IIIT5k_3000", "SVT"]
    assert_scores(standard, scores(bench.expected["IIIT5k_3000"] + bench.expected["SVT"]), "standard")
    assert_scores(report["totals"]["all"], scores(sum(bench.expected.values(), [])), "all")

    with open(csv_path, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == ["dataset", "index", "prediction", "ground_truth", "correct", "confidence", "error"]
    for name, expected in bench.expected.items():
        written = [r for r in records if r["dataset"] == name]
        assert [(int(r["index"]), r["prediction"], r["ground_truth"], int(r["correct"])) for r in written] == \
            [(e.index, e.prediction, e.target, e.correct) for e in expected], name
        assert [bool(r["error"]) for r in written] == [e.target == "" for e in expected], name  # reason given
        assert [float(r["confidence"]) for r in written] == pytest.approx([e.confidence for e in expected], abs=1e-6)
    assert len(records) == 24


def test_test_py_single_lmdb_and_benchmark_only(tiny, bench, tmp_path):
    json_path = tmp_path / "svt.json"
    code, out, err = run_entry_point("test.py", "--checkpoint", tiny.path, "--eval_data", bench.root / "SVT",
                                     "--device", "cpu", "--workers", "0", "--batch_size", "4", "--json", json_path)
    assert code == 0, err[-3000:]
    report = json.loads(json_path.read_text())
    assert [row["name"] for row in report["datasets"]] == ["SVT"] and report["missing"] == []
    assert_scores(report["datasets"][0], scores(bench.expected["SVT"]), "SVT")  # batch size changes nothing
    assert "missing" not in out

    code, out, err = run_entry_point("test.py", "--checkpoint", tiny.path, "--eval_data", bench.root,
                                     "--benchmark_all_eval", "--device", "cpu", "--workers", "0", "--amp", "bf16",
                                     "--json", json_path)
    assert code == 0, err[-3000:]
    report = json.loads(json_path.read_text())
    assert [row["name"] for row in report["datasets"]] == ["IIIT5k_3000", "SVT"]
    assert "all" not in report["totals"] and "extra/custom" not in out


def test_test_py_errors(tiny, bench, tmp_path):
    code, _, err = run_entry_point("test.py", "--checkpoint", tmp_path / "absent.pth", "--eval_data", bench.root)
    assert code == 2 and "absent.pth" in err
    code, _, err = run_entry_point("test.py", "--checkpoint", tiny.path, "--eval_data", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_entry_point("test.py", "--checkpoint", tiny.path, "--eval_data", tmp_path / "empty")
    assert code == 2 and "no LMDB" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code, _, err = run_entry_point("test.py", "--checkpoint", tmp_path / "junk.pth", "--eval_data", bench.root)
    assert code == 2 and "junk.pth" in err


# --------------------------------------------------------------------------------------------------
# Image loading (inference.py)
# --------------------------------------------------------------------------------------------------
def exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A 60×20 JPEG stored landscape with a red block top-left and EXIF orientation 6 (rotate 90° CW)."""
    stored = np.full((20, 60, 3), 255, np.uint8)
    stored[:8, :12] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return stored


def test_exif_orientation_is_applied(tmp_path):
    exif_rotated_jpeg(tmp_path / "rotated.jpg")
    with Image.open(tmp_path / "rotated.jpg") as raw:
        assert raw.size == (60, 20)
    loaded = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert loaded.shape == (60, 20, 3)  # portrait after the transpose
    assert loaded[2, 16].tolist() == pytest.approx([255, 0, 0], abs=40)  # the block is now top-right
    assert loaded[2, 2].tolist() == pytest.approx([255, 255, 255], abs=40)
    assert loaded[50, 16].tolist() == pytest.approx([255, 255, 255], abs=40)


def test_modes_are_converted_to_rgb(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert deep.mode.startswith("I")
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded.dtype == np.uint8 and loaded.shape == (16, 64, 3)
    assert loaded[0, 0, 0] == 0 and loaded[0, -1, 0] == 255
    assert abs(int(loaded[0, 32, 0]) - round(gradient[0, 32] / 257)) <= 1  # scaled, not clipped at 255
    assert (np.diff(loaded[0, :, 0].astype(int)) >= 0).all()

    rgba = np.zeros((10, 10, 4), np.uint8)  # transparent black ...
    rgba[2:5, 2:5] = (0, 0, 0, 255)  # ... around an opaque black square
    loaded = np.asarray(to_rgb(Image.fromarray(rgba)))
    assert (loaded[0, 0] == 255).all() and (loaded[3, 3] == 0).all()
    la = to_rgb(Image.fromarray(rgba[..., [0, 3]].copy()))
    assert np.asarray(la)[0, 0].tolist() == [255, 255, 255]

    assert np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 0.5, np.float32))))[0, 0, 0] in (127, 128)
    assert np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 300, np.int32))))[0, 0, 0] == round(300 / 257)
    cmyk = Image.new("CMYK", (12, 6), (0, 255, 255, 0))  # red
    cmyk.save(tmp_path / "red.jpg", format="JPEG", quality=95)
    red = np.asarray(load_image(tmp_path / "red.jpg"))
    assert red.shape == (6, 12, 3) and red[3, 6, 0] > 200 and red[3, 6, 1] < 60
    palette = Image.fromarray(np.zeros((4, 4), np.uint8)).convert("P")
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_preprocessing_matches_the_lmdb_path(tiny, tmp_path):
    image = render_word("hello", (90, 28))
    image.save(tmp_path / "hello.png")
    make_word_lmdb(tmp_path / "db", ["hello"], size=(90, 28))
    dataset = LmdbDataset(tmp_path / "db", tiny.tokenizer, (tiny.config.img_h, tiny.config.img_w), "test")
    from_lmdb = Collate()([dataset[0]]).images
    from_file = preprocess([load_image(tmp_path / "hello.png")], tiny.config)
    assert torch.equal(from_lmdb, from_file)


def test_load_model_round_trip(tiny):
    model, tokenizer, config = load_model(tiny.path, "cpu")
    assert not model.training and tokenizer.charset == tiny.tokenizer.charset and config == tiny.config
    for name, tensor in tiny.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


# --------------------------------------------------------------------------------------------------
# demo.py
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def demo_files(tmp_path):
    files = tmp_path / "inputs"
    files.mkdir()
    text = np.asarray(render_word("open", (100, 32)))
    rgba = np.dstack([text, np.where(text[..., 0] < 128, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba).save(files / "rgba.png")
    render_word("gray", mode="L").save(files / "gray.png")
    gray16 = (np.asarray(render_word("deep", mode="L")).astype(np.uint16) * 257)
    Image.fromarray(gray16).save(files / "deep16.png")
    render_word("cyan", mode="CMYK").save(files / "cmyk.jpg", format="JPEG", quality=95)
    exif_rotated_jpeg(files / "rotated.jpg")
    (files / "corrupt.png").write_bytes(b"definitely not a png")
    folder = tmp_path / "folder"
    folder.mkdir()
    render_word("ten").save(folder / "img10.png")
    render_word("two").save(folder / "img2.png")
    (folder / "notes.txt").write_text("not an image")
    globbed = tmp_path / "globbed"
    globbed.mkdir()
    render_word("alpha").save(globbed / "a1.png")
    render_word("beta").save(globbed / "a2.png")
    render_word("gamma").save(globbed / "b.jpg")
    return SimpleNamespace(files=files, folder=folder, globbed=globbed)


def test_expand_image_paths(demo_files):
    paths, unmatched = expand_image_paths([str(demo_files.folder), str(demo_files.globbed / "a*.png"),
                                           str(demo_files.folder / "img2.png"), "no/such/*.png"])
    assert [Path(p).name for p in paths] == ["img2.png", "img10.png", "a1.png", "a2.png"]  # natural order, unique
    assert unmatched == ["no/such/*.png"]


def test_demo(tiny, demo_files, tmp_path):
    singles = ["rgba.png", "gray.png", "deep16.png", "cmyk.jpg", "rotated.jpg", "corrupt.png"]
    inputs = [demo_files.files / name for name in singles] + [demo_files.folder, demo_files.globbed / "a*.png"]
    code, out, err = run_entry_point("demo.py", "--checkpoint", tiny.path, "--device", "cpu", "--batch_size", "3",
                                     "--images", *inputs, cwd=tmp_path)
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert all(re.fullmatch(r"[^\t]+\t[0-9a-z]*\t\d\.\d{4}", line) for line in lines), lines
    printed = [Path(line.split("\t")[0]).name for line in lines]
    assert printed == ["rgba.png", "gray.png", "deep16.png", "cmyk.jpg", "rotated.jpg", "img2.png", "img10.png",
                       "a1.png", "a2.png"]
    assert "corrupt.png" in err and "corrupt.png" not in out
    for line in lines:
        path, text, confidence = line.split("\t")
        expected_text, expected_confidence = reference_reading(tiny, load_image(path))
        assert text == expected_text, path
        assert float(confidence) == pytest.approx(expected_confidence, abs=1e-4), path


def test_demo_without_readable_images(tiny, demo_files, tmp_path):
    code, out, err = run_entry_point("demo.py", "--checkpoint", tiny.path, "--device", "cpu", "--images",
                                     demo_files.files / "corrupt.png")
    assert code != 0 and "corrupt.png" in err and out == ""
    code, out, err = run_entry_point("demo.py", "--checkpoint", tiny.path, "--device", "cpu", "--images",
                                     tmp_path / "nothing*.png")
    assert code != 0 and "nothing*.png" in err and out == ""
    code, _, err = run_entry_point("demo.py", "--checkpoint", tmp_path / "absent.pth", "--images", demo_files.folder)
    assert code == 2 and "absent.pth" in err
