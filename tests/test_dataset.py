"""LMDB reading (real and synthetic), selection, filtering, masks, corrupt samples, collation, samplers."""
from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (IMAGENET_MEAN, IMAGENET_STD, Collate, LmdbDataset, Sample, Skipped, build_dataset_groups,
                     mirror_mask_path, resize_mask, select_leaves)
from golden import load_golden, require
from lmdb_io import LmdbWriter, encode_png, open_lmdb
from samplers import RatioBatchSampler, ShardSampler, ShuffledBatchSampler
from tokenizer import Tokenizer, load_charset

IIIT5K = Path(__file__).resolve().parents[2] / "shared" / "data" / "IIIT5k_train_2000"
TOKENIZER = Tokenizer(load_charset("36"), max_label_length=25)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_lmdb(path: Path, labels: list[str], corrupt: set[int] = frozenset(), size=(40, 12)) -> list[np.ndarray]:
    """Images with a dark bar on a light background (the bar's extent encodes the index)."""
    images = []
    with LmdbWriter(path) as writer:
        for index, label in enumerate(labels, start=1):
            image = np.full((size[1], size[0], 3), 220, np.uint8)
            image[3:9, 2 : 4 + index % (size[0] - 4)] = 20
            images.append(image)
            writer.add_sample(b"not an image" if index in corrupt else png_bytes(image), label)
    return images


def test_real_iiit5k_lmdb():
    require(IIIT5K)
    train = LmdbDataset(IIIT5K, TOKENIZER, (32, 128), "train")
    test = LmdbDataset(IIIT5K, TOKENIZER, (32, 128), "test")
    assert len(test) == 2000 and len(train) == 2000  # no raw label is longer than 25
    first = test[0]
    assert isinstance(first, Sample) and first.label == "you" and first.image.shape == (32, 128, 3)
    assert first.mask is None
    labels = [test[i].label for i in range(0, 2000, 97)]
    assert all(label and label == TOKENIZER.normalize(label) for label in labels)
    batch = Collate()([test[i] for i in range(8)])
    assert batch.images.shape == (8, 3, 32, 128) and batch.masks is None
    assert batch.labels[:4] == ["you", "rescue", "mission", "home"]


def test_length_filter_on_raw_label_train_only(tmp_path):
    write_lmdb(tmp_path / "db", ["ok", "x" * 26, "a-b-c-d-e-f-g-h-i-j-k-l-m-n", "fine"])
    tok = Tokenizer(load_charset("36"), max_label_length=25)
    train = LmdbDataset(tmp_path / "db", tok, (32, 128), "train")
    assert train.indices.tolist() == [1, 4]  # the raw (unfiltered) length counts, SPEC §1.2
    assert len(LmdbDataset(tmp_path / "db", tok, (32, 128), "test")) == 4


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    write_lmdb(tmp_path / "db", ["aa", "bb", "cc", "dd"], corrupt={3})
    dataset = LmdbDataset(tmp_path / "db", TOKENIZER, (32, 128), "test")
    items = [dataset[i] for i in range(4)]
    assert isinstance(items[2], Skipped) and items[2].index == 3 and "undecodable image" in items[2].reason
    batch = Collate()(items)
    assert batch.labels == ["aa", "bb", "dd"] and batch.images.shape[0] == 3
    assert batch.skipped == [(str(tmp_path / "db"), 3, items[2].reason)]


def test_bad_label_and_missing_keys_are_skipped(tmp_path):
    write_lmdb(tmp_path / "db", ["aa", "bb", "cc"])
    env = __import__("lmdb").open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"label-000000002", b"\xff\xfe")
        txn.delete(b"image-000000003")
    env.close()
    train = LmdbDataset(tmp_path / "db", TOKENIZER, (32, 128), "train")
    assert train.indices.tolist() == [1, 3] and train.scan_skipped[0].index == 2
    assert isinstance(train[1], Skipped) and train[1].index == 3


def test_not_an_lmdb_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an LMDB"):
        open_lmdb(tmp_path)
    with pytest.raises(FileNotFoundError, match="no LMDB"):
        select_leaves(tmp_path, "/")


def test_selection_by_substring_and_mask_mirroring(tmp_path):
    for name in ["MJ/MJ_train", "MJ/MJ_valid", "ST", "other"]:
        write_lmdb(tmp_path / "training" / name, ["ab"])
    root = tmp_path / "training"
    assert [p.name for p in select_leaves(root, "MJ")] == ["MJ_train", "MJ_valid"]
    assert [p.name for p in select_leaves(root, "ST")] == ["ST"]
    groups = build_dataset_groups(root, ["MJ", "ST"], TOKENIZER, (32, 128), "train")
    assert [len(g) for g in groups] == [2, 1]
    leaf = root / "MJ" / "MJ_train"
    assert mirror_mask_path(leaf, root, tmp_path / "masks") == tmp_path / "masks" / "MJ" / "MJ_train"


def test_masks_from_lmdb_and_kmeans_fallback(tmp_path):
    images = write_lmdb(tmp_path / "img", ["ab", "cd"])
    with LmdbWriter(tmp_path / "mask") as writer:
        exact = (images[0][..., 0] < 128).astype(np.uint8)
        writer.put("mask-%09d" % 1, encode_png(exact))  # index 2 missing → K-means
    dataset = LmdbDataset(tmp_path / "img", TOKENIZER, (12, 40), "train", need_masks=True,
                          mask_path=tmp_path / "mask", kmeans_seed=0)  # unseeded 2-means on a 2-level image is flaky
    stored, fallback = dataset[0], dataset[1]
    assert np.allclose(stored.mask, exact, atol=1e-5)  # same size: the bicubic resize keeps it
    assert np.allclose(fallback.mask, images[1][..., 0] < 128, atol=1e-5)
    test_mode = LmdbDataset(tmp_path / "img", TOKENIZER, (12, 40), "test", need_masks=True, mask_path=tmp_path / "mask")
    assert test_mode[0].mask is None  # test mode never computes masks (SPEC §1.8)
    batch = Collate()([stored, fallback])
    assert batch.masks.shape == (2, 1, 12, 40)


