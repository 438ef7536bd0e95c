"""Precompute the K-means text masks (SPEC §1.4a, §1.5, §10.3) of every image LMDB under a root.

Usage:
    python -m mask_create.generate_mask --image_root ROOT --mask_root OUT [--workers N] [--shard_size 2000]
                                        [--seed 0] [--no_progress]

Every LMDB leaf ``ROOT/<rel>`` gets one mask LMDB at ``OUT/<rel>``, the path ``dataset.mirror_mask_path``
(and so ``train.py --train_data ROOT --mask_root OUT``) opens. It holds ``mask-%09d`` for every index
1..N of the image LMDB (the official generator missed index N, bug #26) and ``num-samples`` = N. A mask
is the PNG of the {0, 1} uint8 K-means mask at the image's original resolution, computed exactly as the
dataset's on-the-fly fallback does: the stored bytes decoded to RGB (``lmdb_io.decode_image``), then
converted to "L" (``text_mask_from_pil``). The K-means restarts of index i are drawn from ``seed + i``
(:func:`mask_seed`), so the output depends neither on the number of workers nor on the order shards finish in.

Work is split into shards of ``--shard_size`` consecutive indices run by a pool of ``--workers``
processes. Shard k of a leaf is written to its own LMDB in ``OUT/.mask_shards/<rel>/`` and a JSON
done-marker next to it is written only once the shard is complete. An interrupted run, started again
with the same arguments, reuses every shard whose marker matches (it prints "K of M shards already
done") and recomputes the others. When all shards of a leaf are done they are merged and verified
(``mask_create.merge``), the mask LMDB's ``data.mdb`` is moved into place and the leaf's shard folder
is deleted. A leaf whose mask LMDB already exists with ``num-samples`` = N is skipped as complete; any
other LMDB already at ``OUT/<rel>`` is an error (it is never overwritten).

Failures:
* an image whose key is missing or that PIL cannot decode is reported (LMDB path, index, reason),
  counted and gets no mask key; the dataset skips such a sample anyway, before it looks for a mask.
* an image of 1×1 pixel (both sides < 2, which the official generator skipped) gets an all-zero mask,
  the K-means rule being undefined for a single pixel, so that all N keys exist; images with only one
  side < 2 go through the rule as usual.
* any other exception in a worker stops the run (exit status 1) with a message naming the leaf and the
  shard; finished shards are kept for the next run.

A summary line per leaf gives N, masks written, images skipped, all-zero tiny masks and seconds.
Exit status: 0 done (skipped images included), 1 failure, 2 bad arguments or no image LMDB found,
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType
from pathlib import Path
from typing import TextIO

import lmdb
import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset import mirror_mask_path
from lmdb_io import (IMAGE_KEY, MASK_KEY, LmdbWriter, UndecodableImage, decode_image, encode_png, find_lmdb_leaves,
                     is_lmdb_dir, open_lmdb, read_num_samples)
from mask_create.merge import MergeError, merge_shards
from modules.kmeans_mask import text_mask_from_pil

WORK_DIR_NAME = ".mask_shards"


class GenerationError(RuntimeError):
    """A leaf cannot be processed (unreadable image LMDB, foreign mask LMDB in the way, failed shard)."""


class UsageError(ValueError):
    """The arguments cannot work (nested roots, a shard size below 1, a negative seed)."""


def mask_seed(seed: int, index: int) -> int:
    """Seed of the K-means restarts of sample ``index`` (1-based) under the run seed ``seed``."""
    return seed + index


def plan_shards(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """Inclusive 1-based index ranges (first, last) of the shards covering 1..N, N included."""
    if shard_size < 1:
        raise UsageError(f"shard_size must be >= 1, got {shard_size}")
    return [(first, min(first + shard_size - 1, num_samples)) for first in range(1, num_samples + 1, shard_size)]


@dataclass(frozen=True)
class ShardTask:
    """Indices first..last (inclusive) of the image LMDB ``leaf``, written to the LMDB ``shard_dir``."""

    leaf: str
    shard_dir: str
    first: int
    last: int
    seed: int

    @property
    def marker(self) -> Path:
        """The done-marker: a JSON copy of the shard's :class:`ShardResult`, written last."""
        return Path(self.shard_dir + ".done.json")


@dataclass
class ShardResult:
    """What a finished shard wrote: masks, all-zero masks of 1×1 images, and (index, reason) skips."""

    first: int
    last: int
    seed: int
    written: int
    tiny: int
    skipped: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class LeafSummary:
    """The outcome for one image LMDB."""

    leaf: Path
    mask_path: Path
    num_samples: int
    written: int = 0
    tiny: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    shards: int = 0
    reused_shards: int = 0
    seconds: float = 0.0
    already_complete: bool = False


def image_mask(image: Image.Image, seed: int) -> tuple[np.ndarray, bool]:
    """The uint8 {0,1} mask of ``image`` and whether it is the all-zero mask of a 1×1 image."""
    if image.width < 2 and image.height < 2:
        return np.zeros((image.height, image.width), np.uint8), True
    return text_mask_from_pil(image, seed).astype(np.uint8), False


