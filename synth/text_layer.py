"""The ink layers of one word: its glyphs drawn character by character (so tracking and baseline can vary per
character), an optional underline, and the decorations that real signs add around glyphs (border, drop
shadow, extrusion), each as a float coverage layer in [0, 1] on one shared canvas.

Only the glyph layer is the word's mask; decorations are ink that is not a character, as in real photos.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class GlyphPlacement:
    """Where each character goes relative to plain typesetting, in pixels: extra space before it (tracking,
    kerning jitter) and a vertical shift of its baseline; ``stroke`` thickens every glyph (synthetic bold)."""

    extra_space: np.ndarray  # [n] px added before character i (index 0 ignored)
    baseline_shift: np.ndarray  # [n] px, positive is down
    stroke: int = 0


@dataclass
class InkLayers:
    """Coverage layers on one canvas: ``glyphs`` is the word itself (the mask), the others decoration."""

    glyphs: np.ndarray  # float32 [H, W]
    underline: np.ndarray | None = None
    border: np.ndarray | None = None
    shadow: np.ndarray | None = None
    extrusion: np.ndarray | None = None

    def items(self) -> list[tuple[str, np.ndarray]]:
        """(name, layer) of every present layer, glyphs first."""
        return [(name, layer) for name in ("glyphs", "underline", "border", "shadow", "extrusion")
                if (layer := getattr(self, name)) is not None]

    def replace(self, layers: list[np.ndarray]) -> "InkLayers":
        """The same layer names with new arrays, in the order of ``items()`` (after a geometric step)."""
        return InkLayers(**dict(zip((name for name, _ in self.items()), layers)))


def draw_glyphs(text: str, font: ImageFont.FreeTypeFont, placement: GlyphPlacement, margin: int
                ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Draw ``text`` character by character at its typeset advance (prefix widths, so the font's kerning is
    kept) plus ``placement``, on a canvas cropped to the ink with ``margin`` empty pixels around it. Returns
    the float32 coverage [H, W] and (baseline y, text start x, text end x) on that canvas."""
    size = int(font.size)
    advances = np.array([font.getlength(text[:i]) for i in range(len(text) + 1)], np.float64)
    lefts = advances[:-1] + np.cumsum(np.concatenate([[0.0], placement.extra_space[1:]]))
    lefts -= min(lefts.min(initial=0.0), 0.0)
    rights = lefts + np.diff(advances)
    slack = size + placement.stroke + margin  # room for overhangs (italics, swashes), stroke and margin
    shift = float(np.abs(placement.baseline_shift).max(initial=0.0))
    canvas = Image.new("L", (int(np.ceil(rights.max(initial=1.0))) + 2 * slack, int(np.ceil(2 * size + 2 * shift))
                             + 2 * slack), 0)
    draw = ImageDraw.Draw(canvas)
    baseline = slack + shift + size
    for char, left, dy in zip(text, lefts, placement.baseline_shift):
        if not char.isspace():
            draw.text((slack + left, baseline + dy), char, fill=255, font=font, anchor="ls",
                      stroke_width=placement.stroke, stroke_fill=255)
    glyphs = np.asarray(canvas, np.float32) / 255.0
    top, bottom, left, right = ink_bounds(glyphs, threshold=0.0)
    top, left = max(top - margin, 0), max(left - margin, 0)
    glyphs = glyphs[top:bottom + margin, left:right + margin]
    end = int(round(slack + rights.max(initial=0.0)))
    return np.ascontiguousarray(glyphs), (int(round(baseline)) - top, slack - left, end - left)


def underline_layer(shape: tuple[int, int], baseline: int, start: int, end: int, thickness: int,
                    gap: int) -> np.ndarray:
    """A bar ``gap`` px under the baseline from ``start`` to ``end``, ``thickness`` px thick."""
    layer = np.zeros(shape, np.float32)
    top = min(baseline + gap, shape[0] - thickness)
    layer[top:top + thickness, max(start, 0):max(end, 0)] = 1.0
    return layer


def border_layer(glyphs: np.ndarray, width: int) -> np.ndarray:
    """An outline: the glyphs dilated by a disc of radius ``width`` (drawn under the glyphs)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(glyphs, kernel)


def shadow_layer(glyphs: np.ndarray, dx: int, dy: int, blur: float) -> np.ndarray:
    """A drop shadow: the glyphs shifted by (dx, dy) px and blurred by a Gaussian of sigma ``blur``."""
    shifted = cv2.warpAffine(glyphs, np.float32([[1, 0, dx], [0, 1, dy]]), glyphs.shape[::-1])
    return cv2.GaussianBlur(shifted, (0, 0), blur) if blur > 0 else shifted


def extrusion_layer(glyphs: np.ndarray, dx: float, dy: float, depth: int) -> np.ndarray:
    """A 3-D extrusion: the union of the glyphs shifted 1..``depth`` steps along (dx, dy)."""
    layer = np.zeros_like(glyphs)
    for step in range(1, depth + 1):
        moved = cv2.warpAffine(glyphs, np.float32([[1, 0, dx * step], [0, 1, dy * step]]), glyphs.shape[::-1])
        np.maximum(layer, moved, out=layer)
    return layer


def ink_bounds(layer: np.ndarray, threshold: float = 0.05) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive ends, of the pixels above ``threshold``; the whole layer if empty."""
    rows, cols = np.nonzero(layer.max(1) > threshold)[0], np.nonzero(layer.max(0) > threshold)[0]
    if rows.size == 0:
        return 0, layer.shape[0], 0, layer.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
