"""Ink layers of the synthetic engine (synth/text_layer.py): glyph drawing with tracking, stroke and baseline
shifts, the underline bar, border/shadow/extrusion decorations and ink bounds."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import ImageFont

from synth.text_layer import (GlyphPlacement, InkLayers, border_layer, draw_glyphs, extrusion_layer, ink_bounds,
                              shadow_layer, underline_layer)

DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
FONT = ImageFont.truetype(str(DEJAVU), 40)
MARGIN = 6


def placement(n: int, extra: float = 0.0, shift=None, stroke: int = 0) -> GlyphPlacement:
    return GlyphPlacement(np.full(n, float(extra)), np.zeros(n) if shift is None else np.asarray(shift, float),
                          stroke)


@pytest.fixture(scope="module")
def word() -> np.ndarray:
    """'HH' at 40 px, plain typesetting, 6 px margin."""
    return draw_glyphs("HH", FONT, placement(2), MARGIN)[0]


def test_draw_glyphs_returns_coverage_cropped_to_the_ink_with_the_margin():
    glyphs, (baseline, start, end) = draw_glyphs("HH", FONT, placement(2), MARGIN)
    assert glyphs.dtype == np.float32 and glyphs.ndim == 2 and glyphs.flags.c_contiguous
    assert glyphs.min() >= 0.0 and glyphs.max() <= 1.0 and glyphs.max() > 0.99
    height, width = glyphs.shape
    assert ink_bounds(glyphs, threshold=0.0) == (MARGIN, height - MARGIN, MARGIN, width - MARGIN)
    # 'H' stands on the baseline; start..end spans the typeset advance of the text
    assert abs(ink_bounds(glyphs, 0.5)[1] - baseline) <= 1
    assert abs((end - start) - FONT.getlength("HH")) <= 1
    assert start <= ink_bounds(glyphs, 0.5)[2] and end >= ink_bounds(glyphs, 0.5)[3]


def test_spaces_are_not_drawn_but_keep_their_advance():
    spaced, _ = draw_glyphs("H H", FONT, placement(3), 0)
    tight, _ = draw_glyphs("HH", FONT, placement(2), 0)
    assert spaced.shape[0] == tight.shape[0]
    assert spaced.shape[1] - tight.shape[1] == pytest.approx(FONT.getlength(" "), abs=1.5)
    # the gap between the two H's is empty over the width of the space
    columns = np.nonzero(spaced.max(0) > 0)[0]
    assert np.diff(columns).max() >= FONT.getlength(" ")


def test_positive_tracking_widens_the_canvas_and_negative_narrows_it(word):
    tracked, (_, start, end) = draw_glyphs("HHHH", FONT, placement(4, extra=10), MARGIN)
    plain, (_, start0, end0) = draw_glyphs("HHHH", FONT, placement(4), MARGIN)
    assert tracked.shape[0] == plain.shape[0]
    assert tracked.shape[1] - plain.shape[1] == pytest.approx(30, abs=1)  # 3 gaps of 10 px (first ignored)
    assert (end - start) - (end0 - start0) == pytest.approx(30, abs=1)
    tight, _ = draw_glyphs("HHHH", FONT, placement(4, extra=-3), MARGIN)
    assert plain.shape[1] - tight.shape[1] == pytest.approx(9, abs=1)
    assert tracked.sum() == pytest.approx(plain.sum(), rel=0.02)  # the same glyphs, only moved


def test_stroke_thickens_the_glyphs(word):
    bold, _ = draw_glyphs("HH", FONT, placement(2, stroke=3), MARGIN)
    assert bold.sum() > 1.5 * word.sum()
    top, bottom, left, right = ink_bounds(word, 0.5)
    btop, bbottom, bleft, bright = ink_bounds(bold, 0.5)
    assert (bbottom - btop) - (bottom - top) == pytest.approx(6, abs=1)
    assert (bright - bleft) - (right - left) == pytest.approx(6, abs=1)


def test_baseline_shift_moves_each_character_vertically(word):
    shifted, (baseline, _, _) = draw_glyphs("HH", FONT, placement(2, extra=12, shift=[0, 8]), MARGIN)
    half = shifted.shape[1] // 2
    first, second = ink_bounds(shifted[:, :half], 0.5), ink_bounds(shifted[:, half:], 0.5)
    assert second[0] - first[0] == 8 and second[1] - first[1] == 8
    assert abs(first[1] - baseline) <= 1  # the unshifted character stays on the returned baseline
    assert shifted.shape[0] == word.shape[0] + 8
    # a common shift moves the ink off the nominal baseline (down for positive values)
    down, (baseline_down, _, _) = draw_glyphs("HH", FONT, placement(2, shift=[6, 6]), MARGIN)
    assert down.shape == word.shape
    assert ink_bounds(down, 0.5)[1] - baseline_down == pytest.approx(6, abs=1)


def test_underline_bar_rows_and_columns():
    layer = underline_layer((60, 80), baseline=34, start=5, end=70, thickness=3, gap=4)
    assert layer.dtype == np.float32 and layer.shape == (60, 80)
    rows, cols = np.nonzero(layer)
    assert set(rows) == {38, 39, 40} and cols.min() == 5 and cols.max() == 69
    assert layer.sum() == 3 * 65
    # a bar that would leave the canvas is pushed up to its bottom rows; negative starts clip to 0
    clipped = underline_layer((40, 30), baseline=38, start=-4, end=20, thickness=3, gap=5)
    assert set(np.nonzero(clipped)[0]) == {37, 38, 39} and np.nonzero(clipped)[1].min() == 0
    assert clipped.sum() == 3 * 20


def test_border_contains_the_glyphs_and_grows_them_by_its_width(word):
    border = border_layer(word, 3)
    assert border.shape == word.shape and border.dtype == np.float32
    assert np.all(border >= word)
    assert np.all((border > 0.5)[word > 0.5])
    top, bottom, left, right = ink_bounds(word, 0.5)
    assert ink_bounds(border, 0.5) == (top - 3, bottom + 3, left - 3, right + 3)
    assert (border > 0.5).sum() > 1.3 * (word > 0.5).sum()


def test_shadow_is_the_glyphs_shifted_then_blurred(word):
    sharp = shadow_layer(word, 4, 2, 0.0)
    assert np.array_equal(sharp[2:, 4:], word[:-2, :-4])
    assert np.array_equal(shadow_layer(word, -3, -1, 0.0)[:-1, :-3], word[1:, 3:])
    blurred = shadow_layer(word, 4, 2, 1.5)
    assert blurred.max() < sharp.max() and blurred.sum() == pytest.approx(sharp.sum(), rel=0.03)
    ys, xs = np.mgrid[0:word.shape[0], 0:word.shape[1]]
    centre = lambda layer: np.array([(layer * ys).sum(), (layer * xs).sum()]) / layer.sum()  # noqa: E731
    assert centre(blurred) - centre(word) == pytest.approx([2, 4], abs=0.3)


def test_extrusion_is_the_union_of_shifted_copies(word):
    extrusion = extrusion_layer(word, 1.0, 0.0, 3)
    expected = np.maximum.reduce([np.roll(word, step, axis=1) for step in (1, 2, 3)])
    assert np.allclose(extrusion, expected, atol=1e-6)
    top, bottom, left, right = ink_bounds(word, 0.5)
    assert ink_bounds(extrusion, 0.5) == (top, bottom, left + 1, right + 3)
    diagonal = extrusion_layer(word, 0.0, 1.0, 2)
    assert ink_bounds(diagonal, 0.5) == (top + 1, bottom + 2, left, right)


def test_ink_bounds_on_a_known_array():
    layer = np.zeros((10, 12), np.float32)
    layer[2:5, 3:7] = 0.5
    layer[7, 9] = 0.04
    assert ink_bounds(layer) == (2, 5, 3, 7)
    assert ink_bounds(layer, threshold=0.0) == (2, 8, 3, 10)
    assert ink_bounds(layer, threshold=0.6) == (0, 10, 0, 12)  # nothing above: the whole layer
    assert ink_bounds(np.zeros((4, 6), np.float32)) == (0, 4, 0, 6)


def test_ink_layers_items_and_replace(word):
    ink = InkLayers(word, border=border_layer(word, 2))
    assert [name for name, _ in ink.items()] == ["glyphs", "border"]
    moved = ink.replace([layer[1:] for _, layer in ink.items()])
    assert moved.underline is None and moved.shadow is None and moved.extrusion is None
    assert moved.glyphs.shape == moved.border.shape == (word.shape[0] - 1, word.shape[1])
    full = InkLayers(word, word, word, word, word)
    assert [name for name, _ in full.items()] == ["glyphs", "underline", "border", "shadow", "extrusion"]