def _run_shard(task: ShardTask) -> ShardResult:
    """Write the masks of one shard to a fresh LMDB, then its done-marker."""
    shard_dir = Path(task.shard_dir)
    task.marker.unlink(missing_ok=True)
    if shard_dir.exists():
        shutil.rmtree(shard_dir)  # an unfinished attempt
    result = ShardResult(task.first, task.last, task.seed, 0, 0)
    env = open_lmdb(task.leaf)
    writer = LmdbWriter(shard_dir, commit_every=500)
    try:
        with env.begin(write=False) as txn:
            for index in range(task.first, task.last + 1):
                data = txn.get((IMAGE_KEY % index).encode())
                if data is None:
                    result.skipped.append((index, f"missing key {IMAGE_KEY % index}"))
                    continue
                try:
                    image = decode_image(data)
                except UndecodableImage as error:
                    result.skipped.append((index, str(error)))
                    continue
                mask, tiny = image_mask(image, mask_seed(task.seed, index))
                writer.put(MASK_KEY % index, encode_png(mask))
                result.written += 1
                result.tiny += tiny
    finally:
        writer.close(result.written)
        env.close()
    temporary = task.marker.with_name(task.marker.name + ".tmp")
    temporary.write_text(json.dumps(result.__dict__))
    os.replace(temporary, task.marker)
    return result


def generate_shard(task: ShardTask) -> ShardResult:
    """Pool entry point: :func:`_run_shard`, any failure re-raised as a message naming leaf and shard."""
    try:
        return _run_shard(task)
    except Exception as error:  # re-raised with context: the main process must know which shard failed
        raise GenerationError(f"{task.leaf}: shard {task.first}-{task.last} failed with "
                              f"{error.__class__.__name__}: {error}\n{traceback.format_exc()}") from None


