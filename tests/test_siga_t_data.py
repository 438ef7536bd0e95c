"""SIGA_T's data path against the official one (golden_siga_t ``io.pt``, README §3.1, §6.6): the original IIIT5k
crops resized bicubically to 32×128, the K-means mask of the resized grey image, images scaled to [0, 1] with no
mean/std, and the MGP-STR label ids; and RandAugment wired into the training loader.

golden_siga_t's resized images were made with Pillow ≤ 12 (10.4, 11.3 and 12.0 reproduce them exactly), the
SIGA_R golden images of the same four crops with Pillow 13, whose bicubic resize differs by up to 9 grey levels
here. Pillow is pinned to 13 (the SIGA_R data path is exact), so this file checks each step on its own: our
resize is Pillow's, the K-means rule on the official grey image gives the official mask, and the rest is exact."""
from __future__ import annotations

import io

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from config import make_config
from dataset import Collate, LmdbDataset, Sample
from golden import load_golden
from loaders import make_augmenter
from modules.augment import JointAugment
from modules.kmeans_mask import kmeans_text_mask, text_mask_from_pil
from modules.rand_augment import RandAugment
from tokenizer import Tokenizer

CONFIG = make_config("paper", model="SIGA_T")
TOKENIZER = Tokenizer.from_config(CONFIG)


@pytest.fixture(scope="module")
def inputs() -> dict:
    return load_golden("io.pt", "SIGA_T")["inputs"]


@pytest.fixture(scope="module")
def lmdb_path(inputs, tmp_path_factory):
    """The 4 originals (lossless PNG) with their raw labels in the clovaai LMDB layout."""
    path = tmp_path_factory.mktemp("golden_t") / "lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, (image, label) in enumerate(zip(inputs["originals_uint8"], inputs["raw_labels"]), start=1):
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            txn.put(b"image-%09d" % index, buffer.getvalue())
            txn.put(b"label-%09d" % index, label.encode())
        txn.put(b"num-samples", b"4")
    env.close()
    return path


def test_official_kmeans_rule_on_the_resized_grey_image(inputs):
    for grey, mask in zip(inputs["grey_uint8"], inputs["masks"]):
        assert np.array_equal(kmeans_text_mask(grey.numpy(), seed=0), mask[0].numpy())


def test_official_scaling_and_ids(inputs):
    samples = [Sample(image.permute(1, 2, 0).numpy(), None, label)
               for image, label in zip(inputs["images_uint8"], inputs["labels"])]
    assert torch.equal(Collate(normalize=False)(samples).images, inputs["images"])
    ids, lengths = TOKENIZER.encode(inputs["raw_labels"])
    assert torch.equal(ids, inputs["text_ids"]) and torch.equal(lengths, inputs["length"])


def test_resized_pipeline_resizes_first_then_masks(inputs, lmdb_path):
    """Resize (Pillow bicubic), then the K-means mask of that image, at the network size, labels normalised."""
    dataset = LmdbDataset(lmdb_path, TOKENIZER, CONFIG.image_size, "train", need_masks=True, kmeans_seed=0,
                          resize_first=True)
    samples = [dataset[i] for i in range(4)]
    for sample, original in zip(samples, inputs["originals_uint8"]):
        resized = Image.fromarray(original.permute(1, 2, 0).numpy()).resize((128, 32), Image.BICUBIC)
        assert np.array_equal(sample.image, np.asarray(resized))
        assert np.array_equal(sample.mask, text_mask_from_pil(resized, seed=0).astype(np.float32))
    images = Collate(normalize=False)(samples).images
    assert (images - inputs["images"]).abs().max() <= 9 / 255 + 1e-7  # Pillow 13 vs ≤ 12, see above
    assert [s.label for s in samples] == inputs["labels"]


def test_original_pipeline_masks_differ(inputs, lmdb_path):
    """The SIGA_R path (K-means at the stored size, then resized) is another mask: the option matters."""
    dataset = LmdbDataset(lmdb_path, TOKENIZER, CONFIG.image_size, "train", need_masks=True, kmeans_seed=0)
    masks = Collate(normalize=False)([dataset[i] for i in range(4)]).masks
    assert not torch.equal(masks, inputs["masks"].float())


def test_the_loader_augments_per_pipeline(lmdb_path):
    assert isinstance(make_augmenter(CONFIG), RandAugment) and not make_augmenter(CONFIG).faithful
    assert make_augmenter(CONFIG.replace(aug_mode="fixed")).faithful
    assert isinstance(make_augmenter(make_config("paper", model="SIGA_R")), JointAugment)
    assert make_augmenter(CONFIG.replace(augment=False)) is None
    with pytest.raises(ValueError, match="data_pipeline"):
        make_augmenter(CONFIG.replace(data_pipeline="other"))
    dataset = LmdbDataset(lmdb_path, TOKENIZER, CONFIG.image_size, "train", need_masks=True, kmeans_seed=0,
                          augmenter=RandAugment(intact_prob=0.0), resize_first=True)
    sample = dataset.load(0, np.random.default_rng(3))
    assert sample.image.shape == (32, 128, 3) and sample.mask.shape == (32, 128) and sample.mask.dtype == np.float32
