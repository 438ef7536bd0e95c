"""Evaluate a checkpoint on LMDB benchmarks with the standard protocol (SPEC §6).

``--eval_data`` is either one LMDB (a directory holding data.mdb) or a root holding benchmark folders
named as in SPEC §6 (IIIT5k_3000, SVT, …, MPSC, ArbitText). With a root, the benchmarks found there are
evaluated in the standard order, missing ones are listed, and any other LMDB below the root is evaluated
afterwards under its relative path (unless --benchmark_all_eval restricts the run to the benchmark list).
Predictions and labels are compared after lowercasing and keeping [0-9a-z] only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from benchmarks import BENCHMARKS, SetResult, compute_totals, evaluate_set, format_table, resolve_eval_sets, write_predictions
from char_attention import evaluate_char_attention, format_char_attention, load_char_boxes_for_sets
from inference import Recognizer
from utils import MEMORY_FORMATS, retain_freed_cpu_memory

def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py, or the authors' released SIGA_R checkpoint")
    parser.add_argument("--eval_data", required=True, help="one LMDB, or a root holding benchmark folders")
    parser.add_argument("--benchmark_all_eval", action="store_true",
                        help="evaluate only the benchmark list of SPEC §6 under --eval_data (no other LMDBs)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the checkpoint's eval batch size")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for inference")
    parser.add_argument("--channels_last", choices=MEMORY_FORMATS, default="auto",
                        help="convolutions in channels_last (auto: on CPU)")
    parser.add_argument("--save_predictions", metavar="CSV", help="write per-sample predictions to this CSV file")
    parser.add_argument("--json", metavar="PATH", help="write the table (per set and totals) as JSON")
    parser.add_argument("--char_boxes", metavar="JSON", help="ground-truth character boxes keyed by 1-based sample "
                        "index (e.g. ../shared/data/IIIT5k_train_2000_charbounds.json): also report how often "
                        "decoding step i's attention peaks inside character i's box (README, Character attention)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be positive")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    retain_freed_cpu_memory()
    if not Path(args.eval_data).exists():
        parser.error(f"evaluation data not found: {args.eval_data}")
    try:
        eval_sets, missing = resolve_eval_sets(args.eval_data, args.benchmark_all_eval)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    try:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, args.device, args.amp, args.channels_last)
    except ValueError as error:
        parser.error(str(error))
    model, tokenizer, config, device = recognizer.model, recognizer.tokenizer, recognizer.config, recognizer.device
    batch_size = args.batch_size or config.eval_batch_size
    amp_dtype = recognizer.amp_dtype
    try:
        boxes = load_char_boxes_for_sets(args.char_boxes, tokenizer, eval_sets) if args.char_boxes else None
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    results: list[SetResult] = []
    for eval_set in eval_sets:
        print(f"evaluating {eval_set.name} ...", file=sys.stderr, flush=True)
        try:
            set_result = evaluate_set(model, tokenizer, config, eval_set, device, batch_size, args.workers, amp_dtype,
                                      keep_predictions=bool(args.save_predictions))
        except (FileNotFoundError, ValueError) as error:  # e.g. an LMDB without a valid num-samples
            print(f"error: {eval_set.name}: {error}", file=sys.stderr)
            return 1
        for index, reason in set_result.unreadable:
            print(f"warning: {eval_set.name}: sample {index} unreadable ({reason}), counted as wrong", file=sys.stderr)
        results.append(set_result)

    rows = [r.row() for r in results]
    totals = compute_totals(results)
    print(f"checkpoint {args.checkpoint} ({config.model}, {len(tokenizer.charset)} characters); "
          f"eval data {args.eval_data}")
    print(format_table(rows, list(totals.values())))
    # A root without any benchmark folder is a custom collection: listing 12 missing names would be noise.
    shown_missing = missing if (args.benchmark_all_eval or len(missing) < len(BENCHMARKS)) else []
    if shown_missing:
        print(f"missing: {', '.join(shown_missing)}")
    attention = []
    if boxes is not None:
        print("tracing the attention of every decoding step ...", file=sys.stderr, flush=True)
        attention = [evaluate_char_attention(model, tokenizer, config, eval_set, boxes, device, batch_size,
                                             args.workers, amp_dtype) for eval_set in eval_sets]
        print(format_char_attention(attention))
    if args.save_predictions:
        write_predictions(args.save_predictions, results)
        print(f"predictions written to {args.save_predictions}")
    if args.json:
        report = {"checkpoint": str(args.checkpoint), "eval_data": str(args.eval_data), "datasets": rows,
                  "totals": totals, "missing": shown_missing}
        if attention:
            report["char_attention"] = [tally.row() for tally in attention]
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
