"""Recognise the text in image files with a trained checkpoint.

``--images`` takes files, directories (their png/jpg/jpeg/bmp/tif/tiff/webp/gif files, in natural order)
and glob patterns. One line per readable image is printed: ``path<TAB>prediction<TAB>confidence``.
Unreadable files are reported on stderr and skipped; the exit status is non-zero only when no image
could be read.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch

from inference import Recognizer, image_paths_for_cli, readable_images, unreadable_report
from utils import MEMORY_FORMATS, retain_freed_cpu_memory


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py, or the authors' released SIGA_R checkpoint")
    parser.add_argument("--images", nargs="+", required=True, help="image files, directories or glob patterns")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for inference")
    parser.add_argument("--channels_last", choices=MEMORY_FORMATS, default="auto",
                        help="convolutions in channels_last (auto: on CPU)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be positive")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    retain_freed_cpu_memory()
    try:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, args.device, args.amp, args.channels_last,
                                                args.batch_size)
    except ValueError as error:
        parser.error(str(error))
    paths = image_paths_for_cli(args.images)
    if not paths:
        return 1

    read = 0
    readable = readable_images(paths)
    while batch := list(itertools.islice(readable, args.batch_size)):
        names, images = zip(*batch)
        read += len(images)
        recognitions = recognizer.read(images)
        for name, recognition in zip(names, recognitions):
            print(f"{name}\t{recognition.text}\t{recognition.confidence:.4f}", flush=True)
    return unreadable_report(read, len(paths))


if __name__ == "__main__":
    sys.exit(main())
