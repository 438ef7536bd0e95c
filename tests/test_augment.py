"""Joint image/mask augmentation (SPEC §1.6): alignment of the warped mask, image-only stages,
fixed vs. per-sample draws, output sanity and the mask-less path."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import modules.augment as augment
from modules.augment import (GEOMETRY_OPS, MODES, DeteriorationParams, JointAugment, inverse_affine_linear,
                             motion_blur_kernel)

SEEDS = range(8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def word_and_mask(word: str = "Text", size: tuple[int, int] = (120, 40)) -> tuple[Image.Image, np.ndarray]:
    """Black ``word`` on white (RGB) and its exact mask (float32, 1 = text pixel)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"                       # no anti-aliasing: the text pixels are exactly the mask
    font = _font(int(size[1] * 0.7))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top), word, fill=255,
              font=font)
    mask = (np.asarray(canvas) > 127).astype(np.float32)
    image = Image.fromarray(np.repeat((255 * (1 - mask)).astype(np.uint8)[..., None], 3, axis=2))
    return image, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def only(stage: str, **kwargs) -> JointAugment:
    """An augmenter that always runs ``stage`` ('geometry', 'deterioration' or 'color') and nothing else."""
    p = {"geometry_p": 0.0, "deterioration_p": 0.0, "color_p": 0.0, f"{stage}_p": 1.0}
    return JointAugment(**p, **kwargs)


# ------------------------------------------------------------------------------------------------
# (a) the mask follows the image through every geometric op

@pytest.mark.parametrize("op", GEOMETRY_OPS)
def test_geometry_keeps_mask_aligned(op):
    image, mask = word_and_mask()
    augmenter = only("geometry", geometry_ops=(op,))
    changed = 0
    for seed in SEEDS:
        out_image, out_mask = augmenter(image, mask, np.random.default_rng(seed))
        assert out_mask.dtype == np.float32 and out_mask.shape == (out_image.height, out_image.width)
        dark = np.asarray(out_image.convert("L")) < 128
        text = out_mask > 0.5
        assert text.any()
        assert iou(dark, text) >= 0.9, (op, seed, iou(dark, text))
        if out_image.size != image.size or not np.array_equal(np.asarray(out_image), np.asarray(image)):
            changed += 1
        # the check has teeth: a mask shifted by 3 pixels no longer matches
        assert iou(dark, np.roll(text, 3, axis=1)) < 0.8
    assert changed >= len(SEEDS) - 1, f"{op} hardly ever changed the image"


def test_rotation_canvas_fits_rotated_image():
    image, mask = word_and_mask(size=(100, 32))
    augmenter = only("geometry", geometry_ops=("rotation",))
    for seed in SEEDS:
        out_image, _ = augmenter(image, mask, np.random.default_rng(seed))
        w, h = out_image.size
        # w' = int(h|sin|+w|cos|), h' = int(h|cos|+w|sin|): recover |cos|±|sin| and check they fit one angle
        plus, minus = (w + h) / (100 + 32), (w - h) / (100 - 32)
        assert 1 - 0.02 <= plus <= math.sqrt(2) + 0.02 and -0.02 <= minus <= 1 + 0.02
        assert plus ** 2 + minus ** 2 == pytest.approx(2.0, abs=0.1)


def test_perspective_output_stays_near_input_size():
    image, mask = word_and_mask(size=(100, 32))
    augmenter = only("geometry", geometry_ops=("perspective",))
    for seed in range(30):
        out_image, out_mask = augmenter(image, mask, np.random.default_rng(seed))
        # offsets are inward, but the box around minAreaRect of the quad may poke out a little
        assert 50 <= out_image.width <= 1.25 * 100 and 16 <= out_image.height <= 1.25 * 32
        assert out_mask.shape == (out_image.height, out_image.width)


def test_inverse_affine_linear_is_the_inverse_of_rotation_scale_shear():
    linear = inverse_affine_linear(30.0, 2.0, (0.0, 0.0))
    r = math.radians(30.0)
    np.testing.assert_allclose(linear, np.array([[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]]) / 2.0)
    for angle, scale, shear in [(10.0, 0.7, (20.0, 5.0)), (-40.0, 1.6, (-30.0, 12.0))]:
        # the rotation-shear part has determinant 1, so the inverse has determinant 1/scale²
        assert np.linalg.det(inverse_affine_linear(angle, scale, shear)) == pytest.approx(1 / scale ** 2)


