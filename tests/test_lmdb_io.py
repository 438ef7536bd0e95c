"""lmdb_io: the one image decoder shared by the dataset and the LMDB tools, and the LMDB layout helpers."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import CORRUPT_IMAGE_BYTES, encode_image
from lmdb_io import (IMAGE_KEY, LABEL_KEY, LmdbWriter, UndecodableImage, decode_image, find_lmdb_leaves, is_lmdb_dir,
                     open_lmdb, read_num_samples)


def gradient(width: int = 9, height: int = 5) -> np.ndarray:
    """uint8 [h, w, 3] with a different value in every pixel and channel, so any mix-up shows."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 20, ys * 40, 255 - xs * 10 - ys * 5], axis=-1).astype(np.uint8)


def test_png_decodes_to_the_same_rgb_pixels():
    pixels = gradient()
    image = decode_image(encode_image(Image.fromarray(pixels)))
    assert image.mode == "RGB" and image.size == (9, 5)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_jpeg_decodes_to_rgb_close_to_the_original():
    pixels = np.full((16, 24, 3), (200, 40, 90), np.uint8)
    image = decode_image(encode_image(Image.fromarray(pixels), "JPEG", quality=95))
    assert image.mode == "RGB" and image.size == (24, 16)
    assert np.abs(np.asarray(image, np.int32) - pixels).max() <= 3


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_other_modes_become_rgb_as_pil_converts_them(mode):
    original = Image.fromarray(gradient()).convert(mode)
    image = decode_image(encode_image(original))
    assert image.mode == "RGB" and image.size == original.size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(original.convert("RGB")))


def test_grey_pixels_are_copied_to_every_channel():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = np.asarray(decode_image(encode_image(Image.fromarray(grey))))
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_unknown_bytes_raise_one_clear_error():
    with pytest.raises(UndecodableImage) as caught:
        decode_image(CORRUPT_IMAGE_BYTES)
    error = caught.value
    assert isinstance(error, ValueError)
    assert str(error) == "undecodable image (UnidentifiedImageError: not a recognised image format)"
    assert error.summary == "undecodable image (UnidentifiedImageError)"
    with pytest.raises(UndecodableImage, match="UnidentifiedImageError"):
        decode_image(b"")


def test_truncated_image_names_the_pil_error_class():
    data = encode_image(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)))
    with pytest.raises(UndecodableImage) as caught:
        decode_image(data[: len(data) // 2])
    cause = caught.value.__cause__
    assert cause is not None and not isinstance(cause, UndecodableImage)
    assert caught.value.summary == f"undecodable image ({cause.__class__.__name__})"
    assert str(caught.value).startswith(f"undecodable image ({cause.__class__.__name__}: ")


def test_writer_layout_round_trip(tmp_path):
    with LmdbWriter(tmp_path / "b" / "leaf", commit_every=2) as writer:
        assert [writer.add_sample(b"img%d" % i, f"w{i}") for i in range(3)] == [1, 2, 3]
    writer = LmdbWriter(tmp_path / "a")
    writer.add_sample(b"x", "y")
    writer.close(num_samples=7)
    assert is_lmdb_dir(tmp_path / "a") and not is_lmdb_dir(tmp_path / "b")
    assert find_lmdb_leaves(tmp_path) == [tmp_path / "a", tmp_path / "b" / "leaf"]
    env = open_lmdb(tmp_path / "b" / "leaf")
    try:
        assert read_num_samples(env, tmp_path / "b" / "leaf") == 3
        with env.begin() as txn:
            assert txn.get((IMAGE_KEY % 3).encode()) == b"img2" and txn.get((LABEL_KEY % 1).encode()) == b"w0"
    finally:
        env.close()
    env = open_lmdb(tmp_path / "a")
    try:
        assert read_num_samples(env, tmp_path / "a") == 7
    finally:
        env.close()


def test_missing_num_samples_is_an_error_naming_the_lmdb(tmp_path):
    writer = LmdbWriter(tmp_path / "db")
    writer.put("image-000000001", b"x")
    writer.flush()
    writer.env.close()
    env = open_lmdb(tmp_path / "db")
    try:
        with pytest.raises(ValueError, match=f"{tmp_path / 'db'}: LMDB has no 'num-samples' key"):
            read_num_samples(env, tmp_path / "db")
    finally:
        env.close()
