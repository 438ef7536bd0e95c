"""Recognise the text in image files with a trained checkpoint.

``--images`` takes files, directories (their png/jpg/jpeg/bmp/tif/tiff/webp/gif files, in natural order)
and glob patterns. One line per readable image is printed: ``path<TAB>prediction<TAB>confidence``.
Unreadable files are reported on stderr and skipped; the exit status is non-zero only when no image
could be read.
"""
from __future__ import annotations

import argparse
import sys

import torch

from inference import expand_image_paths, load_image, load_model_for_cli, recognize


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py, or the authors' released SIGA_R checkpoint")
    parser.add_argument("--images", nargs="+", required=True, help="image files, directories or glob patterns")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for inference")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be positive")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    model, tokenizer, config, device = load_model_for_cli(parser, args.checkpoint, args.device)
    paths, unmatched = expand_image_paths(args.images)
    for spec in unmatched:
        print(f"warning: {spec}: no such file, or no image files match", file=sys.stderr)
    if not paths:
        print("error: no image files found", file=sys.stderr)
        return 1
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None

    read = 0
    for start in range(0, len(paths), args.batch_size):
        names, images = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                images.append(load_image(path))
                names.append(path)
            except Exception as error:  # any decoding failure of one file: report it and go on
                print(f"skipped {path}: unreadable image ({error.__class__.__name__}: {error})", file=sys.stderr)
        if not images:
            continue
        read += len(images)
        recognitions = recognize(model, tokenizer, config, images, device, args.batch_size, amp_dtype)
        for name, recognition in zip(names, recognitions):
            print(f"{name}\t{recognition.text}\t{recognition.confidence:.4f}", flush=True)
    if read == 0:
        print(f"error: none of the {len(paths)} file(s) could be read as an image", file=sys.stderr)
        return 1
    if read < len(paths):
        print(f"{len(paths) - read} of {len(paths)} file(s) skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
