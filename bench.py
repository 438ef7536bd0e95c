"""Measure training and inference speed, memory and FLOPs of the models, as numbers and as ratios.

Everything is timed in one process with warm-up and medians of several repeats, the models interleaved
repeat by repeat, so ratios between models (``--compare``: SIGA_R time over TRBA time; ``--compare S``:
SIGA_S over TSBA; ``--compare T``: SIGA_T over VITBA; ``--compare all``: all three) and against the
machine's own large-matmul rate are comparable within one run; peak memory comes from a fresh process per
model and phase. ``--data`` adds the training data loader's throughput on the demo's varied crops.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch

from benchmarking import (BASELINES, DTYPES, bench_agreement, bench_loader, bench_setting, compare, matmul_gflops,
                          onnxruntime_skip_reason, precisions)
from config import SEG_RESOLUTIONS
from model import MODELS
from utils import MEMORY_FORMATS, retain_freed_cpu_memory

COMPARISONS = {"R": ["TRBA", "SIGA_R"], "S": ["TSBA", "SIGA_S"], "T": ["VITBA", "SIGA_T"],
               "all": ["TRBA", "SIGA_R", "TSBA", "SIGA_S", "VITBA", "SIGA_T"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TRBA", "SIGA_R"], choices=sorted(MODELS))
    parser.add_argument("--compare", nargs="?", const="R", choices=sorted(COMPARISONS),
                        help="a SIGA model and its baseline with their time ratios: R (SIGA_R/TRBA, the default), "
                             "S (SIGA_S/TSBA), T (SIGA_T/VITBA) or all")
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                        help="precisions to time (default: fp32, and bf16 where the device runs it natively; a CPU "
                             "without bf16 units skips the bf16 rows and says why)")
    parser.add_argument("--preset", default="paper", choices=["paper", "demo", "tiny"], help="model size")
    parser.add_argument("--two_stage", action="store_true",
                        help="SIGA_R/SIGA_S with a frozen TPS, as they train after their TPS stage (the paper's "
                             "two-stage recipe); the baselines train theirs")
    parser.add_argument("--seg_resolution", choices=SEG_RESOLUTIONS, help="SIGA_R's segmentation resolution")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--label_length", type=int, default=7, help="characters per synthetic label (mean word)")
    parser.add_argument("--decode_steps", type=int, default=None,
                        help="greedy steps per inference, never stopping early (default: label_length + 1, the steps "
                             "a trained model takes to read such a word; untrained weights would stop at random)")
    parser.add_argument("--channels_last", choices=MEMORY_FORMATS, default="auto",
                        help="memory format of the convolutions, as train.py/test.py (auto: channels_last on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", action="store_true", help="also measure the training loader on the demo's varied crops")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for --data")
    parser.add_argument("--agreement", metavar="CHECKPOINT",
                        help="instead of timing: how often bf16 and fp32 greedy predictions of this trained checkpoint "
                             "are identical on --eval_data")
    parser.add_argument("--eval_data", help="LMDB for --agreement")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.agreement and not args.eval_data:
        parser.error("--agreement needs --eval_data")
    if args.compare:
        args.models = COMPARISONS[args.compare]
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.decode_steps is None:
        args.decode_steps = args.label_length + 1
    return args


def print_table(results: list[dict], reference: dict) -> None:
    header = (f"{'model':8} {'device':6} {'dtype':5} {'train img/s':>11} {'infer img/s':>11} {'lat ms':>8} "
              f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'of matmul':>9} {'train MB':>9} {'infer MB':>9}")
    print(header)
    for row in results:
        peak = reference[f"{row['device']}/{row['dtype']}"]
        print(f"{row['model']:8} {row['device']:6} {row['dtype']:5} {row['train_images_per_second']:11.1f} "
              f"{row['infer_images_per_second']:11.1f} {row['latency_ms']:8.1f} {row['infer_gflops_per_image']:9.3f} "
              f"{row['infer_achieved_gflops']:8.1f} {row['infer_achieved_gflops'] / peak:9.0%} "
              f"{row['train_peak_memory_mb']:9.0f} {row['infer_peak_memory_mb']:9.0f}")


def print_onnxruntime(results: list[dict]) -> None:
    """The onnxruntime row of each model beside its PyTorch cpu/fp32 row (``benchmarking.OnnxWorkload``)."""
    print(f"onnxruntime {version('onnxruntime')} (CPUExecutionProvider, fp32, {torch.get_num_threads()} threads) "
          f"beside PyTorch on the CPU:")
    print(f"{'model':8} {'runtime':11} {'infer img/s':>11} {'lat ms':>8}")
    for row in results:
        if row["onnxruntime_images_per_second"] is not None:
            print(f"{row['model']:8} {'PyTorch':11} {row['infer_images_per_second']:11.1f} {row['latency_ms']:8.1f}")
            print(f"{row['model']:8} {'onnxruntime':11} {row['onnxruntime_images_per_second']:11.1f} "
                  f"{row['onnxruntime_latency_ms']:8.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    retain_freed_cpu_memory()
    if args.agreement:
        report = bench_agreement(args)
        print(f"bf16 vs fp32 on {report['eval_data']} ({report['samples']} images, {report['device']}): "
              f"{report['identical']} identical predictions ({report['identical_percent']:.2f} %; "
              f"{report['identical_percent_where_fp32_correct']:.2f} % of those fp32 reads correctly); accuracy "
              f"fp32 {report['accuracy_fp32']:.2f} %, bf16 {report['accuracy_bf16']:.2f} %")
        if report["changed_max_fp32_confidence"] is not None:
            print(f"the predictions bf16 changes have fp32 confidence ≤ {report['changed_max_fp32_confidence']:.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    results, reference, skipped_rows = [], {}, {}
    for device_name in args.device:
        device = torch.device(device_name)
        for dtype_name in precisions(args.dtypes, device, skipped_rows):
            dtype = DTYPES[dtype_name] or torch.float32
            size = 256 if args.preset == "tiny" else 2048
            reference[f"{device.type}/{dtype_name}"] = matmul_gflops(device, dtype, size, args.warmup, args.repeats)
            results.extend(bench_setting(args, device, dtype_name))
            print(f"measured {device.type} {dtype_name}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, batch "
          f"{args.batch_size}; medians of {args.repeats} after {args.warmup} warm-up")
    print_table(results, reference)
    for setting, reason in skipped_rows.items():
        print(f"{setting} rows skipped: {reason} (--dtypes fp32 bf16 times them anyway)")
    skipped = onnxruntime_skip_reason(args)
    if skipped:
        print(f"onnxruntime row skipped: {skipped}")
    else:
        print_onnxruntime(results)
    for key, value in reference.items():
        print(f"matmul reference {key}: {value:.1f} GFLOP/s")
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "preset": args.preset,
              "results": results, "matmul_gflops": reference, "skipped_rows": skipped_rows,
              "onnxruntime": {"skipped": skipped} if skipped else {"version": version("onnxruntime")}}
    first = next(iter(reference))
    report["ratios"] = {model: compare(results, model) for model, base in BASELINES.items()
                        if {model, base} <= set(args.models)}
    for model, by_setting in report["ratios"].items():
        if first in by_setting:
            print(f"{model} / {BASELINES[model]} time ({first}): "
                  + ", ".join(f"{k} {v:.2f}×" for k, v in by_setting[first].items()))
    if args.data:
        # imported here: the memory probes' spawned processes re-import this file, and the generator's
        # imports (matplotlib) would count in their peak memory
        from tools.synth import BUILTIN_SETS, build_builtin_data

        varied = BUILTIN_SETS["demo"][1]
        build_builtin_data(varied.split("images", "train"))
        report["data"] = bench_loader(args, varied.split("images", "train"), varied.split("masks", "train"))
        print(f"training loader, {args.workers} workers: {report['data']['images_per_second']:.0f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
