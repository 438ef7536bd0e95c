"""DataLoaders of a training run: this rank's endless training batches and the sharded validation sets."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from config import Config
from dataset import (SYNTH_PREFIX, Batch, Collate, SkipTally, SynthDataset, TrainingDraws, build_dataset_groups,
                     make_eval_loader, synth_size)
from distributed import DistEnv
from lmdb_io import find_lmdb_leaves
from modules.augment import JointAugment
from modules.rand_augment import RandAugment
from samplers import RatioBatchSampler, ShuffledBatchSampler
from tokenizer import Tokenizer


DATA_PIPELINES = ("original", "resized")


def make_augmenter(config: Config) -> Callable | None:
    """The training augmentation of the config's data pipeline: the joint geometric/photometric augmentation at
    the stored size (SPEC §1.6), or RandAugment at the network size (SPEC_SIGA_T §1.3; ``aug_mode='fixed'``
    selects its faithful variant); None when augmentation is off."""
    if config.data_pipeline not in DATA_PIPELINES:
        raise ValueError(f"unknown data_pipeline {config.data_pipeline!r}; choose from {DATA_PIPELINES}")
    if not config.augment:
        return None
    if config.data_pipeline == "resized":
        return RandAugment(faithful=config.aug_mode == "fixed")
    return JointAugment(config.aug_mode, np.random.default_rng(config.seed))


def make_train_loader(train_data: str, select_data: str, batch_ratio: str | None, mask_root: str | None,
                      config: Config, tokenizer: Tokenizer, need_masks: bool, env: DistEnv, start: int,
                      log: Callable[[str], None] = print) -> tuple[DataLoader, SkipTally]:
    """This rank's endless training loader from global batch ``start`` on, and the labels skipped by the
    initial scan (counted on rank 0 only: every rank scans the same LMDBs).

    ``select_data`` is '-'-separated substrings of leaf paths under ``train_data``; ``batch_ratio`` their
    '-'-separated shares of every batch (None: uniform sampling over the concatenation). ``train_data`` =
    ``synth:N`` renders N synthetic crops on demand instead (:class:`dataset.SynthDataset`).
    """
    resize_first = config.data_pipeline == "resized"
    if train_data.startswith(SYNTH_PREFIX):
        if batch_ratio:
            raise ValueError(f"--batch_ratio needs LMDB selections, not {train_data}")
        selections = [train_data]
        groups = [ConcatDataset([SynthDataset(synth_size(train_data), config.seed, tokenizer, config.image_size,
                                              need_masks, make_augmenter(config), resize_first)])]
    else:
        selections = select_data.split("-")
        groups = build_dataset_groups(train_data, selections, tokenizer, config.image_size, "train", need_masks,
                                      mask_root, make_augmenter(config), resize_first=resize_first)
    scan = SkipTally()
    for group, selection in zip(groups, selections):
        skipped = [s for d in group.datasets for s in d.scan_skipped]
        if env.is_main:
            scan.add((s.path, s.index, s.reason) for s in skipped)
        source = "rendered on the fly" if selection.startswith(SYNTH_PREFIX) else f"from {len(group.datasets)} LMDB(s)"
        log(f"train data '{selection}': {len(group)} samples {source}"
            + (f", {len(skipped)} unreadable labels skipped" if skipped else ""))
    draws = TrainingDraws([leaf for group in groups for leaf in group.datasets], config.seed)
    global_batch = config.batch_size * env.world_size
    if len(draws) < global_batch:
        raise ValueError(f"{train_data}: {len(draws)} training samples, fewer than one global batch of "
                         f"{global_batch} ({config.batch_size} per process × {env.world_size})")
    if batch_ratio:
        ratios = [float(r) for r in batch_ratio.split("-")]
        sampler = RatioBatchSampler([len(g) for g in groups], ratios, config.batch_size, config.seed, env.rank,
                                    env.world_size, start)
    else:
        sampler = ShuffledBatchSampler(len(draws), config.batch_size, config.seed, env.rank, env.world_size, start)
    loader = DataLoader(draws, batch_sampler=sampler, num_workers=config.workers,
                        collate_fn=Collate(config.normalize_images),
                        pin_memory=env.device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed + env.rank))
    return loader, scan


def curriculum_batches(first: DataLoader | None, until: int, then: DataLoader, start: int) -> Iterator[Batch]:
    """The batches of iterations ``start``… of a run that reads ``first`` (e.g. plain crops, so that the attention
    decoder aligns on easy text) for its first ``until`` iterations and ``then`` afterwards. Each loader's sampler
    already starts at its own position; ``then``'s workers start only when its phase begins."""
    if start < until:
        if first is None:
            raise ValueError(f"iteration {start} is in the curriculum phase (< {until}) but no curriculum data "
                             "was given")
        batches = iter(first)
        for _ in range(start, until):
            yield next(batches)
        del batches  # stops the first phase's workers
    yield from then


def make_eval_loaders(root: str, config: Config, tokenizer: Tokenizer, env: DistEnv) -> dict[str, DataLoader]:
    """One test-mode loader per leaf LMDB under ``root`` (this rank's shard), keyed by its path relative to ``root``."""
    return {str(leaf.relative_to(root)) if leaf != Path(root) else leaf.name:
            make_eval_loader(leaf, tokenizer, config.image_size, config.eval_batch_size, min(config.workers, 2),
                             env.rank, env.world_size, config.normalize_images) for leaf in find_lmdb_leaves(root)}
