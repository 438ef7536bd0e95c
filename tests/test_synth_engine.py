"""The synthetic word engine (synth/engine.py): purity in (seed, index), output shapes and labels, the glyph mask
lying on the drawn glyphs through every geometric step, each corruption and decoration, caps-only faces and
config validation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import synth.engine as engine
from synth.engine import ENGINE_VERSION, EngineConfig, render_sample
from synth.fonts import FontCatalogue, discover_fonts, is_caps_only
from synth.vocabulary import VocabularyConfig

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
GEOMETRY = ("p_curve", "p_shear", "p_elastic", "p_crop_jitter")
CORRUPTIONS = ("p_down_up", "p_blur", "p_motion_blur", "p_noise", "p_tone", "p_jpeg")
DECORATIONS = ("p_border", "p_shadow", "p_extrusion", "p_underline", "p_distractor", "p_natural_background")
#: every step that adds ink other than the glyphs, changes the geometry or degrades the image, off; flat-ish
#: procedural backgrounds and a high contrast floor, so the glyph colour is easy to tell from the background
CLEAN = EngineConfig(min_contrast=120.0, p_clean=0.0,
                     **{name: 0.0 for name in GEOMETRY + CORRUPTIONS + DECORATIONS})


@pytest.fixture(scope="module")
def catalogue() -> FontCatalogue:
    return FontCatalogue(discover_fonts())


def pixels(image) -> bytes:
    return np.asarray(image).tobytes()


def mask_metrics(image, mask: np.ndarray, min_contrast: float) -> dict[str, float]:
    """How well ``mask`` marks the glyphs of ``image``, for text of one colour on a background whose luma
    differs from it by about ``min_contrast`` (higher is better, except ``spread``):

    * ``contrast``: distance of the median luma of mask pixels from that of the others, over ``min_contrast``
      (the mask is on something other than the background);
    * ``inky``: share of mask pixels closer in luma to the mask's median than to the background's (a shifted
      or dilated mask covers background);
    * ``spread``: median colour distance of mask pixels from their median colour, over the distance of the
      mean mask colour from the mean background colour (mask pixels are close in colour to each other);
    * ``complete``: share of the pixels at least as inky as the mask's median that are in the mask (glyph ink
      left out of the mask shows here). Strokes fainter than the mask's own pixels (thinner than a pixel, whose
      coverage never reaches the 0.5 mask threshold) are invisible to this check.
    """
    rgb = np.asarray(image, np.float32)
    if not 0 < mask.sum() < mask.size:
        return {"contrast": 0.0, "inky": 0.0, "spread": np.inf, "complete": 0.0}
    luma = rgb @ LUMA
    on, off = luma[mask == 1], luma[mask == 0]
    ink, ground = float(np.median(on)), float(np.median(off))
    colours = rgb[mask == 1]
    spread = float(np.median(np.linalg.norm(colours - np.median(colours, 0), axis=1)))
    separation = float(np.linalg.norm(colours.mean(0) - rgb[mask == 0].mean(0)))
    beyond = (luma - ink) * np.sign(ink - ground) >= 0
    inky = float(np.mean(np.abs(on - ink) < np.abs(on - ground)))
    return {"contrast": abs(ink - ground) / min_contrast, "inky": inky, "spread": spread / max(separation, 1e-6),
            "complete": float(mask[beyond].mean())}


#: every sample must pass the loose bounds, the mean over the samples the tight ones (a mask off by one pixel
#: fails the means; single odd samples, e.g. a word with sub-pixel strokes, only need the loose bounds)
SAMPLE_BOUNDS = {"contrast": 0.4, "inky": 0.85, "spread": 0.4, "complete": 0.85}
MEAN_BOUNDS = {"contrast": 0.7, "inky": 0.98, "spread": 0.2, "complete": 0.99}


def alignment_failures(samples: list[tuple[object, np.ndarray, str]], min_contrast: float) -> dict:
    """The samples (index, label) and means that break ``SAMPLE_BOUNDS`` / ``MEAN_BOUNDS``; empty if none."""
    def broken(metrics: dict[str, float], bounds: dict[str, float]) -> dict[str, float]:
        return {name: round(value, 3) for name, value in metrics.items()
                if (value > bounds[name] if name == "spread" else value < bounds[name])}

    all_metrics = [mask_metrics(image, mask, min_contrast) for image, mask, _ in samples]
    failures = {(index, label): bad for index, ((_, _, label), metrics) in enumerate(zip(samples, all_metrics))
                if (bad := broken(metrics, SAMPLE_BOUNDS))}
    means = {name: float(np.mean([metrics[name] for metrics in all_metrics])) for name in MEAN_BOUNDS}
    if bad_means := broken(means, MEAN_BOUNDS):
        failures["mean"] = bad_means
    return failures


def assert_masks_on_glyphs(catalogue, config: EngineConfig, seed: int, count: int = 40) -> None:
    samples = [render_sample(index, seed, catalogue, config) for index in range(count)]
    failures = alignment_failures(samples, config.min_contrast)
    assert not failures, failures


def test_engine_version_is_a_string():
    assert isinstance(ENGINE_VERSION, str) and ENGINE_VERSION


def test_render_sample_is_a_pure_function_of_seed_and_index(catalogue):
    config = EngineConfig()
    forward = [render_sample(index, 5, catalogue, config) for index in range(12)]
    backward = [render_sample(index, 5, catalogue, config) for index in reversed(range(12))][::-1]
    for (image, mask, label), (image2, mask2, label2) in zip(forward, backward):
        assert label == label2 and np.array_equal(mask, mask2) and pixels(image) == pixels(image2)
    other_seed = [render_sample(index, 6, catalogue, config) for index in range(12)]
    assert all(pixels(a[0]) != pixels(b[0]) for a, b in zip(forward, other_seed))
    assert len({label for _, _, label in forward}) >= 10
    assert len({pixels(image) for image, _, _ in forward}) == 12


def test_outputs_have_the_documented_shapes_and_labels(catalogue):
    config = EngineConfig()
    heights = set()
    for index in range(40):
        image, mask, label = render_sample(index, 11, catalogue, config)
        assert image.mode == "RGB"
        assert config.min_height <= image.height <= config.max_height
        assert mask.dtype == np.uint8 and mask.shape == (image.height, image.width)
        assert set(np.unique(mask)) == {0, 1}, (index, label)
        assert label and not label.isspace() and len(label) <= config.vocabulary.max_length + 1, label
        heights.add(image.height)
    assert len(heights) > 10


def test_height_and_label_length_follow_the_config(catalogue):
    config = EngineConfig(min_height=20, max_height=24, vocabulary=VocabularyConfig(min_length=2, max_length=6))
    for index in range(30):
        image, mask, label = render_sample(index, 2, catalogue, config)
        assert 20 <= image.height <= 24 and mask.shape == (image.height, image.width)
        assert 1 <= len(label) <= 7, label


def test_mask_check_rejects_misaligned_masks(catalogue):
    """The alignment check used below can fail: masks moved by one pixel, or shuffled, do not pass it."""
    samples = [render_sample(index, 3, catalogue, CLEAN) for index in range(40)]
    assert not alignment_failures(samples, CLEAN.min_contrast)
    for axis in (0, 1):
        moved = [(image, np.roll(mask, 1, axis=axis), label) for image, mask, label in samples]
        assert "mean" in alignment_failures(moved, CLEAN.min_contrast), axis
    rng = np.random.default_rng(0)
    shuffled = [(image, rng.permutation(mask.ravel()).reshape(mask.shape), label) for image, mask, label in samples]
    assert len(alignment_failures(shuffled, CLEAN.min_contrast)) == len(samples) + 1


def test_mask_lies_on_the_glyphs_without_corruptions(catalogue):
    assert_masks_on_glyphs(catalogue, CLEAN, seed=3)


@pytest.mark.parametrize("step", GEOMETRY)
def test_mask_follows_each_geometric_step(catalogue, step):
    assert_masks_on_glyphs(catalogue, dataclasses.replace(CLEAN, **{step: 1.0}), seed=4)


@pytest.mark.parametrize("step", CORRUPTIONS + DECORATIONS)
def test_each_corruption_and_decoration_is_deterministic_and_changes_the_image(catalogue, step):
    """Each step alone: the same sample twice is identical, the label is drawn before it; corruptions come
    last, so the same sample without one also has the same size and mask."""
    config = dataclasses.replace(CLEAN, **{step: 1.0})
    changed = 0
    for index in range(5):
        image, mask, label = render_sample(index, 8, catalogue, config)
        again = render_sample(index, 8, catalogue, config)
        assert pixels(image) == pixels(again[0]) and np.array_equal(mask, again[1]) and label == again[2]
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) == {0, 1}
        plain, plain_mask, plain_label = render_sample(index, 8, catalogue, CLEAN)
        assert label == plain_label
        if step in CORRUPTIONS:
            assert image.size == plain.size and np.array_equal(mask, plain_mask)
        changed += image.size != plain.size or pixels(image) != pixels(plain)
    assert changed >= 3, step


def test_clean_fraction_turns_every_optional_step_off(catalogue):
    noisy = dataclasses.replace(CLEAN, p_clean=1.0, **{step: 1.0 for step in CORRUPTIONS + DECORATIONS + GEOMETRY})
    optional = [name for name in vars(noisy) if name.startswith("p_") and name not in ("p_clean", "p_tracking")]
    assert noisy.clean() == dataclasses.replace(noisy, plain=True, **{name: 0.0 for name in optional})
    for index in range(3):
        assert pixels(render_sample(index, 2, catalogue, noisy)[0]) == pixels(
            render_sample(index, 2, catalogue, noisy.clean())[0])


@pytest.mark.parametrize("name", [name for name in vars(EngineConfig()) if name.startswith("p_")])
def test_config_rejects_probabilities_outside_zero_one(name):
    for value in (-0.01, 1.01):
        with pytest.raises(ValueError, match=name):
            EngineConfig(**{name: value})
    EngineConfig(**{name: 0.0})
    EngineConfig(**{name: 1.0})


@pytest.mark.parametrize("fields", [dict(min_height=7, max_height=32), dict(min_height=40, max_height=32),
                                    dict(min_contrast=-1.0), dict(min_contrast=201.0)])
def test_config_rejects_bad_sizes_and_contrast(fields):
    with pytest.raises(ValueError):
        EngineConfig(**fields)


def test_caps_only_faces_give_upper_case_labels(catalogue):
    caps = [face for face in catalogue if is_caps_only(face)]
    if not caps:
        pytest.skip("no caps-only face installed (requirements-fonts.txt)")
    only_caps = FontCatalogue(caps[:1])
    config = EngineConfig()
    lowercase_seen = 0
    for index in range(30):
        image, mask, label = render_sample(index, 12, only_caps, config)
        full_label = render_sample(index, 12, catalogue, config)[2]
        assert label == full_label.upper(), (label, full_label)
        assert mask.shape == (image.height, image.width)
        lowercase_seen += full_label != full_label.upper()
    assert lowercase_seen >= 5  # the check above was not vacuous
    regular = next(face for face in catalogue if face.source == "matplotlib" and not is_caps_only(face))
    labels = [render_sample(index, 12, FontCatalogue([regular]), config)[2] for index in range(30)]
    assert any(label != label.upper() for label in labels)


def test_a_label_no_face_covers_raises(catalogue, monkeypatch):
    monkeypatch.setattr(engine, "sample_label", lambda rng, config=None: "ab\u0378")
    with pytest.raises(ValueError, match="no font covers"):
        render_sample(0, 0, catalogue, EngineConfig())
