"""synth.geometry: determinism, point mapping, output bounds, image/alpha alignment, curved baselines."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from synth.geometry import (apply_homography, curve_offsets, elastic_field, output_size, random_homography,
                            remap_layers, warp_layers)

HEIGHT, WIDTH = 48, 160
CONSTANT = cv2.BORDER_CONSTANT


def shapes_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 image, float32 alpha) with the same random filled rectangles and discs: bright
    shapes on black in the image, 1 on 0 in the alpha."""
    alpha = np.zeros((HEIGHT, WIDTH), np.float32)
    for _ in range(6):
        x, y = int(rng.integers(10, WIDTH - 10)), int(rng.integers(8, HEIGHT - 8))
        if rng.random() < 0.5:
            cv2.circle(alpha, (x, y), int(rng.integers(3, 8)), 1.0, -1)
        else:
            w, h = rng.integers(4, 20, 2)
            cv2.rectangle(alpha, (x, y), (x + int(w), y + int(h)), 1.0, -1)
    colour = np.array([255, 230, 200], np.float32)
    return alpha[..., None] * colour, alpha


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def random_calls(seed: int) -> list[np.ndarray]:
    """Outputs of every random function of the module for one seed."""
    rng = np.random.default_rng(seed)
    matrix = random_homography(rng, HEIGHT, WIDTH, 10.0, 0.3, 0.1)
    map_x, map_y = elastic_field(rng, HEIGHT, WIDTH, 3.0, 6.0)
    dy, angle = curve_offsets(rng, np.linspace(0, WIDTH, 20), WIDTH, 0.1)
    return [matrix, map_x, map_y, dy, angle]


def test_determinism_per_seed():
    first, again, other = random_calls(3), random_calls(3), random_calls(4)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_homography_maps_a_point_where_the_matrix_says():
    """The centroid of a small Gaussian blob lands where the matrix maps its centre."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    point = np.array([37.0, 21.0])
    blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        matrix = random_homography(rng, HEIGHT, WIDTH, 15.0, 0.4, 0.1)
        (warped,) = warp_layers([blob], matrix, output_size(matrix, HEIGHT, WIDTH), [CONSTANT])
        ys, xs = np.mgrid[0:warped.shape[0], 0:warped.shape[1]]
        centroid = np.array([(warped * xs).sum(), (warped * ys).sum()]) / warped.sum()
        assert np.linalg.norm(centroid - apply_homography(matrix, point)[0]) < 1.0


def test_known_matrix_moves_a_bright_pixel():
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    image[10, 20] = 255
    matrix = np.array([[1.0, 0.0, 7.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]])
    (warped,) = warp_layers([image], matrix, (WIDTH + 10, HEIGHT + 5), [cv2.BORDER_REFLECT])
    assert warped.shape == (HEIGHT + 5, WIDTH + 10, 3) and warped.dtype == np.float32
    assert np.unravel_index(np.argmax(warped[..., 0]), warped.shape[:2]) == (13, 27)


def test_output_size_holds_all_corners_and_starts_at_origin():
    rng = np.random.default_rng(1)
    corners = np.array([[0, 0], [WIDTH - 1, 0], [WIDTH - 1, HEIGHT - 1], [0, HEIGHT - 1]], np.float64)
    for _ in range(50):
        matrix = random_homography(rng, HEIGHT, WIDTH, 20.0, 0.5, 0.15)
        width, height = output_size(matrix, HEIGHT, WIDTH)
        mapped = apply_homography(matrix, corners)
        assert mapped.min() > -1e-6
        assert np.all(mapped <= np.array([width - 1, height - 1]) + 1e-6)
        assert np.isclose(mapped[:, 0].min(), 0, atol=1e-6) and np.isclose(mapped[:, 1].min(), 0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_warp_and_elastic_keep_image_and_alpha_aligned(seed: int):
    rng = np.random.default_rng(seed)
    image, alpha = shapes_scene(rng)
    matrix = random_homography(rng, HEIGHT, WIDTH, 12.0, 0.4, 0.1)
    size = output_size(matrix, HEIGHT, WIDTH)
    image, alpha = warp_layers([image, alpha], matrix, size, [CONSTANT, CONSTANT])
    assert image.shape == (size[1], size[0], 3) and alpha.shape == (size[1], size[0])
    map_x, map_y = elastic_field(rng, size[1], size[0], 4.0, 5.0)
    image, alpha = remap_layers([image, alpha], map_x, map_y, [CONSTANT, CONSTANT])
    assert image.dtype == alpha.dtype == np.float32 and image.shape[:2] == alpha.shape == map_x.shape
    mask = alpha > 0.5
    assert mask.sum() > 50
    assert iou(mask, image.mean(-1) > 0.5 * 228.3) > 0.9


def test_elastic_field_amplitude_and_identity():
    rng = np.random.default_rng(2)
    map_x, map_y = elastic_field(rng, HEIGHT, WIDTH, 3.0, 6.0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    assert map_x.dtype == map_y.dtype == np.float32 and map_x.shape == (HEIGHT, WIDTH)
    assert np.abs(map_x - xs).max() == pytest.approx(3.0, abs=1e-4)
    assert np.abs(map_y - ys).max() == pytest.approx(3.0, abs=1e-4)
    image = rng.uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32)
    zero_x, zero_y = elastic_field(rng, HEIGHT, WIDTH, 0.0, 6.0)
    (same,) = remap_layers([image], zero_x, zero_y, [cv2.BORDER_REFLECT])
    np.testing.assert_allclose(same, image, atol=1e-3)


def test_curve_offsets_bounded_and_angles_match_slope():
    rng = np.random.default_rng(5)
    xs = np.linspace(0, WIDTH, 401)
    for _ in range(40):
        dy, angle = curve_offsets(rng, xs, WIDTH, 0.08)
        assert dy.shape == angle.shape == xs.shape
        assert np.abs(dy).max() <= 0.08 * WIDTH + 1e-9
        slope = np.gradient(dy, xs)
        np.testing.assert_allclose(np.tan(angle[1:-1]), slope[1:-1], atol=2e-3)
    dy, angle = curve_offsets(rng, xs, WIDTH, 0.0)
    assert not dy.any() and not angle.any()


def test_single_channel_layers_keep_their_axis():
    layer = np.ones((HEIGHT, WIDTH, 1), np.float32)
    matrix = random_homography(np.random.default_rng(0), HEIGHT, WIDTH, 5.0, 0.1, 0.05)
    size = output_size(matrix, HEIGHT, WIDTH)
    (warped,) = warp_layers([layer], matrix, size, [CONSTANT])
    assert warped.shape == (size[1], size[0], 1)
    map_x, map_y = elastic_field(np.random.default_rng(0), HEIGHT, WIDTH, 2.0, 4.0)
    (remapped,) = remap_layers([layer], map_x, map_y, [CONSTANT])
    assert remapped.shape == (HEIGHT, WIDTH, 1)
