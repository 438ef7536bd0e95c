"""Merge shard mask LMDBs into one mask LMDB and verify that every index is covered exactly once.

Usage:
    python -m mask_create.merge --shards DIR [DIR ...] --out OUT --num_samples N [--skipped I [I ...]]

Each ``--shards`` argument is either one shard LMDB (a directory holding ``data.mdb``) or a folder
whose LMDBs (found recursively) are all taken as shards. Every ``mask-%09d`` key of every shard is
copied into a new LMDB at ``--out`` and ``num-samples`` is set to N (the size of the *image* LMDB,
SPEC §10.3; the official merge kept the last shard's count, bug #26). Other keys of the shards
(their own ``num-samples``) are not copied.

Before anything is written the shard keys are checked: each index 1..N must occur exactly once,
except the ``--skipped`` ones (images the generator could not decode), which must not occur at all;
an index outside 1..N, a duplicate or a malformed ``mask-*`` key is an error too. The output is built
in ``OUT/.partial`` and its ``data.mdb`` moved into place only when complete, so an interrupted
merge never leaves a plausible-looking mask LMDB behind. An existing LMDB at ``OUT`` is not replaced.

Exit status: 0 merged, 1 verification or I/O failure, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import lmdb

from lmdb_io import LmdbWriter, find_lmdb_leaves, is_lmdb_dir, open_lmdb

MASK_KEY_PATTERN = re.compile(rb"^mask-(\d{9})$")
MAX_LISTED = 10


class MergeError(ValueError):
    """The shards do not cover 1..N exactly once (minus the skipped indices), or a key is malformed."""


def collect_shard_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Shard LMDBs named by ``paths``: an LMDB directory is itself, a folder gives its LMDB leaves."""
    shards: list[Path] = []
    for path in map(Path, paths):
        shards.extend([path] if is_lmdb_dir(path) else find_lmdb_leaves(path))
    return shards


def _listed(indices: Sequence[int]) -> str:
    """The first few indices of a list, for error messages."""
    head = ", ".join(map(str, indices[:MAX_LISTED]))
    return head + (f", ... ({len(indices)} in all)" if len(indices) > MAX_LISTED else "")


def scan_shards(shard_dirs: Sequence[Path]) -> dict[int, Path]:
    """Map every mask index found in the shards to its shard; duplicates and bad keys raise."""
    owner: dict[int, Path] = {}
    for shard in shard_dirs:
        env = open_lmdb(shard)
        try:
            with env.begin(write=False) as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    if not key.startswith(b"mask-"):
                        continue
                    match = MASK_KEY_PATTERN.match(key)
                    if match is None:
                        raise MergeError(f"{shard}: malformed mask key {key!r}")
                    index = int(match.group(1))
                    if index in owner:
                        raise MergeError(f"mask index {index} is in two shards: {owner[index]} and {shard}")
                    owner[index] = shard
        finally:
            env.close()
    return owner


def check_coverage(found: Iterable[int], num_samples: int, skipped: Iterable[int] = ()) -> None:
    """Raise :class:`MergeError` unless ``found`` ∪ ``skipped`` is exactly {1..N} and they are disjoint."""
    found, skipped = set(found), set(skipped)
    expected = set(range(1, num_samples + 1))
    problems = []
    outside = sorted((found | skipped) - expected)
    if outside:
        problems.append(f"indices outside 1..{num_samples}: {_listed(outside)}")
    both = sorted(found & skipped)
    if both:
        problems.append(f"indices reported as skipped but present: {_listed(both)}")
    missing = sorted(expected - found - skipped)
    if missing:
        problems.append(f"missing mask indices: {_listed(missing)}")
    if problems:
        raise MergeError(f"shards do not cover 1..{num_samples} exactly once: " + "; ".join(problems))


def merge_shards(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, num_samples: int,
                 skipped: Iterable[int] = ()) -> int:
    """Copy the ``mask-*`` keys of ``shard_dirs`` into a new LMDB at ``out_dir`` with ``num-samples`` = N.

    The coverage of 1..N is verified first (see the module docstring); returns the number of masks
    copied. Raises :class:`MergeError` on a coverage problem and ``FileExistsError`` if ``out_dir``
    already holds an LMDB.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    out_dir = Path(out_dir)
    if is_lmdb_dir(out_dir):
        raise FileExistsError(f"{out_dir}: an LMDB already exists there; not replacing it")
    shards = [Path(shard) for shard in shard_dirs]
    owner = scan_shards(shards)
    check_coverage(owner, num_samples, skipped)
    partial = out_dir / ".partial"
    if partial.exists():
        shutil.rmtree(partial)  # left over from an interrupted merge
    try:
        writer = LmdbWriter(partial)
        try:
            for shard in shards:
                env = open_lmdb(shard)
                try:
                    with env.begin(write=False) as txn:
                        for key, value in txn.cursor():
                            if MASK_KEY_PATTERN.match(key):
                                writer.put(key.decode("ascii"), value)
                finally:
                    env.close()
        finally:
            writer.close(num_samples)
        os.replace(partial / "data.mdb", out_dir / "data.mdb")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return len(owner)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv``), with a negative N refused."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True, metavar="DIR",
                        help="shard LMDBs, or folders whose LMDBs are all shards")
    parser.add_argument("--out", required=True, help="mask LMDB directory to create")
    parser.add_argument("--num_samples", type=int, required=True,
                        help="N = num-samples of the image LMDB; masks 1..N must all be present")
    parser.add_argument("--skipped", type=int, nargs="*", default=[], metavar="I",
                        help="indices allowed (and required) to have no mask: undecodable images")
    args = parser.parse_args(argv)
    if args.num_samples < 0:
        parser.error(f"--num_samples must be >= 0, got {args.num_samples}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Merge the shards; the exit status of the module docstring."""
    args = parse_args(argv)
    try:
        shards = collect_shard_dirs(args.shards)
        written = merge_shards(shards, args.out, args.num_samples, args.skipped)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (MergeError, FileExistsError, lmdb.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"merged {written} mask(s) from {len(shards)} shard(s) into {args.out} "
          f"(num-samples={args.num_samples}, skipped {len(args.skipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
