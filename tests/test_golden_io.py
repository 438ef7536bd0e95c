"""The data path against the official one (golden ``io.pt``, README §3.1): the original IIIT5k crops and their
stored labels, written to a tiny LMDB here and read back through ``LmdbDataset(..., "test")`` and ``Collate``,
give the official resized images, normalised images and text ids."""
from __future__ import annotations

import io
import re

import lmdb
import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from dataset import Collate, LmdbDataset
from golden import load_golden, require
from tokenizer import CHARSET_36, Tokenizer

TOKENIZER = Tokenizer(CHARSET_36)


def test_missing_reference_data_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    missing = tmp_path / "shared" / "data" / "golden" / "io.pt"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(missing))):
        require(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=re.escape(str(missing))):
        require(missing)
    assert require(tmp_path) == tmp_path


@pytest.fixture(scope="module")
def inputs() -> dict:
    return load_golden("io.pt")["inputs"]


def png(chw: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(chw.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples(inputs, tmp_path_factory) -> list:
    """The 4 originals (lossless PNG, as the IIIT5k LMDB stores them) with their raw labels, in the clovaai
    LMDB layout written here directly, read in test mode."""
    path = tmp_path_factory.mktemp("golden_io") / "lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, (image, label) in enumerate(zip(inputs["originals_uint8"], inputs["raw_labels"]), start=1):
            txn.put(b"image-%09d" % index, png(image))
            txn.put(b"label-%09d" % index, label.encode())
        txn.put(b"num-samples", str(len(inputs["raw_labels"])).encode())
    env.close()
    dataset = LmdbDataset(path, TOKENIZER, (32, 128), "test")
    return [dataset[item] for item in range(len(dataset))]


def test_resized_images_match_official(inputs, samples):
    """PIL RGB → bicubic 128×32, exactly (README §3.1 ``images_uint8``)."""
    resized = torch.from_numpy(np.stack([sample.image for sample in samples])).permute(0, 3, 1, 2)
    expected = inputs["images_uint8"]
    assert resized.shape == expected.shape and resized.dtype == expected.dtype
    differ = resized.int() - expected.int()
    assert torch.equal(resized, expected), (
        f"{int((differ != 0).sum())} values differ, by up to {int(differ.abs().max())} grey levels, per image "
        f"{(differ != 0).flatten(1).sum(1).tolist()} with Pillow {PIL.__version__}; the golden data match Pillow "
        f"13.0.0, whose bicubic resize runs the vertical pass first when the height is reduced more than the width")


def test_normalised_images_match_official(inputs, samples):
    """``images`` = (uint8/255 − mean)/std in float32 (README §3.1). Collate computes (x − 255·mean)/(255·std),
    the same value rounded differently, so 1e-6 of max|images| (≈ 8 float32 ulps; measured 9.0e-8 with exact
    uint8 inputs) — far below one grey level, 1/(255·0.225) ≈ 0.017."""
    images = Collate()(samples).images
    expected = inputs["images"]
    assert images.shape == expected.shape and images.dtype == torch.float32
    error = (images - expected).abs().max().item()
    assert error <= 1e-6 * expected.abs().max().item(), f"max abs error {error:.2e}"


def test_labels_are_normalised_like_official(inputs, samples):
    assert [sample.label for sample in samples] == inputs["labels"]


def test_tokenizer_encodes_official_text_ids(inputs):
    """``[SOS = 37, c1..cL, 0, …]`` over S + 1 = 27 columns and lengths L + 1, from the stored (upper-case) labels."""
    ids, lengths = TOKENIZER.encode(inputs["raw_labels"])
    assert ids.dtype == torch.int64 and torch.equal(ids, inputs["text_ids"])
    assert torch.equal(lengths, inputs["length"].long())
