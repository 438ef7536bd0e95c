"""Mask-aware RandAugment of SIGA_T (SPEC_SIGA_T §1.3): every op at every magnitude, image/mask alignment of
the geometric ops, clean vs faithful quirks (T-10, T-11), determinism from the caller's generator, group
sampling (T-8), ops built once (T-13) and the magnitude tables."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

import modules.rand_augment as rand_augment
from conftest import word_font
from modules.rand_augment import GEOMETRIC_OPS, GROUPS, TABLES, RandAugment

ALL_OPS = [name for ops in GROUPS.values() for name in ops]
SIZE = (128, 32)  # (W, H)


def _draw_word(word: str, fill: int) -> Image.Image:
    """``word`` drawn without anti-aliasing in value ``fill`` on a 0 "L" canvas of SIZE."""
    canvas = Image.new("L", SIZE, 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"
    font = word_font(24)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((SIZE[0] - (right - left)) / 2 - left, (SIZE[1] - (bottom - top)) / 2 - top), word, fill=fill,
              font=font)
    return canvas


def text_image() -> tuple[Image.Image, np.ndarray]:
    """Dark text on a coloured horizontal gradient (values 41..255, so every photometric op has something to
    change) and its int32 {0, 1} mask."""
    mask = (np.asarray(_draw_word("Shadow", 255)) > 0).astype(np.int32)
    ramp = np.linspace(41, 255, SIZE[0])[None, :, None] * np.array([1.0, 0.8, 0.6])
    background = np.broadcast_to(ramp, (SIZE[1], SIZE[0], 3))
    pixels = np.where(mask[..., None] > 0, np.array([20.0, 45.0, 90.0]), background)
    return Image.fromarray(pixels.round().astype(np.uint8)), mask


def blob_image() -> tuple[Image.Image, np.ndarray]:
    """White text-shaped blobs (bold strokes) on black and mask = image > 127 (int32)."""
    grey = cv2.dilate(np.asarray(_draw_word("AUGMENT", 255)), np.ones((3, 3), np.uint8))
    return Image.fromarray(grey).convert("RGB"), (grey > 127).astype(np.int32)


def iou(image: Image.Image, mask: np.ndarray) -> float:
    text, masked = np.asarray(image.convert("L")) > 127, mask > 0.5
    return float((text & masked).sum() / max((text | masked).sum(), 1))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --------------------------------------------------------------------------------------------------
# every op


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("faithful", [False, True])
def test_every_op_keeps_size_mode_dtype_and_changes_the_image(name, faithful):
    aug = RandAugment(faithful=faithful)
    image, mask = text_image()
    before, mask_before = image.copy(), mask.copy()
    for mag in range(3):
        for kind_of_mask in (mask, mask.astype(np.float32), None):
            out, out_mask = aug.ops[name](image, kind_of_mask, mag, np.random.default_rng(mag))
            assert out.size == SIZE and out.mode == "RGB"
            assert not np.array_equal(pixels(out), pixels(image)), f"{name} mag {mag} left the image unchanged"
            if kind_of_mask is None:
                assert out_mask is None
                continue
            assert out_mask.shape == kind_of_mask.shape and out_mask.dtype == kind_of_mask.dtype
            if name not in GEOMETRIC_OPS:
                assert np.array_equal(out_mask, kind_of_mask), f"photometric {name} changed the mask"
    assert np.array_equal(pixels(image), pixels(before)) and np.array_equal(mask, mask_before), "input mutated"


@pytest.mark.parametrize("size", [(100, 20), (300, 64), (40, 8)])
def test_every_op_handles_other_image_sizes(size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = np.zeros((size[1], size[0]), np.int32)
    mask[2:-2, 2:-2] = 1
    aug = RandAugment()
    for name in ALL_OPS:
        out, out_mask = aug.ops[name](image, mask, 2, np.random.default_rng(1))
        assert out.size == size and out.mode == "RGB" and out_mask.shape == mask.shape, name


def test_the_ops_are_the_36_of_the_spec_built_once(monkeypatch):
    aug = RandAugment()
    assert len(ALL_OPS) == len(set(ALL_OPS)) == 36 and set(aug.ops) == set(ALL_OPS)
    assert [len(GROUPS[g]) for g in ("process", "camera", "noise", "blur", "weather", "pattern", "warp",
                                     "geometry")] == [7, 4, 4, 5, 5, 5, 3, 3]
    assert GEOMETRIC_OPS == {"Pixelate", "Curve", "Distort", "Stretch", "Rotate", "Perspective", "Shrink"}

    def rebuild(*args, **kwargs):
        raise AssertionError("op objects rebuilt during a call (T-13)")
    monkeypatch.setattr(rand_augment, "_op_functions", rebuild)
    image, mask = text_image()
    for seed in range(10):
        aug(image, mask, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------------
# image/mask alignment and clean vs faithful


@pytest.mark.parametrize("name", sorted(GEOMETRIC_OPS))
def test_clean_geometric_ops_keep_image_and_mask_aligned_and_binary(name):
    aug = RandAugment()
    image, mask = blob_image()
    for mag in range(3):
        for seed in range(4):
            out, out_mask = aug.ops[name](image, mask, mag, np.random.default_rng(seed))
            assert iou(out, out_mask) > 0.8, f"{name} mag {mag} seed {seed}: IoU {iou(out, out_mask):.3f}"
            assert set(np.unique(out_mask)) <= {0, 1} and out_mask.dtype == np.int32
            soft_out, soft_mask = aug.ops[name](image, mask.astype(np.float32), mag, np.random.default_rng(seed))
            assert soft_mask.dtype == np.float32 and set(np.unique(soft_mask)) <= {0.0, 1.0}
            assert np.array_equal(soft_mask, out_mask) and np.array_equal(pixels(soft_out), pixels(out))


def test_faithful_masks_are_interpolated_then_rounded():
    """T-11: the official mask follows the image's bilinear/bicubic interpolation as uint8 (rounded); a soft
    float mask therefore gets intermediate values, an int mask stays {0, 1}."""
    image, mask = blob_image()
    out, out_mask = RandAugment(faithful=True).ops["Rotate"](image, mask, 2, np.random.default_rng(0))
    assert out_mask.dtype == np.int32 and set(np.unique(out_mask)) <= {0, 1} and iou(out, out_mask) > 0.8
    _, soft = RandAugment(faithful=True).ops["Rotate"](image, mask.astype(np.float32), 2, np.random.default_rng(0))
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    assert ((soft > 0.01) & (soft < 0.99)).any()
    _, clean = RandAugment().ops["Rotate"](image, mask.astype(np.float32), 2, np.random.default_rng(0))
    assert set(np.unique(clean)) <= {0.0, 1.0}


def test_shrink_translation_is_shared_in_clean_mode_but_not_in_faithful_mode():
    """T-10: the official mask translation is drawn independently (always in x) → misalignment."""
    image, mask = blob_image()
    clean, faithful = RandAugment(), RandAugment(faithful=True)
    ious = {"clean": [], "faithful": []}
    for seed in range(12):
        for key, aug in (("clean", clean), ("faithful", faithful)):
            out, out_mask = aug.ops["Shrink"](image, mask, 1, np.random.default_rng(seed))
            ious[key].append(iou(out, out_mask))
    assert min(ious["clean"]) > 0.85
    assert np.mean(ious["faithful"]) < np.mean(ious["clean"]) - 0.2
    # the image is the same in both modes: only the mask's translation differs
    out_clean, _ = clean.ops["Shrink"](image, mask, 1, np.random.default_rng(3))
    out_faithful, _ = faithful.ops["Shrink"](image, mask, 1, np.random.default_rng(3))
    assert np.array_equal(pixels(out_clean), pixels(out_faithful))


def test_gaussian_blur_sigma_clean_vs_faithful():
    """T-11: clean mag 2 uses σ = 2 on a 9×9 kernel; the official draws σ from the table at mag 2."""
    image, _ = text_image()
    expected = {s: cv2.GaussianBlur(np.asarray(image), (9, 9), s) for s in TABLES["GaussianBlur"]}
    clean, faithful = RandAugment(), RandAugment(faithful=True)
    seen = set()
    for seed in range(12):
        out, _ = clean.ops["GaussianBlur"](image, None, 2, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(out), expected[2])
        out, _ = faithful.ops["GaussianBlur"](image, None, 2, np.random.default_rng(seed))
        seen |= {s for s, e in expected.items() if np.array_equal(np.asarray(out), e)}
    assert seen == {0.5, 1, 2}
    for mag, sigma in enumerate(TABLES["GaussianBlur"][:2]):
        out, _ = faithful.ops["GaussianBlur"](image, None, mag, np.random.default_rng(0))
        assert np.array_equal(np.asarray(out), expected[sigma])


@pytest.mark.parametrize("mag", range(3))
def test_frost_faithful_squares_the_coefficients(mag):
    image, _ = text_image()
    clean, _ = RandAugment().ops["Frost"](image, None, mag, np.random.default_rng(5))
    faithful, _ = RandAugment(faithful=True).ops["Frost"](image, None, mag, np.random.default_rng(5))
    c0, c1 = TABLES["Frost"][mag]
    assert pixels(faithful).mean() < pixels(clean).mean()
    # the same frost texture: clean − faithful = (c0 − c0²)·img + (c1 − c1²)·frost, so the image part is known
    texture_clean = (pixels(clean) - c0 * pixels(image)) / c1
    texture_faithful = (pixels(faithful) - c0 ** 2 * pixels(image)) / c1 ** 2
    unclipped = (pixels(clean) < 255) & (pixels(faithful) < 255)
    assert np.abs(texture_clean - texture_faithful)[unclipped].max() < 1 / c1 ** 2 + 1 / c1 + 1e-6


# --------------------------------------------------------------------------------------------------
# sampling and determinism


def test_sample_ops_draws_distinct_groups_in_random_order():
    firsts, ops_seen, groups_seen = set(), set(), set()
    for num_groups in (1, 3, 8):
        aug = RandAugment(num_groups=num_groups)
        for seed in range(200):
            sampled = aug.sample_ops(np.random.default_rng(seed))
            groups = [group for group, _, _ in sampled]
            assert len(groups) == len(set(groups)) == num_groups
            assert all(name in GROUPS[group] and mag in (0, 1, 2) for group, name, mag in sampled)
            firsts.add(groups[0])
            ops_seen |= {name for _, name, _ in sampled}
            groups_seen |= set(groups)
    assert firsts == set(GROUPS) and ops_seen == set(ALL_OPS) and groups_seen == set(GROUPS)
    fixed = RandAugment(magnitude=1)
    assert {mag for seed in range(20) for _, _, mag in fixed.sample_ops(np.random.default_rng(seed))} == {1}


def test_call_applies_exactly_the_sampled_ops():
    aug = RandAugment(intact_prob=0.0)
    image, mask = text_image()
    for seed in range(6):
        out, out_mask = aug(image, mask, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        rng.uniform()  # the intact coin
        expected, expected_mask = image, mask
        for _, name, mag in aug.sample_ops(rng):
            expected, expected_mask = aug.ops[name](expected, expected_mask, mag, rng)
        assert np.array_equal(pixels(out), pixels(expected)) and np.array_equal(out_mask, expected_mask)


def test_same_seed_same_output_and_no_global_rng():
    image, mask = text_image()
    for faithful in (False, True):
        aug = RandAugment(intact_prob=0.0, faithful=faithful)
        outputs = []
        for seed in range(8):
            np.random.seed(seed + 100)
            random.seed(seed + 100)
            state, py_state = np.random.get_state(), random.getstate()
            first = aug(image, mask, np.random.default_rng(seed))
            assert random.getstate() == py_state
            assert all(np.array_equal(a, b) for a, b in zip(state[1:], np.random.get_state()[1:]))
            np.random.seed(seed + 999)
            random.seed(seed + 999)
            second = aug(image, mask, np.random.default_rng(seed))
            assert np.array_equal(pixels(first[0]), pixels(second[0])) and np.array_equal(first[1], second[1])
            outputs.append(pixels(first[0]).tobytes())
        assert len(set(outputs)) == len(outputs), "different seeds should give different outputs"


def test_intact_probability():
    image, mask = text_image()
    kept = RandAugment(intact_prob=1.0)
    for seed in range(5):
        out, out_mask = kept(image, mask, np.random.default_rng(seed))
        assert out is image and out_mask is mask
    never = RandAugment(intact_prob=0.0)
    assert all(never(image, None, np.random.default_rng(seed))[0] is not image for seed in range(5))
    half = RandAugment(num_groups=1)
    intact = sum(half(image, None, np.random.default_rng(seed))[0] is image for seed in range(100))
    assert 30 <= intact <= 70


@pytest.mark.parametrize("kwargs", [{"num_groups": 0}, {"num_groups": 9}, {"intact_prob": 1.5}, {"magnitude": 3}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        RandAugment(**kwargs)


# --------------------------------------------------------------------------------------------------
# magnitude tables and building blocks


def test_magnitude_tables_match_the_spec():
    assert TABLES["Rotate"] == (10, 20, 30)
    assert TABLES["Perspective"] == (0.1, 0.2, 0.3)
    assert TABLES["GaussianNoise"] == (0.08, 0.10, 0.12)
    assert TABLES["Posterize"] == (1, 3, 6) and TABLES["Solarize"] == (64, 128, 192)
    assert TABLES["Color"] == (0.1, 0.7, 1.3) and TABLES["GlassBlur"] == (0.7, 0.75, 0.8)
    assert TABLES["Frost"] == ((1, 0.4), (0.8, 0.6), (0.7, 0.7)) and TABLES["Shrink"] == (0.2, 0.3, 0.4)
    assert TABLES["MotionBlur"] == ((10, 3), (12, 4), (14, 5)) and TABLES["Rain"] == (50, 70, 90)


@pytest.mark.parametrize("mag", range(3))
def test_gaussian_noise_sigma_follows_the_table(mag):
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    out, _ = RandAugment().ops["GaussianNoise"](grey, None, mag, np.random.default_rng(mag))
    sigma = (pixels(out) - 128).std() / 255
    low = TABLES["GaussianNoise"][mag]
    assert low - 0.003 < sigma < low + 0.03 + 0.003


@pytest.mark.parametrize("mag", range(3))
def test_rotate_angle_follows_the_table(mag):
    """A horizontal bar, rotated with its mask: the mask's principal axis angle is within [b − 10, b]."""
    bar = np.zeros((SIZE[1], SIZE[0]), np.int32)
    bar[14:18, 20:108] = 1
    image = Image.fromarray((bar * 255).astype(np.uint8)).convert("RGB")
    for seed in range(4):
        _, out_mask = RandAugment().ops["Rotate"](image, bar, mag, np.random.default_rng(seed))
        ys, xs = np.nonzero(out_mask)  # undo the anisotropic 224² → 128×32 squeeze before measuring
        xs, ys = xs * 224 / SIZE[0], ys * 224 / SIZE[1]
        angle = abs(np.degrees(0.5 * np.arctan2(2 * np.cov(xs, ys)[0, 1], np.var(xs) - np.var(ys))))
        bound = TABLES["Rotate"][mag]
        assert bound - 10 - 2 < angle < bound + 2


