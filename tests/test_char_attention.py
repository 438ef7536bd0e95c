"""char_attention.py: peaks of hand-made attention and glyph maps, their way back through a sampling grid (identity,
a hand-computable affine flip, a real TPS) and the bicubic resize to the original pixels, the hit tests, the
ground-truth file (charset filtering, malformed entries, mismatches with the LMDB), and ``test.py
--char_boxes`` end to end against a reference written out here."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks import EvalSet
from char_attention import (AttentionTally, CharBoxes, StepPeaks, attention_peaks, box_hits, check_against_set,
                            decoded_steps, even_spacing_points, for_charset, glyph_peaks, load_char_boxes, locate_peaks,
                            read_char_boxes, through_grid, to_original)
from conftest import make_word_lmdb, run_entry_point, write_tiny_checkpoint
from dataset import Collate, LmdbDataset
from modules.outputs import GlyphTrace, Trace
from modules.transformation import GridGenerator, base_fiducials, identity_grid
from tokenizer import CHARSET_94, Tokenizer, load_charset


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread for this module's tiny models (a busy machine's cores only slow OpenMP down)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def affine_grid(height: int, width: int, x_scale: float, x_shift: float, y_scale: float,
                y_shift: float) -> torch.Tensor:
    """A sampling grid [1, H, W, 2] reading input x = x_scale · x_id + x_shift (normalised), likewise y."""
    grid = identity_grid(torch.zeros(1, 1, height, width)).clone()
    grid[..., 0] = grid[..., 0] * x_scale + x_shift
    grid[..., 1] = grid[..., 1] * y_scale + y_shift
    return grid


# --------------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------------
def test_attention_peaks_at_the_centre_of_the_column_span():
    attention = torch.full((1, 4, 3), 0.1)  # T = 4 columns over a 16-pixel width: spans of 4 pixels
    attention[0, 1, 0] = attention[0, 3, 1] = attention[0, 0, 2] = 0.7
    peaks = attention_peaks(attention, (8, 16))
    assert peaks.tolist() == [[[5.5, 3.5], [13.5, 3.5], [1.5, 3.5]]]  # (t + ½)·4 − ½; y = (8 − 1) / 2


def test_glyph_peaks_skip_the_background_channel():
    logits = torch.zeros(1, 4, 4, 8)  # K = 4: background + 3 slots on a 4×8 grid over a 8×16 image (cells 2×2)
    logits[0, 0, 1, 1] = 50.0  # the background's maximum is never a step's peak
    logits[0, 1, 2, 5] = 3.0
    logits[0, 2, 0, 0] = 3.0
    logits[0, 3, 3, 7] = 3.0
    peaks = glyph_peaks(logits, (8, 16), steps=2)
    assert peaks.tolist() == [[[10.5, 4.5], [0.5, 0.5]]]  # (5 + ½)·2 − ½, (2 + ½)·2 − ½; cell (0, 0)
    assert glyph_peaks(logits, (8, 16), steps=3)[0, 2].tolist() == [14.5, 6.5]
    with pytest.raises(ValueError, match="4 steps but only 3"):
        glyph_peaks(logits, (8, 16), steps=4)


# --------------------------------------------------------------------------------------------------
# Back to the input and the original image
# --------------------------------------------------------------------------------------------------
def test_identity_grid_passes_points_and_images_through():
    images = torch.randn(2, 3, 9, 17)
    grid = identity_grid(images)
    assert grid.shape == (2, 9, 17, 2)
    assert torch.allclose(F.grid_sample(images, grid, align_corners=True), images, atol=1e-5)
    points = torch.tensor([[[0.0, 0.0], [16.0, 8.0], [3.25, 5.5]]]).expand(2, 3, 2)
    assert torch.allclose(through_grid(points, grid, (9, 17)), points, atol=1e-5)


def test_flipped_and_scaled_grid_by_hand():
    """x flipped, y squeezed to half and shifted down: rectified (4, 2) reads input x = 16 − 4 = 12 and
    normalised y = ½·(2·2/8 − 1) + ¼ = 0 → row 4; (4.5, 2.5) → x 11.5, y (½·(−0.375) + ¼ + 1)/2 · 8 = 4.25."""
    grid = affine_grid(9, 17, -1.0, 0.0, 0.5, 0.25)
    points = torch.tensor([[[4.0, 2.0], [4.5, 2.5]]])
    assert torch.allclose(through_grid(points, grid, (9, 17)), torch.tensor([[[12.0, 4.0], [11.5, 4.25]]]), atol=1e-5)
    image = torch.arange(9 * 17, dtype=torch.float32).view(1, 1, 9, 17)
    rectified = F.grid_sample(image, grid, align_corners=True)
    assert rectified[0, 0, 2, 4] == pytest.approx(image[0, 0, 4, 12].item())  # the same convention as the warp


def test_real_tps_grid_lookup_is_bilinear_and_follows_content():
    """A non-identity TPS grid: at pixel centres the lookup is the grid's own value, between them the mean of
    the neighbours; and a blob drawn at input point p, warped, has its rectified centroid carried back to p."""
    torch.manual_seed(0)
    generator = GridGenerator(20, 32, 128)
    fiducials = base_fiducials(20).float()[None] * torch.tensor([0.8, 0.7]) + 0.05 * torch.randn(1, 20, 2)
    grid = generator(fiducials)
    scale = torch.tensor([127 / 2, 31 / 2])
    at_pixel = through_grid(torch.tensor([[[37.0, 11.0]]]), grid, (32, 128))
    assert torch.allclose(at_pixel[0, 0], (grid[0, 11, 37] + 1) * scale, atol=1e-4)
    between = through_grid(torch.tensor([[[37.5, 11.5]]]), grid, (32, 128))
    assert torch.allclose(between[0, 0], (grid[0, 11:13, 37:39].mean((0, 1)) + 1) * scale, atol=1e-4)

    p = torch.tensor([70.3, 16.6])
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(128.0), indexing="ij")
    blob = torch.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 1.5 ** 2))[None, None]
    warped = F.grid_sample(blob, grid, align_corners=True)[0, 0]
    weights = warped / warped.sum()
    centroid = torch.stack([(weights * xs).sum(), (weights * ys).sum()])
    back = through_grid(centroid.view(1, 1, 2), grid, (32, 128))[0, 0]
    assert (back - p).abs().max() < 0.3, (back, p)


def test_resize_mapping_to_the_original_pixels():
    points = torch.tensor([[[0.0, 0.0], [127.0, 31.0]], [[0.0, 0.0], [127.0, 31.0]]])
    sizes = torch.tensor([[256, 64], [64, 16]])
    original = to_original(points, (32, 128), sizes)
    assert original.tolist() == [[[0.5, 0.5], [254.5, 62.5]], [[-0.25, -0.25], [63.25, 15.25]]]


@pytest.mark.parametrize("width, column", [(256, 100), (64, 20)])
def test_resize_mapping_agrees_with_pil_bicubic(width, column):
    """A one-pixel line at ``column`` resized by PIL to 128 wide lands where to_original says, to 0.05 px."""
    line = np.zeros((8, width), np.float32)
    line[:, column] = 1.0
    resized = np.asarray(Image.fromarray(line).resize((128, 4), Image.BICUBIC))
    profile = resized.sum(0)
    centroid = float((profile * np.arange(128)).sum() / profile.sum())
    back = to_original(torch.tensor([[[centroid, 1.5]]]), (4, 128), torch.tensor([[width, 8]]))
    assert back[0, 0, 0].item() == pytest.approx(column, abs=0.05)


def test_locate_peaks_composes_the_steps():
    """A glyph trace on a 9×17 input with the flipped grid, from a 34×9 original: 1-D column 1 of 4 → rectified
    x = 1.5·17/4 − ½ = 5.875, y 4 → input x 16 − 5.875 = 10.125, y (½·0 + ¼ + 1)/2·8 = 5 → original
    x = (10.125 + ½)·2 − ½ = 20.75, y 5; glyph cell (1, 2) of 3×4 → rectified (2.5·17/4 − ½, 1.5·9/3 − ½) =
    (10.125, 4) → input (5.875, 5) → original (12.25, 5)."""
    attention = torch.zeros(1, 4, 2)
    attention[0, 1] = 1.0
    glyph = torch.zeros(1, 4, 3, 4)
    glyph[0, 1:3, 1, 2] = 1.0
    glyph[0, 0, 1, 2] = 3.0  # the background channel wins that cell
    logits = torch.zeros(1, 2, 5)
    logits[0, 0, 3] = logits[0, 1, 0] = 1.0  # a character, then EOS (id 0)
    grid = affine_grid(9, 17, -1.0, 0.0, 0.5, 0.25)
    trace = GlyphTrace(logits, attention, grid, attention, glyph, glyph)
    peaks = locate_peaks(trace, torch.tensor([[34, 9]]), eos_id=0)
    assert peaks.steps.tolist() == [2]
    assert torch.allclose(peaks.rectified["1d"][0, 0], torch.tensor([5.875, 4.0]))
    assert torch.allclose(peaks.original["1d"][0, 0], torch.tensor([20.75, 5.0]), atol=1e-4)
    assert torch.allclose(peaks.original["glyph"][0, 0], torch.tensor([12.25, 5.0]), atol=1e-4)
    # the class probability: at cell (1, 2) the background channel's 3.0 leaves channel 1 e/(e³ + 2e + 1) ≈ 0.10,
    # below the ¼ of every other cell, the first of which, (0, 0), is its peak
    assert torch.allclose(peaks.rectified["glyph_class"][0, 0], torch.tensor([1.625, 1.0]))
    assert set(locate_peaks(Trace(logits, attention, grid), torch.tensor([[34, 9]]), 0).original) == {"1d"}


# --------------------------------------------------------------------------------------------------
# Hits and tallies
# --------------------------------------------------------------------------------------------------
def test_decoded_steps_count_through_the_first_eos():
    ids = torch.tensor([[3, 0, 2, 0], [0, 1, 1, 1], [2, 2, 2, 2]])
    logits = F.one_hot(ids, 5).float()
    assert decoded_steps(logits, eos_id=0).tolist() == [2, 1, 4]
    assert decoded_steps(logits, eos_id=1).tolist() == [4, 2, 4]


def test_box_hits_one_and_two_dimensional():
    """Box (10, 4, 5, 3) covers columns 10–14, rows 4–6: points in [9.5, 14.5) × [3.5, 6.5) hit."""
    boxes = torch.tensor([[[10, 4, 5, 3]] * 6])
    points = torch.tensor([[[9.5, 5.0], [14.49, 5.0], [14.5, 5.0], [9.49, 5.0], [12.0, 3.4], [12.0, 6.49]]])
    lengths, steps = torch.tensor([6]), torch.tensor([6])
    assert box_hits(points, boxes, lengths, steps, two_d=False).tolist() == [[True, True, False, False, True, True]]
    assert box_hits(points, boxes, lengths, steps, two_d=True).tolist() == [[True, True, False, False, False, True]]
    # characters past the ground truth's length or past the decoded steps never hit
    assert box_hits(points, boxes, torch.tensor([1]), steps, two_d=False).tolist() == [[True] + [False] * 5]
    assert box_hits(points, boxes, lengths, torch.tensor([2]), two_d=False).tolist() == [[True, True] + [False] * 4]
    assert box_hits(points[:, :1], boxes, lengths, steps, two_d=False).tolist() == [[True] + [False] * 5]


def test_tally_counts_all_characters_and_correct_words():
    entries = [CharBoxes("ab", "ab", ((0, 0, 4, 4), (4, 0, 4, 4)), 8, 4),
               CharBoxes("cde", "cde", ((0, 0, 2, 4), (2, 0, 2, 4), (4, 0, 4, 4)), 8, 4)]
    points = torch.tensor([[[1.0, 1.0], [5.0, 9.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0], [5.0, 1.0]]])
    peaks = StepPeaks(torch.tensor([3, 2]), {}, {"1d": points, "glyph": points})
    tally = AttentionTally("set")
    tally.add_batch(peaks, entries, torch.tensor([True, False]))
    tally.add_unreadable([CharBoxes("xyz", "xyz", ((0, 0, 1, 1),) * 3, 8, 4)])
    assert (tally.words, tally.unreadable, tally.correct_words, tally.chars, tally.correct_chars) == (3, 1, 1, 8, 2)
    # 1-D (and the glyph peaks' x alone): a ✓ b ✓ | c ✓ d ✗ (x 1 not in 2–3) e ✗ (step 2 not decoded);
    # 2-D: b's y 9 misses too
    assert tally.hits == {"1d": 3, "glyph_x": 3, "glyph": 2}
    assert tally.correct_hits == {"1d": 2, "glyph_x": 2, "glyph": 1}
    assert tally.percent("1d") == pytest.approx(37.5) and tally.percent("glyph", correct_only=True) == 50.0
    row = tally.row()
    assert row["accuracy"] == pytest.approx(100 / 3) and row["percent_correct_words"]["1d"] == 100.0
    # even spacing: 'ab' at x 1.5, 5.5 (both in), 'cde' at x ⅚, 3.5, 6⅙ (d's columns 2–3 end at 3.5: out),
    # 'xyz' (unreadable, 1-pixel boxes at the origin) none
    assert tally.baseline_hits == {"1d": 4, "glyph_x": 4, "glyph": 4, "glyph_class": 4}
    assert tally.baseline_percent("glyph") == 50.0
    assert row["baseline_percent"] == {"1d": 50.0, "glyph_x": 50.0, "glyph": 50.0}  # the maps it was given


def test_tally_scores_glyph_x_apart_from_the_glyph_row():
    """A glyph peak in its character's columns but above the box: an x hit, a 2-D miss."""
    entry = CharBoxes("a", "a", ((2, 2, 3, 3),), 8, 8)
    points = torch.tensor([[[3.0, 0.0]]])
    tally = AttentionTally("set")
    tally.add_batch(StepPeaks(torch.tensor([1]), {}, {"1d": points + 4, "glyph": points}), [entry],
                    torch.tensor([True]))
    assert tally.hits == {"1d": 0, "glyph_x": 1, "glyph": 0}


