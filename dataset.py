"""Datasets over the clovaai LMDBs: samples with their masks, joint augmentation, collation, selection.

The LMDB layout itself (keys, reading, writing, image decoding) is :mod:`lmdb_io`; the order in which
samples are drawn is :mod:`samplers`.
"""
from __future__ import annotations

import bisect
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import lmdb
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lmdb_io import (IMAGE_KEY, LABEL_KEY, MASK_KEY, DataSourceError, UndecodableImage, decode_image,
                     find_lmdb_leaves, is_lmdb_dir, open_lmdb, read_num_samples)
from modules.kmeans_mask import text_mask_from_pil
from samplers import DrawKey, ShardSampler
from synth.engine import EngineConfig, render_sample
from synth.fonts import default_catalogue
from tokenizer import Tokenizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel RGB statistics the images are normalised with (Collate)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A collated batch: images [B, 3, H, W] (normalised), masks [B, 1, H, W] or None, labels,
    and the samples skipped while building it as (lmdb path, index, reason)."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: list[str]
    skipped: list[tuple[str, int, str]]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Sample:
    """One decoded training or test sample, ready for :class:`Collate`."""

    image: np.ndarray  # uint8 [H, W, 3], already resized
    mask: np.ndarray | None  # float32 [H, W]
    label: str


@dataclass
class Skipped:
    """A sample that could not be read (which LMDB, which 1-based index, why); reported, never replaced."""

    path: str
    index: int
    reason: str


