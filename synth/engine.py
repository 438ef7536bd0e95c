"""One synthetic word crop from (seed, index): the label, the font, the ink layers, the geometry, the background
and the corruptions, every step with its probability and range in ``EngineConfig``.

The order follows what makes synthetic text transfer to real photos (MJSynth, SynthTIGER): many fonts with
per-word typesetting variation, decorations (border, shadow, extrusion, underline), colour pairs with a
contrast floor, curved baselines, projective and elastic distortion, natural-image or procedural backgrounds,
distractor text at the crop edges, crop jitter, then resampling, blur, noise and JPEG. Every geometric step
maps the glyph layer with the image, so the returned mask is the exact glyph foreground (SIGA's L_seg input).
Sample ``index`` of ``seed`` draws everything from ``np.random.default_rng([seed, index])``: a pure function
of its arguments, identical whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from synth import backgrounds, degrade, geometry
from synth.degrade import LUMA
from synth.fonts import FontCatalogue, FontFace, is_caps_only, load_font
from synth.text_layer import (GlyphPlacement, InkLayers, border_layer, draw_glyphs, extrusion_layer, ink_bounds,
                              shadow_layer, underline_layer)
from synth.vocabulary import VocabularyConfig, sample_label

#: bumped whenever a seed's output changes, so stored demo data built by an older engine is rebuilt
ENGINE_VERSION = "6"


@dataclass(frozen=True)
class EngineConfig:
    """Every rendering and corruption step: ``p_*`` is its probability, the other fields its range. Sizes in
    ``*_fraction`` fields are fractions of the font size (typesetting) or of the crop (geometry)."""

    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)
    p_clean: float = 0.3  # a plain sample: flat procedural background, no decoration, distortion or corruption
    clean_font_sources: tuple[str, ...] = ("matplotlib",)  # a plain sample's faces (empty: every face)
    plain: bool = False  # set by clean(): this sample is a plain one
    min_height: int = 32  # output crop height, uniform in [min_height, max_height]
    max_height: int = 64
    font_scale: tuple[float, float] = (0.6, 0.9)  # font size / canvas height before geometry
    weight_range: tuple[float, float] = (300.0, 800.0)  # wght of variable fonts
    # typesetting
    p_tracking: float = 0.5
    tracking_fraction: tuple[float, float] = (-0.05, 0.3)  # the same extra space between all characters
    kerning_jitter_fraction: float = 0.03  # per-character std of extra space (when p_tracking fires)
    p_baseline_jitter: float = 0.2
    baseline_jitter_fraction: float = 0.04  # per-character std of the baseline shift
    p_stroke_bold: float = 0.15  # synthetic bold: a stroke around every glyph
    max_stroke_fraction: float = 0.06
    p_underline: float = 0.05
    # decorations
    p_border: float = 0.1
    border_fraction: tuple[float, float] = (0.03, 0.1)
    p_shadow: float = 0.12
    shadow_offset_fraction: float = 0.1
    shadow_blur_fraction: float = 0.06
    p_extrusion: float = 0.05
    extrusion_depth_fraction: tuple[float, float] = (0.04, 0.12)
    # colours and background
    min_contrast: float = 60.0  # luma distance between the text colour and the background's mean
    p_natural_background: float = 0.5  # a crop of a natural image instead of a procedural texture
    p_distractor: float = 0.15  # part of another line of text cut by the top or bottom edge
    padding_fraction: tuple[float, float] = (0.02, 0.35)  # per side, of the ink height
    # geometry
    p_curve: float = 0.12
    max_bend: float = 0.08  # of the crop width
    max_rotation: float = 6.0  # degrees
    p_shear: float = 0.25
    max_shear: float = 0.35  # x += shear * y (slanted, pseudo-italic)
    max_perspective: float = 0.06
    p_elastic: float = 0.12
    elastic_alpha_fraction: float = 0.04  # displacement amplitude, of the ink height
    elastic_sigma_fraction: float = 0.15  # smoothness of the field, of the ink height
    p_crop_jitter: float = 0.15  # cut into the word on one side
    max_crop_fraction: float = 0.06  # of the crop height
    aspect_range: tuple[float, float] = (0.75, 1.3)  # horizontal stretch at the final resize
    # corruptions
    p_down_up: float = 0.25
    min_down_scale: float = 0.35
    p_blur: float = 0.25
    max_blur: float = 1.2
    p_motion_blur: float = 0.08
    max_motion: int = 5
    p_noise: float = 0.3
    max_noise: float = 10.0
    p_tone: float = 0.25  # a gamma curve and a contrast stretch/flattening
    max_log_gamma: float = 0.4
    max_contrast_delta: float = 0.3
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (25, 90)

    def clean(self) -> "EngineConfig":
        """This config with every optional step off and, for the glyphs, only the faces of
        ``clean_font_sources`` (rotation, perspective and tracking stay): the easy samples on which a short run
        learns its attention alignment before the varied ones teach it to read real photos."""
        kept = {"p_clean", "p_tracking"}
        return replace(self, plain=True,
                       **{name: 0.0 for name in vars(self) if name.startswith("p_") and name not in kept})

    def __post_init__(self) -> None:
        bad = [name for name, value in vars(self).items() if name.startswith("p_") and not 0.0 <= value <= 1.0]
        if bad:
            raise ValueError(f"probabilities must be in [0, 1]: {', '.join(bad)}")
        if not 8 <= self.min_height <= self.max_height:
            raise ValueError(f"need 8 <= min_height <= max_height, got {self.min_height}, {self.max_height}")
        if not 0.0 <= self.min_contrast <= 200.0:
            raise ValueError(f"min_contrast must be in [0, 200], got {self.min_contrast}")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _placement(rng: np.random.Generator, length: int, size: int, config: EngineConfig) -> GlyphPlacement:
    extra = np.zeros(length)
    if rng.random() < config.p_tracking:
        extra += _uniform(rng, config.tracking_fraction) * size
        extra += rng.normal(0.0, config.kerning_jitter_fraction * size, length)
    shift = np.zeros(length)
    if rng.random() < config.p_baseline_jitter:
        shift = rng.normal(0.0, config.baseline_jitter_fraction * size, length)
    stroke = 0
    if rng.random() < config.p_stroke_bold:
        stroke = int(rng.integers(1, max(1, round(config.max_stroke_fraction * size)) + 1))
    return GlyphPlacement(extra, shift, stroke)


@lru_cache(maxsize=256)
def _by_family(faces: tuple[FontFace, ...]) -> tuple[tuple[FontFace, ...], ...]:
    families: dict[str, list[FontFace]] = {}
    for face in faces:
        families.setdefault(face.family, []).append(face)
    return tuple(tuple(members) for _, members in sorted(families.items()))


def _pick_face(rng: np.random.Generator, faces: tuple[FontFace, ...]) -> FontFace:
    """A family uniformly, then one of its faces: a family shipped as 18 static files is not drawn 18 times
    as often as one shipped as a single variable font."""
    families = _by_family(faces)
    members = families[int(rng.integers(len(families)))]
    return members[int(rng.integers(len(members)))]


def _word_ink(rng: np.random.Generator, label: str, catalogue: FontCatalogue, size: int, config: EngineConfig
              ) -> tuple[InkLayers, str]:
    """The glyph layer of ``label`` in a random face that covers it, with its decorations, and the label as
    drawn (in capitals when the face has no lowercase)."""
    faces = catalogue.covering(label)
    if not faces:
        raise ValueError(f"no font covers every character of {label!r}")
    if config.plain and config.clean_font_sources:
        faces = tuple(face for face in faces if face.source in config.clean_font_sources) or faces
    face = _pick_face(rng, faces)
    if is_caps_only(face):
        label = label.upper()
    font = load_font(face, size, _uniform(rng, config.weight_range))
    margin = int(size * 0.5)
    glyphs, (baseline, start, end) = draw_glyphs(label, font, _placement(rng, len(label), size, config), margin)
    ink = InkLayers(glyphs)
    if rng.random() < config.p_underline:
        thickness = max(1, round(size * rng.uniform(0.04, 0.09)))
        ink.underline = underline_layer(glyphs.shape, baseline, start, end, thickness, round(size * 0.12))
    if rng.random() < config.p_border:
        ink.border = border_layer(glyphs, max(1, round(_uniform(rng, config.border_fraction) * size)))
    if rng.random() < config.p_shadow:
        dx, dy = (rng.uniform(-1, 1, 2) * config.shadow_offset_fraction * size).round().astype(int)
        ink.shadow = shadow_layer(glyphs, int(dx), int(dy), rng.uniform(0, config.shadow_blur_fraction) * size)
    elif rng.random() < config.p_extrusion:
        angle = rng.uniform(0, 2 * np.pi)
        depth = max(2, round(_uniform(rng, config.extrusion_depth_fraction) * size))
        ink.extrusion = extrusion_layer(glyphs, float(np.cos(angle)), float(np.sin(angle)), depth)
    return ink, label


def _pad(rng: np.random.Generator, ink: InkLayers, config: EngineConfig) -> tuple[InkLayers, tuple[int, int]]:
    """Crop every layer to the union of the ink plus random padding per side; returns (top, bottom) padding."""
    union = np.maximum.reduce([layer for _, layer in ink.items()])
    top, bottom, left, right = ink_bounds(union)
    height = bottom - top
    pads = (rng.uniform(*config.padding_fraction, 4) * height).astype(int) + 1
    padded = [np.pad(layer[top:bottom, left:right], ((pads[0], pads[1]), (pads[2], pads[3])))
              for _, layer in ink.items()]
    return ink.replace(padded), (int(pads[0]), int(pads[1]))


def _distractor(rng: np.random.Generator, shape: tuple[int, int], room: tuple[int, int], size: int,
                catalogue: FontCatalogue, config: EngineConfig) -> np.ndarray | None:
    """Another line of text showing only its lower (top edge) or upper (bottom edge) part, inside the padding
    so it never covers the word; ``None`` when the padding is too thin."""
    at_top = bool(rng.random() < 0.5)
    visible = room[0] if at_top else room[1]
    if visible < 3:
        return None
    text = " ".join(sample_label(rng, config.vocabulary) for _ in range(3))
    font = load_font(_pick_face(rng, catalogue.covering(text)), size, None)
    glyphs, _ = draw_glyphs(text, font, GlyphPlacement(np.zeros(len(text)), np.zeros(len(text))), 0)
    visible = min(visible - 1, glyphs.shape[0] - 1, int(glyphs.shape[0] * rng.uniform(0.2, 0.6)))
    piece = glyphs[-visible:] if at_top else glyphs[:visible]
    layer = np.zeros(shape, np.float32)
    x0 = int(rng.integers(-piece.shape[1] // 2, max(shape[1] - piece.shape[1] // 2, 1)))
    src = piece[:, max(-x0, 0):max(min(piece.shape[1], shape[1] - x0), 0)]
    rows = slice(0, visible) if at_top else slice(shape[0] - visible, shape[0])
    layer[rows, max(x0, 0):max(x0, 0) + src.shape[1]] = src
    return layer


def _geometry(rng: np.random.Generator, layers: list[np.ndarray], config: EngineConfig) -> list[np.ndarray]:
    """Curved baseline, rotation/shear/perspective and elastic distortion, each one mapping for all layers."""
    height, width = layers[0].shape
    if rng.random() < config.p_curve:
        dy, _ = geometry.curve_offsets(rng, np.arange(width, dtype=np.float32), width, config.max_bend)
        pad = int(np.ceil(np.abs(dy).max())) + 1
        layers = [np.pad(layer, ((pad, pad), (0, 0))) for layer in layers]
        map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height + 2 * pad, dtype=np.float32))
        layers = geometry.remap_layers(layers, map_x, map_y - dy[None, :].astype(np.float32),
                                       [cv2.BORDER_CONSTANT] * len(layers))
        height += 2 * pad
    shear = config.max_shear if rng.random() < config.p_shear else 0.0
    matrix = geometry.random_homography(rng, height, width, config.max_rotation, shear, config.max_perspective)
    size = geometry.output_size(matrix, height, width)
    layers = geometry.warp_layers(layers, matrix, size, [cv2.BORDER_CONSTANT] * len(layers))
    if rng.random() < config.p_elastic:
        top, bottom, _, _ = ink_bounds(layers[0])
        text_height = bottom - top
        map_x, map_y = geometry.elastic_field(rng, *layers[0].shape, config.elastic_alpha_fraction * text_height,
                                              max(config.elastic_sigma_fraction * text_height, 1.0))
        layers = geometry.remap_layers(layers, map_x, map_y, [cv2.BORDER_CONSTANT] * len(layers))
    return layers


def _text_colour(rng: np.random.Generator, background_luma: float, min_contrast: float) -> np.ndarray:
    """An RGB colour whose luma is at least ``min_contrast`` from the background's, desaturated a random
    amount (most real text is far from fully saturated)."""
    for _ in range(100):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        grey = float(colour @ LUMA)
        colour = grey + (colour - grey) * rng.uniform(0, 1)
        if abs(float(colour @ LUMA) - background_luma) >= min_contrast:
            return colour
    return np.full(3, 0.0 if background_luma > 127.5 else 255.0, np.float32)


def _compose(rng: np.random.Generator, ink: dict[str, np.ndarray], config: EngineConfig) -> np.ndarray:
    """Background, then shadow/extrusion, border, distractor, underline and glyphs, each in its colour."""
    height, width = ink["glyphs"].shape
    seed_colour = rng.uniform(0, 255, 3).astype(np.float32)
    image, luma = backgrounds.background(rng, height, width, seed_colour, config.p_natural_background)
    text = _text_colour(rng, luma, config.min_contrast)
    colours = {"shadow": text * rng.uniform(0, 0.4), "extrusion": text * rng.uniform(0.3, 0.7),
               "border": _text_colour(rng, float(text @ LUMA), config.min_contrast),
               "distractor": _text_colour(rng, luma, config.min_contrast * 0.5),
               "underline": text, "glyphs": text}
    for name in ("shadow", "extrusion", "border", "distractor", "underline", "glyphs"):
        if name in ink:
            alpha = ink[name][..., None]
            image = image * (1.0 - alpha) + colours[name] * alpha
    return image.astype(np.float32)


def _crop_jitter(rng: np.random.Generator, image: np.ndarray, glyphs: np.ndarray, config: EngineConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() >= config.p_crop_jitter:
        return image, glyphs
    top, bottom, left, right = ink_bounds(glyphs, 0.5)
    cut = int(rng.uniform(0, config.max_crop_fraction) * image.shape[0]) + 1
    side = int(rng.integers(4))
    rows, cols = slice(None), slice(None)
    if side == 0:
        rows = slice(min(top + cut, bottom - 1), None)
    elif side == 1:
        rows = slice(None, max(bottom - cut, top + 1))
    elif side == 2:
        cols = slice(min(left + cut, right - 1), None)
    else:
        cols = slice(None, max(right - cut, left + 1))
    return image[rows, cols], glyphs[rows, cols]


def _corrupt(rng: np.random.Generator, image: np.ndarray, config: EngineConfig) -> np.ndarray:
    if rng.random() < config.p_down_up:
        image = degrade.down_up_resample(rng, image, config.min_down_scale)
    if rng.random() < config.p_blur:
        image = degrade.gaussian_blur(rng, image, config.max_blur)
    if rng.random() < config.p_motion_blur:
        image = degrade.motion_blur(rng, image, config.max_motion)
    if rng.random() < config.p_tone:
        image = degrade.contrast_jitter(rng, degrade.gamma(rng, image, config.max_log_gamma), config.max_contrast_delta)
    if rng.random() < config.p_noise:
        image = degrade.gaussian_noise(rng, image, config.max_noise)
    if rng.random() < config.p_jpeg:
        image = degrade.jpeg(rng, image, *config.jpeg_quality)
    return image


def render_sample(index: int, seed: int, catalogue: FontCatalogue, config: EngineConfig = EngineConfig()
                  ) -> tuple[Image.Image, np.ndarray, str]:
    """The ``index``-th sample of stream ``seed``: (RGB crop, uint8 {0, 1} glyph mask of the same height and
    width, label). A pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    if rng.random() < config.p_clean:
        config = config.clean()
    label = sample_label(rng, config.vocabulary)
    out_height = int(rng.integers(config.min_height, config.max_height + 1))
    size = max(10, round(out_height * _uniform(rng, config.font_scale)))
    ink, label = _word_ink(rng, label, catalogue, size, config)
    ink, room = _pad(rng, ink, config)
    layers = dict(ink.items())
    if rng.random() < config.p_distractor:
        distractor = _distractor(rng, ink.glyphs.shape, room, size, catalogue, config)
        if distractor is not None:
            layers["distractor"] = distractor
    warped = _geometry(rng, list(layers.values()), config)
    layers = dict(zip(layers, warped))
    image, glyphs = _crop_jitter(rng, _compose(rng, layers, config), layers["glyphs"], config)
    scale = out_height / image.shape[0]
    out_size = (max(1, round(image.shape[1] * scale * _uniform(rng, config.aspect_range))), out_height)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, out_size, interpolation=interpolation)
    glyphs = cv2.resize(glyphs, out_size, interpolation=interpolation)
    image = np.clip(np.rint(_corrupt(rng, image, config)), 0, 255).astype(np.uint8)
    # half the glyph coverage's peak (0.5 for any normal stroke): a hairline or heavily shrunk glyph whose
    # coverage never reaches 0.5 keeps its ridge instead of an empty mask
    mask = glyphs > 0.5 * min(float(glyphs.max()), 1.0)
    return Image.fromarray(image), mask.astype(np.uint8), label