def load_done_shard(task: ShardTask) -> ShardResult | None:
    """The recorded result of a shard finished by an earlier run with the same range and seed, or None."""
    if not task.marker.is_file() or not is_lmdb_dir(task.shard_dir):
        return None
    try:
        record = json.loads(task.marker.read_text())
        result = ShardResult(int(record["first"]), int(record["last"]), int(record["seed"]), int(record["written"]),
                             int(record["tiny"]), [(int(i), str(reason)) for i, reason in record["skipped"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable marker: the shard is recomputed
    if (result.first, result.last, result.seed) != (task.first, task.last, task.seed):
        return None
    return result


def existing_count(path: Path) -> int | None:
    """``num-samples`` of an existing LMDB, or None when it has none (or an unreadable one)."""
    env = open_lmdb(path)
    try:
        return read_num_samples(env, path)
    except ValueError:
        return None
    finally:
        env.close()


def shard_tasks(leaf: Path, final: Path, mask_root: Path, num_samples: int, seed: int,
                shard_size: int) -> tuple[Path, list[ShardTask]]:
    """The shard folder ``OUT/.mask_shards/<rel>`` of the mask LMDB ``final`` and the leaf's shard tasks."""
    work = mask_root / WORK_DIR_NAME / final.relative_to(mask_root)
    tasks = [ShardTask(str(leaf), str(work / f"shard-{first:09d}-{last:09d}"), first, last, seed)
             for first, last in plan_shards(num_samples, shard_size)]
    return work, tasks


def generate_leaf(leaf: Path, image_root: Path, mask_root: Path, seed: int, shard_size: int,
                  pool: PoolType | None, out: TextIO | None = None, progress: bool = True) -> LeafSummary:
    """Masks of one image LMDB: run the missing shards (on ``pool``, or in this process), merge, verify.

    Notes go to ``out`` (default: the current ``sys.stdout``).
    """
    out = out or sys.stdout
    start = time.perf_counter()
    try:
        final = mirror_mask_path(leaf, image_root, mask_root)
    except ValueError as error:  # a symlinked leaf that resolves outside the image root
        raise GenerationError(f"{leaf}: its mask path cannot mirror the image tree: {error}") from error
    try:
        env = open_lmdb(leaf)
        try:
            num_samples = read_num_samples(env, leaf)
        finally:
            env.close()
    except (ValueError, lmdb.Error) as error:
        raise GenerationError(f"{leaf}: cannot read the image LMDB: {error}") from error
    summary = LeafSummary(leaf, final, num_samples)
    if is_lmdb_dir(final):
        count = existing_count(final)
        if count != num_samples:
            raise GenerationError(f"{final}: an LMDB already exists there with num-samples={count}, expected "
                                  f"{num_samples}; delete it to regenerate the masks of {leaf}")
        summary.already_complete = True
        summary.seconds = time.perf_counter() - start
        return summary
    work, tasks = shard_tasks(leaf, final, mask_root, num_samples, seed, shard_size)
    work.mkdir(parents=True, exist_ok=True)
    results = {task.first: load_done_shard(task) for task in tasks}
    pending = [task for task in tasks if results[task.first] is None]
    summary.shards, summary.reused_shards = len(tasks), len(tasks) - len(pending)
    label = str(final.relative_to(mask_root))
    if summary.reused_shards:
        print(f"{label}: {summary.reused_shards} of {len(tasks)} shards already done", file=out, flush=True)
    done_images = sum(task.last - task.first + 1 for task in tasks if results[task.first] is not None)
    with tqdm(total=num_samples, initial=done_images, desc=label, unit="img", disable=not progress) as bar:
        finished = pool.imap_unordered(generate_shard, pending) if pool is not None else map(generate_shard, pending)
        for result in finished:
            results[result.first] = result
            bar.update(result.last - result.first + 1)
    for result in results.values():
        summary.written += result.written
        summary.tiny += result.tiny
        summary.skipped.extend(result.skipped)
    summary.skipped.sort()
    try:
        merged = merge_shards([task.shard_dir for task in tasks], final, num_samples,
                              [index for index, _ in summary.skipped])
    except MergeError as error:
        raise GenerationError(f"{leaf}: merging the shards in {work} failed: {error}") from error
    if merged != summary.written:
        raise GenerationError(f"{leaf}: the shards hold {merged} masks but reported {summary.written}")
    shutil.rmtree(work)
    summary.seconds = time.perf_counter() - start
    return summary


def _remove_empty_dirs(top: Path) -> None:
    """Delete ``top`` and its sub-folders bottom-up where they are empty (the emptied shard tree)."""
    if not top.is_dir():
        return
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(Path(entry[0]).parts)):
        if not any(Path(directory).iterdir()):
            Path(directory).rmdir()


def report(summary: LeafSummary, out: TextIO | None = None) -> None:
    """Print the skipped images of a leaf, then its summary line, to ``out`` (default: ``sys.stdout``)."""
    out = out or sys.stdout
    for index, reason in summary.skipped:
        print(f"skipped {summary.leaf} index {index}: {reason}", file=out)
    if summary.already_complete:
        print(f"{summary.leaf}: mask LMDB {summary.mask_path} already complete (num-samples={summary.num_samples}), "
              f"left unchanged", file=out, flush=True)
        return
    print(f"{summary.leaf}: N={summary.num_samples} masks={summary.written} skipped={len(summary.skipped)} "
          f"tiny={summary.tiny} shards={summary.shards} (reused {summary.reused_shards}) "
          f"{summary.seconds:.1f}s -> {summary.mask_path}", file=out, flush=True)


def check_roots(image_root: Path, mask_root: Path) -> None:
    """Refuse a mask root equal to, inside or containing the image root (masks would mix with images)."""
    image, mask = image_root.resolve(), mask_root.resolve()
    if image == mask or image in mask.parents or mask in image.parents:
        raise UsageError(f"--mask_root {mask_root} and --image_root {image_root} must not contain each other")


def generate_masks(image_root: str | os.PathLike, mask_root: str | os.PathLike, workers: int | None = None,
                   shard_size: int = 2000, seed: int = 0, out: TextIO | None = None,
                   progress: bool = True) -> list[LeafSummary]:
    """Mask LMDBs for every image LMDB under ``image_root`` (see the module docstring); one summary each.

    Raises ``FileNotFoundError`` when no image LMDB is found, :class:`UsageError` for nested roots and
    :class:`GenerationError` when a leaf fails.
    """
    image_root, mask_root = Path(image_root), Path(mask_root)
    workers = workers or os.cpu_count() or 1
    if shard_size < 1 or seed < 0:
        raise UsageError(f"shard_size must be >= 1 and seed >= 0, got {shard_size} and {seed}")
    check_roots(image_root, mask_root)
    leaves = find_lmdb_leaves(image_root)
    summaries = []
    pool = Pool(workers) if workers > 1 else None
    try:
        for leaf in leaves:
            summary = generate_leaf(leaf, image_root, mask_root, seed, shard_size, pool, out, progress)
            report(summary, out)
            summaries.append(summary)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    _remove_empty_dirs(mask_root / WORK_DIR_NAME)
    return summaries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv``), checked so that a bad value fails before any work."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_root", required=True, help="an image LMDB, or a folder searched for them")
    parser.add_argument("--mask_root", required=True, help="root of the mask LMDBs (mirrors --image_root)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: the number of CPUs); 1 runs in this process")
    parser.add_argument("--shard_size", type=int, default=2000, help="consecutive indices per shard")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses the K-means seed seed + i")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.shard_size < 1:
        parser.error(f"--shard_size must be >= 1, got {args.shard_size}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (numpy seeds are non-negative), got {args.seed}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate the masks; the exit status of the module docstring."""
    args = parse_args(argv)
    try:
        summaries = generate_masks(args.image_root, args.mask_root, args.workers, args.shard_size, args.seed,
                                   progress=not args.no_progress)
    except (FileNotFoundError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (GenerationError, lmdb.Error, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept, run the same command again to resume", file=sys.stderr)
        return 130
    written = sum(s.written for s in summaries)
    skipped = sum(len(s.skipped) for s in summaries)
    print(f"done: {len(summaries)} image LMDB(s), {written} mask(s) written, {skipped} image(s) skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
