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

from inference import add_inference_arguments, image_paths_for_cli, load_model_for_cli, readable_images, recognize, unreadable_report
from utils import retain_freed_cpu_memory


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py, or the authors' released SIGA_R checkpoint")
    parser.add_argument("--images", nargs="+", required=True, help="image files, directories or glob patterns")
    parser.add_argument("--batch_size", type=int, default=32)
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be positive")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    retain_freed_cpu_memory()
    model, tokenizer, config, device = load_model_for_cli(parser, args.checkpoint, args.device, args.channels_last)
    paths = image_paths_for_cli(args.images)
    if not paths:
        return 1
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None

    read = 0
    readable = readable_images(paths)
    while batch := list(itertools.islice(readable, args.batch_size)):
        names, images = zip(*batch)
        read += len(images)
        recognitions = recognize(model, tokenizer, config, list(images), device, args.batch_size, amp_dtype)
        for name, recognition in zip(names, recognitions):
            print(f"{name}\t{recognition.text}\t{recognition.confidence:.4f}", flush=True)
    return unreadable_report(read, len(paths))

if __name__ == "__main__":
    sys.exit(main())
