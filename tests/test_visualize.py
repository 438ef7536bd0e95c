"""tools/visualize.py: one readable PNG per image from a tiny SIGA_R checkpoint, a clear refusal of TRBA,
and the shapes of the maps it draws; the character-box figures (any model) and the peaks they draw."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from char_attention import load_char_boxes, locate_peaks
from checkpoint import atomic_save, load_model, training_state
from config import make_config
from conftest import make_word_lmdb, render_word
from inference import load_image, preprocess
from model import build_model
from tokenizer import Tokenizer
from tools.visualize import analyse, analyse_char_boxes, main, read_lmdb_sample, unique_output

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["hello", "Street"]


def run_visualize(*args) -> subprocess.CompletedProcess:
    """``python -m tools.visualize`` from the repository root on one intra-op thread (the model is tiny,
    and OpenMP threads contending for a busy machine's cores only slow it down)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tools.visualize", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def save_tiny(path: Path, model_name: str) -> Path:
    """A freshly initialised tiny ``model_name`` in train.py's checkpoint format."""
    config = make_config("tiny", model=model_name)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    atomic_save(training_state(model, config, tokenizer), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Tiny SIGA_R and TRBA checkpoints and two rendered word images of different sizes."""
    directory = tmp_path_factory.mktemp("visualize")
    torch.manual_seed(0)
    images = []
    for word, size in zip(WORDS, [(100, 32), (150, 40)]):
        path = directory / f"{word.lower()}.png"
        render_word(word, size).save(path)
        images.append(path)
    return SimpleNamespace(siga=save_tiny(directory / "siga.pth", "SIGA_R"),
                           trba=save_tiny(directory / "trba.pth", "TRBA"), images=images)


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_one_png_per_image(files, tmp_path):
    out_dir = tmp_path / "graph"
    result = run_visualize("--checkpoint", files.siga, "--images", *files.images, "--out_dir", out_dir,
                           "--labels", *WORDS, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == len(files.images)
    assert "'Street' is 'street'" in result.stderr  # the case-insensitive charset's normalisation is reported
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{p.stem}.png" for p in files.images)
    for image_path in files.images:
        png = out_dir / f"{image_path.stem}.png"
        assert png.stat().st_size > 10_000
        with Image.open(png) as figure:
            assert figure.format == "PNG"
            width, height = figure.size
            figure.load()
        assert width >= 800 and 600 <= height <= 3000


def test_trba_checkpoint_is_refused(files, tmp_path):
    out_dir = tmp_path / "graph"
    result = run_visualize("--checkpoint", files.trba, "--images", files.images[0], "--out_dir", out_dir,
                           "--device", "cpu")
    assert result.returncode != 0
    assert "TRBA" in result.stderr and "needs a SIGA model" in result.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_label_count_must_match(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(files.siga), "--images", *map(str, files.images), "--out_dir", str(tmp_path),
              "--labels", "hello", "--device", "cpu"])
    assert exit_.value.code != 0
    assert "1 label(s) for 2 image(s)" in capsys.readouterr().err


def test_analyse_shapes_without_label(files, single_thread):
    model, tokenizer, config = load_model(files.siga, "cpu")
    view = analyse(model, tokenizer, config, load_image(files.images[1]), None, config.siga, 0,
                   torch.device("cpu"))
    chars = len(view.chars)
    # teacher-forced with the prediction, cut to N_max (a prediction without EOS has S = N_max + 1 characters)
    assert view.chars == view.prediction[: tokenizer.max_label_length]
    assert view.input_rgb.shape == view.rectified_rgb.shape == (config.img_h, config.img_w, 3)
    assert view.warped_mask.shape == view.foreground_prob.shape == view.foreground.shape == (config.img_h, config.img_w)
    assert view.attention.shape == (chars + 1, config.img_w // 4)
    glyph_size = (config.img_h // 2, config.img_w // 2)
    assert view.pseudo_labels.shape == view.glyph_argmax.shape == view.glyph_foreground.shape == glyph_size
    assert view.glyph_probs.shape == (chars, *glyph_size)
    assert 0 <= view.pseudo_labels.min() and view.pseudo_labels.max() <= chars  # no slot past the transcript
    assert view.num_slots == config.max_label_length + 2


def test_unique_output_names(tmp_path):
    used: set[str] = set()
    names = [unique_output(tmp_path, stem, used).name for stem in ["word", "word", "other", "word"]]
    assert names == ["word.png", "word_2.png", "other.png", "word_3.png"]


def test_analyse_shapes_of_siga_s(files, tmp_path, single_thread):
    """SIGA_S: 48×160 input, 40 attention positions, low glyph maps on SVTR's 12×40 grid."""
    model, tokenizer, config = load_model(save_tiny(tmp_path / "siga_s.pth", "SIGA_S"), "cpu")
    view = analyse(model, tokenizer, config, load_image(files.images[0]), "hello", config.siga, 0, torch.device("cpu"))
    assert (config.img_h, config.img_w) == (48, 160)
    assert view.input_rgb.shape == view.rectified_rgb.shape == (48, 160, 3)
    assert view.attention.shape == (len("hello") + 1, 40)
    assert view.pseudo_labels.shape == view.glyph_argmax.shape == (12, 40)
    assert view.glyph_probs.shape == (len("hello"), 12, 40)


def test_analyse_shapes_of_siga_t(files, tmp_path, single_thread):
    """SIGA_T: 32×128 input in [0, 1] (no rectifier), 32 attention positions, low glyph maps on twice the 8×32
    patch grid."""
    model, tokenizer, config = load_model(save_tiny(tmp_path / "siga_t.pth", "SIGA_T"), "cpu")
    view = analyse(model, tokenizer, config, load_image(files.images[0]), "hello", config.siga, 0, torch.device("cpu"))
    assert view.input_rgb.shape == view.rectified_rgb.shape == (32, 128, 3)
    assert (view.input_rgb == view.rectified_rgb).all() and 0.0 <= view.input_rgb.min() <= view.input_rgb.max() <= 1.0
    assert view.attention.shape == (len("hello") + 1, 32)
    assert view.pseudo_labels.shape == view.glyph_argmax.shape == (16, 64)
    assert view.glyph_probs.shape == (len("hello"), 16, 64)


@pytest.fixture(scope="module")
def boxed_lmdb(tmp_path_factory) -> SimpleNamespace:
    """An LMDB of two 150×40 words ('Hi!' with a box for '!' that a 36-character model drops) and their boxes."""
    directory = tmp_path_factory.mktemp("boxed")
    lmdb = make_word_lmdb(directory / "words", ["Hi!", "road"], size=(150, 40))
    entries = {"1": {"chars": "Hi!", "width": 150, "height": 40, "boxes": [[30, 5, 30, 30], [62, 5, 20, 30],
                                                                          [84, 5, 10, 30]]},
               "2": {"chars": "road", "width": 150, "height": 40,
                     "boxes": [[10 + 32 * i, 4, 30, 32] for i in range(4)]}}
    (directory / "boxes.json").write_text(json.dumps(entries))
    return SimpleNamespace(lmdb=lmdb, boxes=directory / "boxes.json")


def test_char_box_figures_for_any_model(files, boxed_lmdb, tmp_path):
    out_dir = tmp_path / "boxes"
    result = run_visualize("--checkpoint", files.trba, "--lmdb", boxed_lmdb.lmdb, "--char_boxes", boxed_lmdb.boxes,
                           "--indices", "2", "1", "--out_dir", out_dir, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["2", "1"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["sample_000000001.png", "sample_000000002.png"]
    with Image.open(out_dir / "sample_000000001.png") as figure:
        assert figure.format == "PNG" and figure.size == (900, 700)


def test_char_box_errors(files, boxed_lmdb, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(files.trba), "--lmdb", str(boxed_lmdb.lmdb), "--device", "cpu"])
    assert exit_.value.code == 2 and "--lmdb and --char_boxes go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(files.trba), "--lmdb", str(boxed_lmdb.lmdb), "--char_boxes", str(boxed_lmdb.boxes),
              "--indices", "1", "7", "--out_dir", str(tmp_path), "--device", "cpu"])
    assert exit_.value.code == 2 and "has no boxes for sample(s) [7]" in capsys.readouterr().err


def test_analyse_char_boxes_draws_the_scored_peaks(files, boxed_lmdb, single_thread):
    """The figure's points are char_attention's: the original image at its stored size, the boxes of the
    characters the model reads, and the peaks of ``locate_peaks`` on the model's own trace."""
    model, tokenizer, config = load_model(files.siga, "cpu")
    entry = load_char_boxes(boxed_lmdb.boxes, tokenizer)[1]
    image, label = read_lmdb_sample(boxed_lmdb.lmdb, 1)
    view = analyse_char_boxes(model, tokenizer, config, image, entry, torch.device("cpu"))
    assert label == "Hi!" and view.chars == "hi" and view.original_rgb.shape == (40, 150, 3)
    assert view.boxes.tolist() == [[30, 5, 30, 30], [62, 5, 20, 30]]
    with torch.no_grad():
        trace = model.trace(preprocess([image], config))
    peaks = locate_peaks(trace, torch.tensor([[150, 40]]), tokenizer.eos_id)
    assert set(view.peaks) == set(view.hits) == {"1d", "glyph", "glyph_class"} and view.steps == int(peaks.steps[0])
    for name in ("1d", "glyph", "glyph_class"):
        assert torch.allclose(torch.from_numpy(view.peaks[name]), peaks.original[name][0], atol=1e-5)
        assert torch.allclose(torch.from_numpy(view.rectified_peaks[name]), peaks.rectified[name][0], atol=1e-5)
        assert view.hits[name].shape == (2,)
    x = view.peaks["1d"][0, 0]
    assert view.hits["1d"][0] == (29.5 <= x < 59.5)
    assert view.rectified_rgb.shape == (config.img_h, config.img_w, 3)