def test_corrupt_mask_is_skipped(tmp_path):
    write_lmdb(tmp_path / "img", ["ab"])
    with LmdbWriter(tmp_path / "mask") as writer:
        writer.put("mask-%09d" % 1, b"garbage")
    dataset = LmdbDataset(tmp_path / "img", TOKENIZER, (12, 40), "train", need_masks=True, mask_path=tmp_path / "mask")
    item = dataset[0]
    assert isinstance(item, Skipped) and "mask" in item.reason and item.path == str(tmp_path / "mask")


def test_collate_normalisation():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    batch = Collate()([Sample(image, None, "a")])
    expected_r = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    expected_g = (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert torch.allclose(batch.images[0, 0], torch.full((2, 3), expected_r))
    assert torch.allclose(batch.images[0, 1], torch.full((2, 3), expected_g))


def test_ratio_batch_sampler_proportions():
    sampler = RatioBatchSampler([100, 10], [0.75, 0.25], batch_size=8, seed=1)
    assert sampler.batches_per_epoch == 17  # the 100-sample group at 6 per batch
    batches = [[index for index, _, _ in batch] for batch in itertools.islice(sampler, 17)]
    assert all(len(b) == 8 for b in batches)
    assert all(sum(i >= 100 for i in b) == 2 for b in batches)
    first_group = [i for b in batches for i in b if i < 100]
    assert sorted(first_group[:100]) == list(range(100))  # without replacement within an epoch
    next_epoch = list(itertools.islice(RatioBatchSampler([100, 10], [0.75, 0.25], 8, seed=1, start=17), 17))
    assert [[i for i, _, _ in b] for b in next_epoch] != batches and {e for b in next_epoch for _, e, _ in b} == {1}
    with pytest.raises(ValueError, match="batch ratios"):
        RatioBatchSampler([5, 5], [1.0], 4)


def test_shuffled_batches_resume_and_split_across_ranks():
    """Batch k is the same set of draws whatever the world size, and starting at k continues the stream."""
    whole = list(itertools.islice(ShuffledBatchSampler(50, 10, seed=3), 12))
    assert all(len({i for i, _, _ in b}) == 10 for b in whole)
    assert sorted(i for b in whole[:5] for i, _, _ in b) == list(range(50))  # one epoch: every sample once
    assert list(itertools.islice(ShuffledBatchSampler(50, 10, seed=3, start=7), 5)) == whole[7:12]
    ranks = [ShuffledBatchSampler(50, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    for batch, first, second in itertools.islice(zip(whole, *ranks), 12):
        assert sorted(batch) == sorted(first + second)  # same (index, epoch, position) draws
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShuffledBatchSampler(9, 5, seed=0, world_size=2)


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]


def test_train_sample_matches_official_data_path_on_golden_images():
    """K-means at the original size, then the mask resized as an integer image: the official masks of
    golden io.pt exactly (SPEC §1.4b/§1.7), for the same IIIT5k images read through the dataset."""
    golden = load_golden("io.pt")["inputs"]
    train = LmdbDataset(require(IIIT5K), TOKENIZER, (32, 128), "train", need_masks=True, kmeans_seed=0)
    for row, key in enumerate(golden["lmdb_keys"]):
        sample = train[int(np.flatnonzero(train.indices == key)[0])]
        assert sample.label == golden["labels"][row]
        assert np.array_equal(sample.mask, golden["masks"][row, 0].numpy()), key
        assert np.array_equal(resize_mask(golden["original_masks_uint8"][row].numpy().astype(np.int32), (128, 32)),
                              golden["masks"][row, 0].numpy())


def test_synth_dataset_renders_on_demand_with_the_engines_masks():
    from dataset import SynthDataset, synth_size
    from synth.engine import render_sample
    from synth.fonts import default_catalogue

    assert synth_size("synth:2e3") == synth_size("synth:2_000") == 2000
    for bad in ("synth:0", "synth:", "synth:many"):
        with pytest.raises(ValueError, match="synth"):
            synth_size(bad)
    short = Tokenizer(load_charset("36"), max_label_length=6)
    dataset = SynthDataset(20, seed=3, tokenizer=short, img_size=(32, 100), need_masks=True)
    assert len(dataset) == 20 and dataset.config.vocabulary.max_length == 5  # + 1 punctuation mark <= N_max
    rng = np.random.default_rng(0)
    first, again = dataset.load(7, rng), dataset.load(7, np.random.default_rng(1))
    image, mask, label = render_sample(7, 3, default_catalogue(), dataset.config)
    assert first.label == again.label == short.normalize(label) and np.array_equal(first.image, again.image)
    assert first.image.shape == (32, 100, 3) and first.mask.shape == (32, 100)
    assert np.array_equal(first.mask, resize_mask(mask, (100, 32)))
    assert all(len(dataset.load(i, rng).label) <= 6 for i in range(20))
    assert SynthDataset(4, 3, TOKENIZER, (32, 100)).load(0, rng).mask is None  # masks only when needed