class LmdbDataset(Dataset):
    """One leaf LMDB. ``mode='train'`` filters raw labels longer than N_max (SPEC §1.2) and may
    augment; ``mode='test'`` keeps everything and never computes masks (SPEC §1.8).

    By default the mask is made and the augmentation applied at the stored size, then both are resized
    (SPEC §1); ``resize_first`` resizes the image first, so that the K-means mask is that of the resized image
    and the augmentation runs at the network size (SIGA_T, SPEC_SIGA_T §1.2).

    A sample whose image, label or mask cannot be decoded comes back as :class:`Skipped`, which the
    collate function drops and reports; nothing is replaced by a dummy.
    """

    def __init__(self, path: str | os.PathLike, tokenizer: Tokenizer, img_size: tuple[int, int], mode: str = "test",
                 need_masks: bool = False, mask_path: str | os.PathLike | None = None,
                 augmenter: Callable | None = None, kmeans_seed: int | None = None, resize_first: bool = False):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        self.path = str(path)
        self.tokenizer = tokenizer
        self.img_h, self.img_w = img_size
        self.mode = mode
        self.need_masks = need_masks and mode == "train"
        self.augmenter = augmenter if mode == "train" else None
        self.kmeans_seed = kmeans_seed
        self.resize_first = resize_first
        self.mask_path = str(mask_path) if mask_path is not None and self.need_masks else None
        if self.mask_path is not None and not is_lmdb_dir(self.mask_path):
            warnings.warn(f"{self.path}: mask LMDB {self.mask_path} not found; computing K-means masks on the fly")
            self.mask_path = None
        self._env = None
        self._mask_env = None
        self._rng: np.random.Generator | None = None
        env = open_lmdb(self.path)
        try:
            total = read_num_samples(env, self.path)
            self.indices, self.scan_skipped = self._scan(env, total)
        finally:
            env.close()

    def _scan(self, env: lmdb.Environment, total: int) -> tuple[np.ndarray, list[Skipped]]:
        """Indices kept (1-based); train mode drops raw labels longer than N_max and undecodable labels."""
        if self.mode == "test":
            return np.arange(1, total + 1, dtype=np.int64), []
        kept, skipped = [], []
        limit = self.tokenizer.max_label_length
        with env.begin(write=False) as txn:
            for index in range(1, total + 1):
                raw = txn.get((LABEL_KEY % index).encode())
                if raw is None:
                    skipped.append(Skipped(self.path, index, "missing label"))
                    continue
                try:
                    label = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped.append(Skipped(self.path, index, "label is not UTF-8"))
                    continue
                if len(label) <= limit:
                    kept.append(index)
        return np.asarray(kept, dtype=np.int64), skipped

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = state["_mask_env"] = None  # LMDB handles are reopened in each worker
        return state

    @property
    def rng(self) -> np.random.Generator:
        """Per-process generator derived from torch's seed (distinct in every DataLoader worker)."""
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng

    def _read(self, env_attr: str, path: str, key: str) -> bytes | None:
        try:
            env = getattr(self, env_attr)
            if env is None:
                env = open_lmdb(path)
                setattr(self, env_attr, env)
            with env.begin(write=False) as txn:
                return txn.get(key.encode())
        except lmdb.Error as error:
            raise DataSourceError(f"{path}: LMDB cannot be read ({error.__class__.__name__}: {error})") from error

    def __getitem__(self, item: int) -> Sample | Skipped:
        return self.load(item, self.rng)

    def load(self, item: int, rng: np.random.Generator) -> Sample | Skipped:
        """Sample ``item`` with every random choice (augmentation, K-means initialisation) drawn from ``rng``."""
        index = int(self.indices[item])
        label_bytes = self._read("_env", self.path, LABEL_KEY % index)
        image_bytes = self._read("_env", self.path, IMAGE_KEY % index)
        if label_bytes is None or image_bytes is None:
            return Skipped(self.path, index, "missing image or label key")
        try:
            label = label_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return Skipped(self.path, index, "label is not UTF-8")
        try:
            image = decode_image(image_bytes)
        except UndecodableImage as error:
            return Skipped(self.path, index, error.summary)
        stored_size, size = image.size, (self.img_w, self.img_h)
        if self.resize_first:
            image = image.resize(size, Image.BICUBIC)
        mask = None
        if self.need_masks:
            mask = self._load_mask(index, image, stored_size, rng)
            if isinstance(mask, Skipped):
                return mask
        return finish_sample(image, mask, self.tokenizer.normalize(label), size, self.augmenter, rng)

    def _load_mask(self, index: int, image: Image.Image, stored_size: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray | Skipped:
        """The stored mask (SPEC §1.4a, at the stored image's size ``stored_size``, resized to ``image``'s) or,
        without a mask LMDB or key, the K-means rule (§1.5) on ``image``."""
        raw = None if self.mask_path is None else self._read("_mask_env", self.mask_path, MASK_KEY % index)
        if raw is None:
            seed = self.kmeans_seed if self.kmeans_seed is not None else int(rng.integers(2**32))
            return text_mask_from_pil(image, seed=seed)
        try:
            mask = np.asarray(Image.open(io.BytesIO(raw)).convert("I"), dtype=np.int32)
        except (OSError, ValueError) as error:
            return Skipped(self.mask_path, index, f"undecodable mask ({error.__class__.__name__})")
        if mask.shape != stored_size[::-1]:
            return Skipped(self.mask_path, index, f"mask size {mask.shape[::-1]} != image size {stored_size}")
        return mask if image.size == stored_size else resize_mask(mask, image.size)


def finish_sample(image: Image.Image, mask: np.ndarray | None, label: str, size: tuple[int, int],
                  augmenter: Callable | None, rng: np.random.Generator) -> Sample:
    """Augment image and mask together (if ``augmenter``), then resize both to ``size`` = (W, H)."""
    if augmenter is not None:
        image, mask = augmenter(image, mask, rng)
    image_array = np.asarray(image if image.size == size else image.resize(size, Image.BICUBIC), dtype=np.uint8)
    if mask is not None:
        mask = resize_mask(mask, size) if mask.shape != size[::-1] else mask.astype(np.float32)
    return Sample(image_array, mask, label)


SYNTH_PREFIX = "synth:"  # ``--train_data synth:N``: N crops rendered on the fly


def synth_size(spec: str) -> int:
    """N of a ``synth:N`` training-data spec (``synth:2e6`` and ``synth:2_000_000`` work too)."""
    text = spec[len(SYNTH_PREFIX):] if spec.startswith(SYNTH_PREFIX) else spec
    try:
        size = int(float(text.replace("_", "")))
    except ValueError as error:
        raise ValueError(f"{spec!r}: expected synth:N with N the number of samples") from error
    if size < 1:
        raise ValueError(f"{spec!r}: need at least one sample")
    return size


class SynthDataset(Dataset):
    """``size`` synthetic crops rendered on demand (``--train_data synth:N``): item ``i`` is sample ``i`` of
    ``seed`` from :mod:`synth.engine` with its exact glyph mask, so a run sees the same crops whatever its
    worker count, and endless variety for a large ``size`` without an LMDB. Training only."""

    def __init__(self, size: int, seed: int, tokenizer: Tokenizer, img_size: tuple[int, int],
                 need_masks: bool = False, augmenter: Callable | None = None, resize_first: bool = False,
                 config: EngineConfig | None = None):
        self.path = f"synth:{size}@{seed}"
        self.size, self.seed, self.tokenizer = size, seed, tokenizer
        self.img_h, self.img_w = img_size
        self.need_masks, self.augmenter, self.resize_first = need_masks, augmenter, resize_first
        config = config or EngineConfig()
        longest = min(config.vocabulary.max_length, tokenizer.max_label_length - 1)  # punctuation may add one
        self.config = replace(config, vocabulary=replace(config.vocabulary, max_length=longest))
        self.scan_skipped: list[Skipped] = []

    def __len__(self) -> int:
        return self.size

    def load(self, item: int, rng: np.random.Generator) -> Sample:
        """Render sample ``item``; ``rng`` drives only the augmentation."""
        image, mask, label = render_sample(item, self.seed, default_catalogue(), self.config)
        size = (self.img_w, self.img_h)
        if self.resize_first:
            image, mask = image.resize(size, Image.BICUBIC), resize_mask(mask, size)
        return finish_sample(image, mask if self.need_masks else None, self.tokenizer.normalize(label), size,
                             self.augmenter, rng)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 mask resized to ``size`` = (W, H) with PIL bicubic (SPEC §1.7).

    An integer {0,1} mask is resized as a 32-bit integer ("I") image, so its values stay integers as in
    the official data path (golden ``io.pt`` masks); a float mask (after a geometric warp) as "F".
    """
    if np.issubdtype(mask.dtype, np.integer):
        resized = Image.fromarray(mask.astype(np.int32)).resize(size, Image.BICUBIC)
    else:
        resized = Image.fromarray(mask.astype(np.float32)).resize(size, Image.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


class Collate:
    """Stack samples, normalise images with the ImageNet statistics (or, ``normalize=False``, only scale them
    to [0, 1] as SIGA_T reads them), drop and report skipped ones."""

    def __init__(self, normalize: bool = True, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255.0 if normalize else torch.zeros(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255.0 if normalize else torch.full((1, 3, 1, 1), 255.0)

    def __call__(self, items: Sequence[Sample | Skipped]) -> Batch:
        samples = [s for s in items if isinstance(s, Sample)]
        skipped = [(s.path, s.index, s.reason) for s in items if isinstance(s, Skipped)]
        if not samples:
            return Batch(torch.empty(0, 3, 0, 0), None, [], skipped)
        images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
        images = (images - self.mean) / self.std
        masks = None
        if samples[0].mask is not None:
            masks = torch.from_numpy(np.stack([s.mask for s in samples])).unsqueeze(1)
        return Batch(images.contiguous(), masks, [s.label for s in samples], skipped)


# --------------------------------------------------------------------------------------------------
# Dataset selection and loaders
# --------------------------------------------------------------------------------------------------
def mirror_mask_path(leaf: Path, image_root: Path, mask_root: str | os.PathLike | None) -> Path | None:
    """The mask LMDB for ``leaf``: the same relative path under ``mask_root`` (SPEC bug #21 fixed)."""
    if mask_root is None:
        return None
    return Path(mask_root) / os.path.relpath(leaf, image_root)  # unresolved: symlinked leaves keep their place


def select_leaves(root: str | os.PathLike, selection: str) -> list[Path]:
    """Leaf LMDBs under ``root`` whose path (relative to root) contains ``selection`` (SPEC §1.1)."""
    root = Path(root)
    leaves = find_lmdb_leaves(root)
    if selection in ("", "/", "*"):
        return leaves
    chosen = [leaf for leaf in leaves if selection in str(leaf.resolve().relative_to(root.resolve()))
              or (leaf.resolve() == root.resolve() and selection in root.name)]
    if not chosen:
        raise FileNotFoundError(f"{root}: no LMDB whose path contains {selection!r} "
                                f"(found: {[str(l) for l in leaves]})")
    return chosen


def build_dataset_groups(root: str | os.PathLike, selections: Sequence[str], tokenizer: Tokenizer,
                         img_size: tuple[int, int], mode: str, need_masks: bool = False,
                         mask_root: str | os.PathLike | None = None, augmenter: Callable | None = None,
                         kmeans_seed: int | None = None, resize_first: bool = False) -> list[ConcatDataset]:
    """One concatenation of leaf datasets per selection name (``["MJ", "ST"]`` → two groups)."""
    groups = []
    for selection in selections:
        leaves = select_leaves(root, selection)
        datasets = [LmdbDataset(leaf, tokenizer, img_size, mode, need_masks,
                                mirror_mask_path(leaf, Path(root), mask_root) if need_masks else None,
                                augmenter, kmeans_seed, resize_first) for leaf in leaves]
        groups.append(ConcatDataset(datasets))
    return groups


class SkipTally:
    """Counts of skipped samples per (LMDB path, reason), mergeable across DataLoader batches and ranks."""

    def __init__(self, counts: Counter | None = None):
        self.counts: Counter = Counter() if counts is None else counts

    def add(self, skipped: Iterable[tuple[str, int, str]]) -> None:
        """Count a batch's ``skipped`` list of (LMDB path, index, reason)."""
        self.counts.update((path, reason) for path, _, reason in skipped)

    @classmethod
    def merged(cls, tallies: Iterable["SkipTally"]) -> "SkipTally":
        """One tally summing ``tallies`` (e.g. those gathered from every rank)."""
        total: Counter = Counter()
        for tally in tallies:
            total.update(tally.counts)
        return cls(total)

    def total(self) -> int:
        """The number of skipped samples over every LMDB and reason."""
        return sum(self.counts.values())

    def per_lmdb(self) -> dict[str, int]:
        """Skipped count per LMDB path, sorted by path."""
        totals: Counter = Counter()
        for (path, _), count in self.counts.items():
            totals[path] += count
        return dict(sorted(totals.items()))

    def report(self) -> str:
        """One line per LMDB: its path, the count and the count per reason."""
        lines = []
        for path in self.per_lmdb():
            reasons = sorted((reason, count) for (p, reason), count in self.counts.items() if p == path)
            detail = ", ".join(f"{count} {reason}" for reason, count in reasons)
            lines.append(f"  {path}: {sum(c for _, c in reasons)} skipped ({detail})")
        return "\n".join(lines)


class TrainingDraws(ConcatDataset):
    """The training LMDBs addressed by :data:`DrawKey`: each draw's randomness (augmentation, K-means
    initialisation) comes from ``numpy.random.default_rng([seed, epoch, position])``, a function of the
    draw alone, so a run sees the same samples whatever its worker count, world size or resumption."""

    def __init__(self, leaves: Sequence[LmdbDataset], seed: int):
        super().__init__(leaves)
        self.seed = seed

    def __getitem__(self, key: DrawKey) -> Sample | Skipped:
        index, epoch, position = key
        leaf = bisect.bisect_right(self.cumulative_sizes, index)
        offset = index - (self.cumulative_sizes[leaf - 1] if leaf else 0)
        return self.datasets[leaf].load(offset, np.random.default_rng([self.seed, epoch, position]))


def make_eval_loader(path: str | os.PathLike, tokenizer: Tokenizer, img_size: tuple[int, int], batch_size: int,
                     workers: int = 0, rank: int = 0, world_size: int = 1, normalize: bool = True) -> DataLoader:
    """A test-mode loader over one leaf LMDB in index order (this rank's shard of it when distributed)."""
    dataset = LmdbDataset(path, tokenizer, img_size, "test")
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, collate_fn=Collate(normalize), generator=torch.Generator().manual_seed(0))