def test_perspective_squeezes_one_side_by_the_table():
    white = Image.new("RGB", SIZE, (255, 255, 255))
    for mag, low in enumerate(TABLES["Perspective"]):
        out, _ = RandAugment().ops["Perspective"](white, None, mag, np.random.default_rng(mag))
        columns = (np.asarray(out.convert("L")) > 127).sum(axis=0)
        short = min(columns[1], columns[-2]) / SIZE[1]  # the squeezed side keeps 1 − 2l − U(0, 0.2)
        assert 1 - 2 * low - 0.2 - 0.1 < short < 1 - 2 * low + 0.1
        assert max(columns[1], columns[-2]) >= SIZE[1] - 1


def test_tps_moves_src_points_to_dst_points():
    """The convention of the official cv2 TPS call: the content at src ends up at dst."""
    src = [(0, 0), (128, 0), (0, 32), (128, 32), (40, 16)]
    dst = [(0, 0), (128, 0), (0, 32), (128, 32), (60, 20)]
    dot = np.zeros((32, 128), np.float32)
    dot[16, 40] = 1
    moved = rand_augment._tps(src, dst, 128, 32)(dot, True)
    assert tuple(np.argwhere(moved == 1)[0]) == (20, 60)


def test_brightness_matches_an_hsv_round_trip():
    image, _ = text_image()
    for mag, c in enumerate(TABLES["Brightness"]):
        out, _ = RandAugment().ops["Brightness"](image, None, mag, np.random.default_rng(0))
        hsv = cv2.cvtColor(np.asarray(image, np.float32) / 255, cv2.COLOR_RGB2HSV)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        reference = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1) * 255
        assert np.abs(pixels(out) - reference).max() < 1.01


def test_motion_kernel_is_one_sided_and_normalised():
    kernel = rand_augment._motion_kernel(10, 3, 0.0)
    assert kernel.shape == (41, 41) and np.isclose(kernel.sum(), 1)
    assert np.count_nonzero(kernel[20, 20:]) == 21 and np.count_nonzero(kernel) == 21
    diagonal = rand_augment._motion_kernel(10, 3, 45.0)
    rows, columns = np.nonzero(diagonal)
    assert np.array_equal(rows, columns) and rows.min() == 20