def test_motion_blur_kernel():
    kernel = motion_blur_kernel(5, 0.0)
    assert kernel.shape == (5, 5)
    np.testing.assert_allclose(kernel[2], 0.2)
    assert not kernel[[0, 1, 3, 4]].any()
    np.testing.assert_allclose(motion_blur_kernel(5, 90.0)[:, 2], 0.2, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# (b) deterioration and colour jitter touch the image only

@pytest.mark.parametrize("stage", ["deterioration", "color"])
def test_image_only_stages_leave_mask_unchanged(stage):
    image, mask = word_and_mask()
    augmenter = only(stage)
    changed = 0
    for seed in SEEDS:
        out_image, out_mask = augmenter(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_mask, mask)
        assert out_image.size == image.size
        changed += not np.array_equal(np.asarray(out_image), np.asarray(image))
    assert changed >= 2


def test_deterioration_ops_in_order():
    image = np.asarray(word_and_mask()[0])
    params = DeteriorationParams(order=("rescale", "blur", "noise"), noise_var=4, blur_size=1, blur_angle=-86.0,
                                 rescale_factor=2)
    out = params.apply(image, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    identity = DeteriorationParams(order=("noise", "blur", "rescale"), noise_var=1, blur_size=1, blur_angle=0.0,
                                   rescale_factor=0)
    out = identity.apply(image, np.random.default_rng(0))
    assert np.abs(out.astype(int) - image).max() <= 6                # only N(0, 1) noise


def test_color_jitter_is_driven_by_numpy_rng_only():
    image, mask = word_and_mask()
    image = Image.fromarray(np.asarray(image) // 2 + np.array([60, 10, 90], np.uint8))   # a coloured image
    augmenter = only("color")
    torch.manual_seed(0)
    first, _ = augmenter(image, mask, np.random.default_rng(3))
    torch.manual_seed(99)
    second, _ = augmenter(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


# ------------------------------------------------------------------------------------------------
# (c) fixed vs. per-sample draws

def _record_geometry(monkeypatch) -> list[str]:
    """Make every geometric builder append its op name to the returned list."""
    seen: list[str] = []
    for name, builder in list(augment.GEOMETRY_BUILDERS.items()):
        def recording(rng, h, w, _name=name, _builder=builder):
            seen.append(_name)
            return _builder(rng, h, w)
        monkeypatch.setitem(augment.GEOMETRY_BUILDERS, name, recording)
    return seen


def test_fixed_mode_draws_type_and_deterioration_once(monkeypatch):
    augmenter = JointAugment("fixed", rng=np.random.default_rng(111), geometry_p=1.0, deterioration_p=1.0)
    params = augmenter.deterioration(np.random.default_rng(1))
    op = augmenter.geometry_op(np.random.default_rng(1))
    for seed in range(2, 12):
        assert augmenter.geometry_op(np.random.default_rng(seed)) == op
        assert augmenter.deterioration(np.random.default_rng(seed)) == params
    seen = _record_geometry(monkeypatch)
    image, mask = word_and_mask()
    sizes = {augmenter(image, mask, np.random.default_rng(seed))[0].size for seed in range(12)}
    assert set(seen) == {op} and len(seen) == 12
    assert len(sizes) > 1                    # per-call parameters (angle, offsets, ...) still vary
    # the same constructor seed gives the same draw; other seeds give other draws
    again = JointAugment("fixed", rng=np.random.default_rng(111))
    assert (again.fixed_geometry, again.fixed_deterioration) == (augmenter.fixed_geometry, augmenter.fixed_deterioration)
    draws = {JointAugment("fixed", rng=np.random.default_rng(s)).fixed_deterioration for s in range(10)}
    assert len(draws) > 1


def test_sample_mode_redraws_per_sample(monkeypatch):
    augmenter = only("geometry")
    seen = _record_geometry(monkeypatch)
    image, mask = word_and_mask()
    rng = np.random.default_rng(0)
    for _ in range(30):
        augmenter(image, mask, rng)
    assert set(seen) == set(GEOMETRY_OPS)
    params = {augmenter.deterioration(np.random.default_rng(seed)) for seed in range(10)}
    assert len(params) > 1
    assert augmenter.fixed_geometry is None and augmenter.fixed_deterioration is None


def test_invalid_arguments():
    with pytest.raises(ValueError, match="sample.*fixed"):
        JointAugment("faithful")
    assert MODES == ("sample", "fixed")
    with pytest.raises(ValueError, match="geometry_ops"):
        JointAugment(geometry_ops=("shear",))
    image, mask = word_and_mask()
    with pytest.raises(ValueError, match="mask shape"):
        JointAugment()(image, mask[:, :-1], np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------
# (d) output types and sizes; determinism

@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 1), (1, 7), (100, 32)])
def test_outputs_are_sane_even_for_tiny_images(size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = np.ones(size[::-1], np.float32)
    for op in GEOMETRY_OPS:
        augmenter = JointAugment(geometry_p=1.0, deterioration_p=1.0, color_p=1.0, geometry_ops=(op,))
        for seed in range(6):
            out_image, out_mask = augmenter(image, mask, np.random.default_rng(seed))
            assert isinstance(out_image, Image.Image) and out_image.mode == "RGB"
            assert np.asarray(out_image).dtype == np.uint8
            assert out_image.width >= 1 and out_image.height >= 1
            assert out_mask.shape == (out_image.height, out_image.width) and out_mask.dtype == np.float32
            assert np.isfinite(out_mask).all()


def test_default_probabilities_and_determinism():
    image, mask = word_and_mask()
    augmenter = JointAugment()
    assert (augmenter.geometry_p, augmenter.deterioration_p, augmenter.color_p) == (0.5, 0.25, 0.25)
    unchanged = 0
    for seed in range(40):
        a_image, a_mask = augmenter(image, mask, np.random.default_rng(seed))
        b_image, b_mask = augmenter(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.asarray(a_image), np.asarray(b_image))
        np.testing.assert_array_equal(a_mask, b_mask)
        unchanged += a_image.size == image.size and np.array_equal(np.asarray(a_image), np.asarray(image))
    assert 0 < unchanged < 40                # P(no stage) = 0.5·0.75·0.75 ≈ 0.28


def test_non_rgb_input_and_integer_mask():
    image, mask = word_and_mask()
    out_image, out_mask = only("geometry")(image.convert("L"), mask.astype(np.int32), np.random.default_rng(0))
    assert out_image.mode == "RGB" and out_mask.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# (e) no mask

def test_without_mask_returns_none_and_the_same_image():
    image, mask = word_and_mask()
    augmenter = JointAugment(geometry_p=1.0, deterioration_p=1.0, color_p=1.0)
    for seed in SEEDS:
        with_mask, _ = augmenter(image, mask, np.random.default_rng(seed))
        without, none = augmenter(image, None, np.random.default_rng(seed))
        assert none is None
        np.testing.assert_array_equal(np.asarray(with_mask), np.asarray(without))
