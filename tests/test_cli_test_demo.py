"""test.py and demo.py end to end (subprocess) with a tiny checkpoint, and inference.py's image loading."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_word_lmdb, render_word, write_tiny_checkpoint
from dataset import Collate, LmdbDataset
from inference import expand_image_paths, load_image, load_model, preprocess, recognize, to_rgb
from utils import EvalResult, benchmark_normalize, evaluate

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["hello", "world", "street", "coffee", "parking", "exit", "london", "station", "open", "hotel",
         "bank", "sale", "market", "zebra", "quiet", "taxi", "museum", "garden", "river", "north"]


def run_script(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    # One intra-op thread: the model is tiny, and on a busy 2-core machine OpenMP threads contending for
    # cores make every LSTM call hundreds of times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def load_script(name: str):
    """Import an entry point under a private name (``test`` would clash with the standard library's package)."""
    module_name = f"_cli_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def call_main(name: str, capsys, *args) -> tuple[int, str, str]:
    """Run an entry point's main() in this process (faster than a subprocess): (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = load_script(name).main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module's in-process inference on one thread (see run_script), restoring the setting after."""
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


def evaluate_lmdb(tiny, path: Path) -> EvalResult:
    """The independent reference: utils.evaluate over the LMDB with the in-memory model."""
    dataset = LmdbDataset(path, tiny.tokenizer, (tiny.config.img_h, tiny.config.img_w), "test")
    loader = DataLoader(dataset, batch_size=tiny.config.eval_batch_size, collate_fn=Collate())
    batches = [batch for batch in loader if len(batch)]
    return evaluate(tiny.model, batches, tiny.tokenizer, "cpu", keep_predictions=True)


def lmdb_with_known_accuracy(tiny, path: Path, words: list[str], correct: set[int],
                             corrupt: tuple[int, ...] = ()) -> list[str]:
    """Label each image with the model's own prediction (upper-cased, punctuated: the protocol must
    normalise it) where its 0-based position is in ``correct``, else with a word it did not predict."""
    scratch = make_word_lmdb(path.with_name(path.name + "_scratch"), words, corrupt_indices=corrupt)
    predictions = iter(p for p, _, _ in evaluate_lmdb(tiny, scratch).predictions)
    labels = []
    for position in range(len(words)):
        if position + 1 in corrupt:
            labels.append(words[position])
            continue
        prediction = next(predictions)
        if position in correct:
            labels.append(prediction.upper() + "!")
        else:
            labels.append("zzz" if benchmark_normalize(prediction) != "zzz" else "yyy")
    make_word_lmdb(path, words, corrupt_indices=corrupt, labels=labels)
    return labels


@pytest.fixture(scope="module")
def bench_root(tiny, tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    root = base / "evaluation"
    lmdb_with_known_accuracy(tiny, root / "IIIT5k_3000", WORDS[:10], {0, 1, 2, 5, 7, 9})  # 60 %
    lmdb_with_known_accuracy(tiny, root / "SVT", WORDS[10:], {0, 3})  # 20 %
    lmdb_with_known_accuracy(tiny, root / "extra" / "custom", WORDS[3:7], {0, 2}, corrupt=(2,))  # 2/3
    for scratch in base.rglob("*_scratch"):
        for file in scratch.iterdir():
            file.unlink()
        scratch.rmdir()
    return root


def test_test_py_on_benchmark_root(tiny, bench_root, tmp_path):
    csv_path, json_path = tmp_path / "predictions.csv", tmp_path / "table.json"
    result = run_script("test.py", "--checkpoint", tiny.path, "--eval_data", bench_root, "--device", "cpu",
                        "--workers", "0", "--save_predictions", csv_path, "--json", json_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    table = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("-", "dataset"))}
    assert {"IIIT5k_3000", "SVT", "extra/custom"} <= set(table)
    assert out.index("IIIT5k_3000") < out.index("SVT") < out.index("extra/custom")  # benchmarks first, SPEC order
    missing_line = next(line for line in out.splitlines() if line.startswith("missing:"))
    missing = missing_line.removeprefix("missing:").replace(",", " ").split()
    assert missing == ["IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80",
                       "MPSC", "ArbitText"]
    assert "skipped" in result.stderr and "index 2" in result.stderr  # the corrupt sample is reported

    report = json.loads(json_path.read_text())
    rows = {row["name"]: row for row in report["datasets"]}
    assert rows["IIIT5k_3000"]["n"] == 10 and rows["IIIT5k_3000"]["accuracy"] == pytest.approx(60.0)
    assert rows["SVT"]["n"] == 10 and rows["SVT"]["accuracy"] == pytest.approx(20.0)
    assert rows["extra/custom"]["n"] == 3 and rows["extra/custom"]["skipped"] == 1
    assert rows["extra/custom"]["accuracy"] == pytest.approx(200 / 3)
    for name, path in (("IIIT5k_3000", "IIIT5k_3000"), ("SVT", "SVT"), ("extra/custom", "extra/custom")):
        reference = evaluate_lmdb(tiny, bench_root / path)
        assert rows[name]["n"] == reference.num_samples
        assert rows[name]["accuracy"] == pytest.approx(reference.accuracy)
        assert rows[name]["ned"] == pytest.approx(reference.ned)
        assert rows[name]["confidence"] == pytest.approx(reference.mean_confidence, rel=1e-4, abs=1e-9)

    standard, overall = report["totals"]["standard"], report["totals"]["all"]
    assert standard["datasets"] == ["IIIT5k_3000", "SVT"] and standard["n"] == 20
    assert standard["accuracy"] == pytest.approx((60.0 * 10 + 20.0 * 10) / 20)
    assert standard["ned"] == pytest.approx((rows["IIIT5k_3000"]["ned"] + rows["SVT"]["ned"]) / 2)
    assert overall["n"] == 23
    assert overall["accuracy"] == pytest.approx(sum(r["accuracy"] * r["n"] for r in rows.values()) / 23)
    assert "total (2/10 standard benchmarks)" in out and "total (all 3 sets)" in out

    with open(csv_path, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == ["dataset", "index", "prediction", "ground_truth", "correct", "confidence"]
    assert len(records) == 23
    by_set = {name: [r for r in records if r["dataset"] == name] for name in rows}
    assert [int(r["index"]) for r in by_set["extra/custom"]] == [1, 3, 4]  # LMDB indices, corrupt 2 left out
    assert [int(r["index"]) for r in by_set["SVT"]] == list(range(1, 11))
    assert sum(int(r["correct"]) for r in by_set["IIIT5k_3000"]) == 6
    assert [int(r["correct"]) for r in by_set["SVT"]] == [1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    reference = evaluate_lmdb(tiny, bench_root / "IIIT5k_3000")
    assert [r["prediction"] for r in by_set["IIIT5k_3000"]] == [p for p, _, _ in reference.predictions]


def test_test_py_single_lmdb_and_benchmark_only(tiny, bench_root, tmp_path, capsys):
    json_path = tmp_path / "svt.json"
    code, out, err = call_main("test", capsys, "--checkpoint", tiny.path, "--eval_data", bench_root / "SVT",
                               "--device", "cpu", "--workers", "0", "--batch_size", "4", "--json", json_path)
    assert code == 0, err[-3000:]
    report = json.loads(json_path.read_text())
    assert [row["name"] for row in report["datasets"]] == ["SVT"] and report["missing"] == []
    assert report["datasets"][0]["accuracy"] == pytest.approx(20.0)  # batch size does not change the result
    assert "missing" not in out

    code, out, err = call_main("test", capsys, "--checkpoint", tiny.path, "--eval_data", bench_root,
                               "--benchmark_all_eval", "--device", "cpu", "--workers", "0", "--amp", "bf16",
                               "--json", json_path)
    assert code == 0, err[-3000:]
    report = json.loads(json_path.read_text())
    assert [row["name"] for row in report["datasets"]] == ["IIIT5k_3000", "SVT"]
    assert "all" not in report["totals"] and "extra/custom" not in out


def test_test_py_errors(tiny, bench_root, tmp_path, capsys):
    missing = run_script("test.py", "--checkpoint", tmp_path / "absent.pth", "--eval_data", bench_root, cwd=tmp_path)
    assert missing.returncode == 2 and "absent.pth" in missing.stderr and "Traceback" not in missing.stderr
    code, _, err = call_main("test", capsys, "--checkpoint", tiny.path, "--eval_data", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err
    (tmp_path / "empty").mkdir()
    code, _, err = call_main("test", capsys, "--checkpoint", tiny.path, "--eval_data", tmp_path / "empty")
    assert code == 2 and "no LMDB" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code, _, err = call_main("test", capsys, "--checkpoint", tmp_path / "junk.pth", "--eval_data", bench_root)
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
    result = run_script("demo.py", "--checkpoint", tiny.path, "--device", "cpu", "--batch_size", "3", "--images",
                        *inputs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert all(re.fullmatch(r"[^\t]+\t[0-9a-z]*\t\d\.\d{4}", line) for line in lines), lines
    printed = [Path(line.split("\t")[0]).name for line in lines]
    assert printed == ["rgba.png", "gray.png", "deep16.png", "cmyk.jpg", "rotated.jpg", "img2.png", "img10.png",
                       "a1.png", "a2.png"]
    assert "corrupt.png" in result.stderr and "corrupt.png" not in result.stdout
    expected = recognize(tiny.model, tiny.tokenizer, tiny.config,
                         [load_image(line.split("\t")[0]) for line in lines])
    for line, recognition in zip(lines, expected):
        _, text, confidence = line.split("\t")
        assert text == recognition.text and float(confidence) == pytest.approx(recognition.confidence, abs=1e-4)


def test_demo_without_readable_images(tiny, demo_files, tmp_path, capsys):
    code, out, err = call_main("demo", capsys, "--checkpoint", tiny.path, "--device", "cpu", "--images",
                               demo_files.files / "corrupt.png")
    assert code != 0 and "corrupt.png" in err and out == ""
    code, out, err = call_main("demo", capsys, "--checkpoint", tiny.path, "--device", "cpu", "--images",
                               tmp_path / "nothing*.png")
    assert code != 0 and "nothing*.png" in err and out == ""
    code, _, err = call_main("demo", capsys, "--checkpoint", tmp_path / "absent.pth", "--images", demo_files.folder)
    assert code == 2 and "absent.pth" in err