def test_even_spacing_points():
    entries = [CharBoxes("abcd", "abcd", ((0, 0, 1, 1),) * 4, 100, 31), CharBoxes("x", "x", ((0, 0, 1, 1),), 10, 4)]
    points = even_spacing_points(entries)
    assert points[0].tolist() == [[12.0, 15.0], [37.0, 15.0], [62.0, 15.0], [87.0, 15.0]]  # (i + ½)·25 − ½
    assert points[1, 0].tolist() == [4.5, 1.5]


# --------------------------------------------------------------------------------------------------
# The ground-truth file
# --------------------------------------------------------------------------------------------------
ENTRIES = {"1": {"chars": "You", "width": 78, "height": 43,
                 "boxes": [[4, 4, 21, 36], [24, 14, 24, 26], [48, 10, 25, 28]]},
           "2": {"chars": "A-1!", "width": 40, "height": 10, "boxes": [[0, 0, 9, 9], [10, 0, 9, 9], [20, 0, 9, 9],
                                                                         [30, 0, 9, 9]]}}


def write_boxes(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_charset_filtering_drops_the_matching_boxes(tmp_path):
    path = write_boxes(tmp_path / "boxes.json", ENTRIES)
    raw = read_char_boxes(path)
    assert raw[2].chars == "A-1!" and len(raw[2].boxes) == 4
    insensitive = load_char_boxes(path, Tokenizer(load_charset("36")))
    assert insensitive[1].chars == "you" and insensitive[1].boxes == raw[1].boxes
    assert insensitive[2].chars == "a1" and insensitive[2].boxes == ((0, 0, 9, 9), (20, 0, 9, 9))
    assert insensitive[2].label == "A-1!" and insensitive[2].width == 40
    sensitive = load_char_boxes(path, Tokenizer(CHARSET_94, sensitive=True))
    assert sensitive[2].chars == "A-1!" and sensitive[2].boxes == raw[2].boxes
    digits = load_char_boxes(path, Tokenizer("0123456789"))
    assert digits[1].chars == "" and digits[1].boxes == () and digits[2].boxes == ((20, 0, 9, 9),)


def test_a_label_that_cannot_be_split_per_character_is_an_error():
    """Lower-casing depends on context for a final sigma: 'ΣΣ' is 'σς' as a word but 'σσ' character by
    character, so its boxes cannot be assigned."""
    tokenizer = Tokenizer("σς")
    entry = CharBoxes("ΣΣ", "ΣΣ", ((0, 0, 1, 1), (1, 0, 1, 1)), 2, 1)
    with pytest.raises(ValueError, match="file, index 7: label 'ΣΣ' normalises to 'σς'"):
        for_charset(entry, tokenizer, "file, index 7")


@pytest.mark.parametrize("entry, message", [
    ({"chars": "ab", "width": 10, "height": 5, "boxes": [[0, 0, 2, 2]]}, "1 boxes for the 2 characters"),
    ({"chars": "a", "width": 10, "height": 5, "boxes": [[0, 0, 0, 2]]}, "box 0 .* is empty"),
    ({"chars": "a", "width": 10, "height": 5, "boxes": [[8, 0, 3, 2]]}, "leaves the 10x5 image"),
    ({"chars": "a", "width": 10, "height": 5, "boxes": [[0, 0, 2]]}, r"box 0 must be \[x, y, w, h\]"),
    ({"chars": "a", "width": 0, "height": 5, "boxes": [[0, 0, 1, 1]]}, "positive integers"),
    ({"chars": "a", "width": 10, "boxes": [[0, 0, 1, 1]]}, "expected an object with chars"),
])
def test_malformed_entries_name_file_and_index(tmp_path, entry, message):
    path = write_boxes(tmp_path / "bad.json", {"1": ENTRIES["1"], "5": entry})
    with pytest.raises(ValueError, match=f"bad.json, index 5: .*{message}"):
        read_char_boxes(path)
    write_boxes(path, {"0": ENTRIES["1"]})
    with pytest.raises(ValueError, match="index 0: the key must be a 1-based sample index"):
        read_char_boxes(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_char_boxes(path)


def test_boxes_are_checked_against_the_lmdb(tmp_path):
    lmdb = make_word_lmdb(tmp_path / "db", ["hi", "ok"], size=(40, 10), labels=["hi", "ok"])
    eval_set = EvalSet("db", [lmdb])
    good = {"1": {"chars": "hi", "width": 40, "height": 10, "boxes": [[0, 0, 5, 5], [5, 0, 5, 5]]},
            "2": {"chars": "ok", "width": 40, "height": 10, "boxes": [[0, 0, 5, 5], [5, 0, 5, 5]]}}
    check_against_set(read_char_boxes(write_boxes(tmp_path / "good.json", good)), eval_set, "good.json")
    wrong_label = {**good, "2": {**good["2"], "chars": "no"}}
    with pytest.raises(ValueError, match=r"wrong.json, index 2: chars 'no' but .*db/label-000000002 is 'ok'"):
        check_against_set(read_char_boxes(write_boxes(tmp_path / "w.json", wrong_label)), eval_set, "wrong.json")
    wrong_size = {**good, "1": {**good["1"], "width": 41}}
    with pytest.raises(ValueError, match=r"index 1: size 41x10 but .*db/image-000000001 is 40x10"):
        check_against_set(read_char_boxes(write_boxes(tmp_path / "s.json", wrong_size)), eval_set, "s.json")
    beyond = {**good, "3": good["1"]}
    with pytest.raises(ValueError, match="index 3: evaluation set db has only 2 samples"):
        check_against_set(read_char_boxes(write_boxes(tmp_path / "b.json", beyond)), eval_set, "b.json")
    # a set of several LMDBs is indexed over them in order: index 3 is the second LMDB's first sample
    second = make_word_lmdb(tmp_path / "second", ["go"], size=(40, 10))
    both = EvalSet("both", [lmdb, second])
    check_against_set(read_char_boxes(write_boxes(tmp_path / "o.json", {**good, "3": {**good["1"], "chars": "go"}})),
                      both, "o.json")
    with pytest.raises(ValueError, match=r"index 3: chars 'hi' but .*second/label-000000001 is 'go'"):
        check_against_set(read_char_boxes(write_boxes(tmp_path / "b.json", beyond)), both, "b.json")


# --------------------------------------------------------------------------------------------------
# test.py --char_boxes, end to end
# --------------------------------------------------------------------------------------------------
WORDS = ["hello", "world", "street", "coffee", "parking", "exit", "london", "station"]
ORIGINAL_SIZE = (150, 40)  # resized to the tiny models' 128×32
CORRUPT = 4  # 1-based index of an unreadable sample: its characters count as misses


def bilinear(grid: np.ndarray, x: float, y: float) -> np.ndarray:
    """The grid [H, W, 2] at (x, y), interpolated between its four nearest entries, written out by hand."""
    height, width = grid.shape[:2]
    x, y = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x0, y0 = min(int(math.floor(x)), width - 2), min(int(math.floor(y)), height - 2)
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * grid[y0, x0] + fx * (1 - fy) * grid[y0, x0 + 1]
            + (1 - fx) * fy * grid[y0 + 1, x0] + fx * fy * grid[y0 + 1, x0 + 1])


def reference_points(trace, sample: int, step: int) -> dict[str, tuple[float, float]]:
    """Step ``step``'s peaks of sample ``sample`` in the original image, computed one point at a time."""
    grid = trace.grid[sample].numpy().astype(np.float64)
    height, width = grid.shape[:2]
    alpha = trace.attention[sample, :, step].numpy()
    rectified = {"1d": ((int(alpha.argmax()) + 0.5) * width / len(alpha) - 0.5, (height - 1) / 2)}
    if isinstance(trace, GlyphTrace):
        channel = trace.glyph_logits_low[sample, step + 1].numpy()
        row, column = np.unravel_index(int(channel.argmax()), channel.shape)
        rectified["glyph"] = ((column + 0.5) * width / channel.shape[1] - 0.5,
                              (row + 0.5) * height / channel.shape[0] - 0.5)
        logits = trace.glyph_logits_low[sample].numpy().astype(np.float64)
        probability = np.exp(logits[step + 1]) / np.exp(logits).sum(0)
        row, column = np.unravel_index(int(probability.argmax()), probability.shape)
        rectified["glyph_class"] = ((column + 0.5) * width / channel.shape[1] - 0.5,
                                    (row + 0.5) * height / channel.shape[0] - 0.5)
    points = {}
    for name, (x, y) in rectified.items():
        gx, gy = bilinear(grid, x, y)
        x_in, y_in = (gx + 1) / 2 * (width - 1), (gy + 1) / 2 * (height - 1)
        points[name] = ((x_in + 0.5) * ORIGINAL_SIZE[0] / width - 0.5, (y_in + 0.5) * ORIGINAL_SIZE[1] / height - 0.5)
    return points


def boxes_for(points: list[dict], chars: str) -> list[list[int]]:
    """One box per character: around its step's 1-D peak for even positions, on the far side for odd ones."""
    width, height = ORIGINAL_SIZE
    boxes = []
    for position in range(len(chars)):
        x = points[position]["1d"][0] if position < len(points) else 0.0
        pixel = min(max(int(math.floor(x + 0.5)), 0), width - 1)
        if position % 2 == 0:
            boxes.append([max(pixel - 2, 0), 0, min(pixel + 3, width) - max(pixel - 2, 0), height])
        else:
            boxes.append([width - 3 if pixel < width // 2 else 0, 5, 3, height - 10])
    return boxes


def inside(point: tuple[float, float], box: list[int], two_d: bool) -> bool:
    x, y = point
    in_x = box[0] - 0.5 <= x < box[0] + box[2] - 0.5
    return in_x and (not two_d or box[1] - 0.5 <= y < box[1] + box[3] - 0.5)


def spacing_hits(boxes: list[list[int]], width: int, height: int, two_d: bool) -> int:
    """Hits of the even-spacing baseline: character i of n at x = (i + ½)·width/n − ½, y = (height − 1)/2."""
    n = len(boxes)
    return sum(inside(((i + 0.5) * width / n - 0.5, (height - 1) / 2), box, two_d) for i, box in enumerate(boxes))


@pytest.fixture(scope="module", params=["TRBA", "SIGA_R"])
def boxed(request, tmp_path_factory):
    """A tiny checkpoint, an LMDB of rendered words (one corrupt) labelled with their reading (upper-cased, '!'
    appended: boxes for characters the model does not read) for even positions and a wrong word otherwise, the
    boxes JSON built from the reference peaks, and the expected counts."""
    root = tmp_path_factory.mktemp(f"boxed-{request.param}")
    model, tokenizer, config = write_tiny_checkpoint(root / "tiny.pth", request.param, seed=3)
    make_word_lmdb(root / "words", WORDS, size=ORIGINAL_SIZE)
    dataset = LmdbDataset(root / "words", tokenizer, (config.img_h, config.img_w), "test")
    batch = Collate(config.normalize_images)([dataset[i] for i in range(len(WORDS))])
    with torch.no_grad():
        trace = model.trace(batch.images)
    readings, _ = tokenizer.decode(trace.logits)
    steps = decoded_steps(trace.logits, tokenizer.eos_id).tolist()
    labels, entries = [], {}
    expected = SimpleNamespace(words=len(WORDS), correct_words=0, chars=0, correct_chars=0,
                               hits={"1d": 0, "glyph_x": 0, "glyph": 0, "glyph_class": 0},
                               correct_hits={"1d": 0, "glyph_x": 0, "glyph": 0, "glyph_class": 0},
                               baseline={"1d": 0, "glyph_x": 0, "glyph": 0, "glyph_class": 0})
    for sample, reading in enumerate(readings):
        index = sample + 1 if sample + 1 < CORRUPT else sample + 2
        correct = sample % 2 == 0
        chars = reading if correct else reading + "q"
        label = chars.upper() + "!" if correct else chars
        points = [reference_points(trace, sample, step) for step in range(min(steps[sample], len(chars)))]
        boxes = boxes_for(points, chars)
        entries[str(index)] = {"chars": label, "width": ORIGINAL_SIZE[0], "height": ORIGINAL_SIZE[1],
                               "boxes": boxes + [[0, 0, 1, 1]] * (len(label) - len(chars))}
        labels.append(label)
        expected.chars += len(chars)
        expected.correct_words += correct
        expected.correct_chars += len(chars) * correct
        for name in (("1d", "glyph_x", "glyph", "glyph_class") if request.param == "SIGA_R" else ("1d",)):
            source = "glyph" if name == "glyph_x" else name
            two_d = name in ("glyph", "glyph_class")
            hits = sum(inside(point[source], box, two_d) for point, box in zip(points, boxes))
            expected.hits[name] += hits
            expected.correct_hits[name] += hits * correct
            expected.baseline[name] += spacing_hits(boxes, *ORIGINAL_SIZE, two_d)
    labels.insert(CORRUPT - 1, "abc")
    entries[str(CORRUPT)] = {"chars": "abc", "width": 5, "height": 5, "boxes": [[0, 0, 1, 1]] * 3}
    expected.words += 1
    expected.chars += 3
    for name in expected.baseline:
        expected.baseline[name] += spacing_hits([[0, 0, 1, 1]] * 3, 5, 5, name in ("glyph", "glyph_class"))
    words = WORDS[: CORRUPT - 1] + ["abc"] + WORDS[CORRUPT - 1 :]
    make_word_lmdb(root / "eval", words, size=ORIGINAL_SIZE, corrupt_indices=[CORRUPT], labels=labels)
    (root / "boxes.json").write_text(json.dumps(entries))
    return SimpleNamespace(root=root, expected=expected, model=request.param)


def test_test_py_reports_the_character_attention(boxed, tmp_path):
    json_path = tmp_path / "report.json"
    code, out, err = run_entry_point("test.py", "--checkpoint", boxed.root / "tiny.pth", "--eval_data",
                                     boxed.root / "eval", "--char_boxes", boxed.root / "boxes.json", "--device", "cpu",
                                     "--workers", "0", "--channels_last", "off", "--json", json_path)
    assert code == 0, err[-3000:]
    row = json.loads(json_path.read_text())["char_attention"][0]
    expected = boxed.expected
    assert (row["words"], row["unreadable"], row["correct_words"], row["chars"], row["correct_chars"]) == \
        (expected.words, 1, expected.correct_words, expected.chars, expected.correct_chars)
    names = ["1d", "glyph_x", "glyph", "glyph_class"] if boxed.model == "SIGA_R" else ["1d"]
    assert row["hits"] == {name: expected.hits[name] for name in names}
    assert row["correct_hits"] == {name: expected.correct_hits[name] for name in names}
    assert row["baseline_hits"] == {name: expected.baseline[name] for name in names}
    assert 0 < expected.hits["1d"] < expected.chars  # the boxes give hits and misses
    lines = out.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("character attention"))
    line = next(line for line in lines[title:] if line.startswith("eval "))
    assert f"{100 * expected.hits['1d'] / expected.chars:.2f} ({expected.hits['1d']}/{expected.chars})" in line
    assert ("glyph map" in out) == (boxed.model == "SIGA_R")


def test_test_py_refuses_boxes_that_do_not_match(boxed, tmp_path):
    entries = json.loads((boxed.root / "boxes.json").read_text())
    entries["2"]["chars"] += "z"
    entries["2"]["boxes"].append([0, 0, 1, 1])
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    code, out, err = run_entry_point("test.py", "--checkpoint", boxed.root / "tiny.pth", "--eval_data",
                                     boxed.root / "eval", "--char_boxes", tmp_path / "bad.json", "--device", "cpu",
                                     "--workers", "0")
    assert code == 2 and "bad.json, index 2: chars" in err and "label-000000002" in err and out == ""
