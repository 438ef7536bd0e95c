"""Build an LMDB in the clovaai layout from an image folder and a ground-truth file, or check one.

Build:  python -m tools.create_lmdb_dataset --input_dir IMGDIR --gt_file gt.txt --output OUTDIR
Check:  python -m tools.create_lmdb_dataset --check OUTDIR

Run it from the repository root (it imports the repository's modules).

Each non-empty line of the ground-truth file is ``relative/path<TAB>label`` or ``relative/path label``:
it is split on its first tab if it has one, else on its first space, so labels may contain spaces.
Image paths are relative to --input_dir. Missing or undecodable images and malformed lines are reported
and skipped. The LMDB holds ``num-samples`` and 1-based ``image-%09d`` / ``label-%09d`` keys.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lmdb_io import (IMAGE_KEY, LABEL_KEY, NUM_SAMPLES_KEY, LmdbWriter, UndecodableImage, decode_image,
                     find_lmdb_leaves, is_lmdb_dir, open_lmdb)

MAX_REPORTED = 50


@dataclass
class GtEntry:
    line_no: int
    path: str
    label: str


def parse_gt_line(line: str) -> tuple[str, str]:
    """(path, label) of one ground-truth line; ``ValueError`` with the reason when malformed."""
    separator = "\t" if "\t" in line else " "
    if separator not in line:
        raise ValueError("no tab or space between image path and label")
    path, label = line.split(separator, 1)
    if not path.strip():
        raise ValueError("empty image path")
    if label == "":
        raise ValueError("empty label")
    return path, label


def read_gt(gt_file: Path) -> tuple[list[GtEntry], list[tuple[int, str, str]]]:
    """Entries and malformed lines (line number, reason, text) of a ground-truth file (UTF-8, BOM allowed)."""
    entries, malformed = [], []
    with open(gt_file, encoding="utf-8-sig", newline="") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                path, label = parse_gt_line(line)
            except ValueError as error:
                malformed.append((line_no, str(error), line))
                continue
            entries.append(GtEntry(line_no, path, label))
    return entries, malformed


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a usable image, or None: the bytes are decoded exactly as the dataset decodes
    them (``lmdb_io.decode_image``), so what passes here is what training can read."""
    if not data:
        return "empty file"
    try:
        decode_image(data)
    except UndecodableImage as error:
        return str(error)
    return None


def create(input_dir: Path, gt_file: Path, output: Path, check_valid: bool = True, overwrite: bool = False,
           out=None) -> tuple[int, int]:
    """Write the LMDB; returns (written, skipped). Problems are printed to ``out`` (stdout) as they are found."""
    out = out or sys.stdout
    entries, malformed = read_gt(gt_file)
    for line_no, reason, text in malformed:
        print(f"{gt_file}:{line_no}: malformed line ({reason}): {text!r}", file=out)
    if is_lmdb_dir(output):
        if not overwrite:
            raise FileExistsError(f"{output}: an LMDB already exists there (use --overwrite to replace it)")
        for name in ("data.mdb", "lock.mdb"):
            (output / name).unlink(missing_ok=True)
    writer: LmdbWriter | None = None
    skipped = len(malformed)
    try:
        for entry in entries:
            image_path = input_dir / entry.path
            try:
                data = image_path.read_bytes()
            except FileNotFoundError:
                problem = "missing file"
            except OSError as error:
                problem = f"cannot read ({error.strerror or error})"
            else:
                problem = image_problem(data) if check_valid else (None if data else "empty file")
            if problem is not None:
                print(f"skipped {image_path} (line {entry.line_no}): {problem}", file=out)
                skipped += 1
                continue
            if writer is None:
                writer = LmdbWriter(output)
            writer.add_sample(data, entry.label)
    finally:
        if writer is not None:
            writer.close()
    written = writer.num_samples if writer is not None else 0
    return written, skipped


def check_lmdb(path: Path, out=None) -> list[str]:
    """Problems of one LMDB (an empty list when it is sound); notes go to ``out`` (stdout)."""
    out = out or sys.stdout
    problems: list[str] = []
    env = open_lmdb(path)
    try:
        with env.begin(write=False) as txn:
            raw = txn.get(NUM_SAMPLES_KEY)
            if raw is None:
                return ["no 'num-samples' key"]
            try:
                total = int(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return [f"'num-samples' is not an integer: {raw!r}"]
            if total < 0:
                return [f"'num-samples' is negative: {total}"]
            for index in range(1, total + 1):
                image_bytes = txn.get((IMAGE_KEY % index).encode())
                label_bytes = txn.get((LABEL_KEY % index).encode())
                if image_bytes is None:
                    problems.append(f"index {index}: missing key {IMAGE_KEY % index}")
                else:
                    problem = image_problem(image_bytes)
                    if problem:
                        problems.append(f"index {index}: {problem}")
                if label_bytes is None:
                    problems.append(f"index {index}: missing key {LABEL_KEY % index}")
                else:
                    try:
                        label_bytes.decode("utf-8")
                    except UnicodeDecodeError as error:
                        problems.append(f"index {index}: label is not UTF-8 ({error.reason} at byte {error.start})")
            extra = 0
            pattern = re.compile(rb"^(image|label)-(\d{9})$")
            for key in txn.cursor().iternext(keys=True, values=False):
                match = pattern.match(key)
                if match and int(match.group(2)) > total:
                    extra += 1
            if extra:
                print(f"warning: {path}: {extra} image/label key(s) beyond num-samples={total}", file=out)
    finally:
        env.close()
    print(f"{path}: num-samples={total}", file=out)
    return problems


def run_check(target: Path, out=None) -> int:
    """Check one LMDB or every LMDB below ``target``; 0 when all are sound, 1 otherwise, 2 if none found."""
    out = out or sys.stdout
    if not target.exists():
        print(f"error: {target}: does not exist", file=sys.stderr)
        return 2
    try:
        leaves = [target] if is_lmdb_dir(target) else find_lmdb_leaves(target)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = 0
    for leaf in leaves:
        try:
            problems = check_lmdb(leaf, out)
        except Exception as error:  # lmdb.Error and friends: the file itself is broken
            problems = [f"cannot read the LMDB ({error.__class__.__name__}: {error})"]
        for problem in problems[:MAX_REPORTED]:
            print(f"{leaf}: {problem}", file=out)
        if len(problems) > MAX_REPORTED:
            print(f"{leaf}: ... and {len(problems) - MAX_REPORTED} more problem(s)", file=out)
        print(f"{leaf}: {'OK' if not problems else f'FAILED, {len(problems)} problem(s)'}", file=out)
        failed += bool(problems)
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (default ``sys.argv``): building needs the three paths, ``--check`` excludes them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", help="folder the ground-truth image paths are relative to")
    parser.add_argument("--gt_file", help="ground-truth file: 'path<TAB>label' or 'path label' per line")
    parser.add_argument("--output", help="LMDB directory to create")
    parser.add_argument("--check_valid", action=argparse.BooleanOptionalAction, default=True,
                        help="decode every image and skip undecodable ones (default: on)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at --output")
    parser.add_argument("--check", metavar="LMDB", help="validate an existing LMDB (or every LMDB below a folder)")
    args = parser.parse_args(argv)
    if args.check is not None:
        if any(v is not None for v in (args.input_dir, args.gt_file, args.output)):
            parser.error("--check cannot be combined with --input_dir/--gt_file/--output")
        return args
    missing = [f"--{n}" for n in ("input_dir", "gt_file", "output") if getattr(args, n) is None]
    if missing:
        parser.error(f"the following arguments are required to build an LMDB: {', '.join(missing)} (or use --check)")
    if not Path(args.input_dir).is_dir():
        parser.error(f"input directory not found: {args.input_dir}")
    if not Path(args.gt_file).is_file():
        parser.error(f"ground-truth file not found: {args.gt_file}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build or check; 0 on success, 1 when nothing was written or a check failed, 2 on bad input."""
    args = parse_args(argv)
    if args.check is not None:
        return run_check(Path(args.check))
    try:
        written, skipped = create(Path(args.input_dir), Path(args.gt_file), Path(args.output), args.check_valid,
                                  args.overwrite)
    except (FileExistsError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"written {written} sample(s) to {args.output}, skipped {skipped}")
    if written == 0:
        print("error: no sample was written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
