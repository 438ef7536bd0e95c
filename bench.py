"""Measure training and inference speed, memory and FLOPs of TRBA and SIGA_R, as numbers and as ratios.

Everything is timed in one process with warm-up and medians of several repeats, so ratios between
models (``--compare``: SIGA_R time over TRBA time) and against the machine's own large-matmul rate are
comparable within one run. ``--data`` adds the training data loader's throughput on the demo data.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from distributed import DistEnv
from model import build_model
from utils import Config, Tokenizer, make_config

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TRBA", "SIGA_R"], choices=["TRBA", "SIGA_R"])
    parser.add_argument("--compare", action="store_true", help="TRBA and SIGA_R, with SIGA_R/TRBA time ratios")
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--preset", default="paper", choices=["paper", "demo", "tiny"], help="model size")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--label_length", type=int, default=7, help="characters per synthetic label (mean word)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", action="store_true", help="also measure the training loader on the demo data")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for --data")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.compare:
        args.models = ["TRBA", "SIGA_R"]
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def median_seconds(run: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``run`` after ``warmup`` calls (device work included)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak resident set (monotone)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_batch(config: Config, tokenizer: Tokenizer, batch_size: int, label_length: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Normalised images, {0,1} masks and labels of ``label_length`` characters (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, config.img_h, config.img_w, generator=generator).to(device)
    masks = (torch.rand(batch_size, 1, config.img_h, config.img_w, generator=generator) > 0.7).float().to(device)
    rng = np.random.default_rng(0)
    labels = ["".join(rng.choice(list(tokenizer.charset), label_length)) for _ in range(batch_size)]
    return images, masks, labels


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, warmup: int, repeats: int) -> float:
    """The machine's reference rate: a large square matmul in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = median_seconds(lambda: a @ b, device, warmup, repeats)
    return 2 * size**3 / seconds / 1e9


def forward_flops(model: torch.nn.Module, run: Callable[[], object]) -> int:
    """FLOPs of one call: matmuls and convolutions from ``FlopCounterMode`` plus the ``nn.LSTM`` layers
    it does not see (fp32, no autograd: the count does not depend on dtype)."""
    lstm_flops = []

    def count_lstm(module: torch.nn.LSTM, inputs: tuple, output) -> None:
        sequence = inputs[0]
        batch, steps = (sequence.shape[0], sequence.shape[1]) if module.batch_first else sequence.shape[1::-1]
        directions = 2 if module.bidirectional else 1
        per_step = 0
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else module.hidden_size * directions
            per_step += 2 * 4 * module.hidden_size * (width + module.hidden_size) * directions
        lstm_flops.append(per_step * batch * steps)

    hooks = [m.register_forward_hook(count_lstm) for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() + sum(lstm_flops)


def bench_model(name: str, args: argparse.Namespace, device: torch.device, dtype_name: str) -> dict:
    """Training step, inference and batch-1 latency of one model on one device in one precision."""
    from dataset import Batch
    from train import Trainer

    config = make_config(args.preset, model=name, batch_size=args.batch_size)
    tokenizer = Tokenizer.from_config(config)
    torch.manual_seed(config.seed)
    model = build_model(config, tokenizer).to(device)
    dtype = DTYPES[dtype_name]
    images, masks, labels = synthetic_batch(config, tokenizer, args.batch_size, args.label_length, device)
    batch = Batch(images, masks if getattr(model, "needs_masks", False) else None, labels, [])
    trainer = Trainer(model, config, tokenizer, DistEnv(device=device), dtype, sync_bn=False)
    reset_peak_memory(device)
    train_seconds = median_seconds(lambda: trainer.step(batch, 0, 1.0), device, args.warmup, args.repeats)
    train_memory = peak_memory_mb(device)

    model.eval()

    @torch.inference_mode()
    def infer(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(inputs).logits

    reset_peak_memory(device)
    infer_seconds = median_seconds(lambda: infer(images), device, args.warmup, args.repeats)
    infer_memory = peak_memory_mb(device)
    latency_seconds = median_seconds(lambda: infer(images[:1]), device, args.warmup, max(args.repeats, 5))
    flops_per_image = forward_flops(model, lambda: model(images)) / args.batch_size
    infer_rate = args.batch_size / infer_seconds
    return {"model": name, "device": device.type, "dtype": dtype_name, "batch_size": args.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_images_per_second": args.batch_size / train_seconds, "train_step_ms": 1e3 * train_seconds,
            "infer_images_per_second": infer_rate, "infer_batch_ms": 1e3 * infer_seconds,
            "latency_ms": 1e3 * latency_seconds, "train_peak_memory_mb": train_memory,
            "infer_peak_memory_mb": infer_memory, "infer_gflops_per_image": flops_per_image / 1e9,
            "infer_achieved_gflops": flops_per_image * infer_rate / 1e9}


def bench_loader(args: argparse.Namespace) -> dict:
    """Training loader throughput (SIGA_R data: images, stored masks, augmentation) on the demo data."""
    from train import DEMO_ROOT, demo_data_paths, ensure_demo_data, make_train_loader

    ensure_demo_data()
    train_root, valid_root, mask_root = demo_data_paths()
    from train import parse_args as train_args

    options = train_args(["--train_data", train_root, "--valid_data", valid_root, "--mask_root", mask_root])
    config = make_config("paper", model="SIGA_R", batch_size=args.batch_size, workers=args.workers)
    loader, _ = make_train_loader(options, config, Tokenizer.from_config(config), True, DistEnv(), 0)
    batches = iter(loader)
    for _ in range(max(args.warmup, args.workers)):
        next(batches)
    count = 10 * args.repeats
    start = time.perf_counter()
    images = sum(len(next(batches)) for _ in range(count))
    seconds = time.perf_counter() - start
    return {"data": str(DEMO_ROOT), "workers": args.workers, "batch_size": args.batch_size, "batches": count,
            "images_per_second": images / seconds}


def compare(results: list[dict]) -> dict:
    """SIGA_R time over TRBA time for each device and precision present for both."""
    ratios = {}
    for row in results:
        if row["model"] != "SIGA_R":
            continue
        base = next((r for r in results if r["model"] == "TRBA" and r["device"] == row["device"]
                     and r["dtype"] == row["dtype"]), None)
        if base is not None:
            ratios[f"{row['device']}/{row['dtype']}"] = {
                "train": base["train_images_per_second"] / row["train_images_per_second"],
                "infer": base["infer_images_per_second"] / row["infer_images_per_second"],
                "latency": row["latency_ms"] / base["latency_ms"]}
    return ratios


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results, reference = [], {}
    for device_name in args.device:
        device = torch.device(device_name)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name] or torch.float32
            size = 256 if args.preset == "tiny" else 2048
            reference[f"{device.type}/{dtype_name}"] = matmul_gflops(device, dtype, size, args.warmup, args.repeats)
            for name in args.models:
                results.append(bench_model(name, args, device, dtype_name))
                print(f"measured {name} on {device.type} in {dtype_name}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, batch "
          f"{args.batch_size}; medians of {args.repeats} after {args.warmup} warm-up")
    print_table(results, reference)
    for key, value in reference.items():
        print(f"matmul reference {key}: {value:.1f} GFLOP/s")
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "preset": args.preset,
              "results": results, "matmul_gflops": reference}
    if len(args.models) == 2:
        report["ratios_by_setting"] = compare(results)
        first = f"{args.device[0]}/{args.dtypes[0]}"
        if first in report["ratios_by_setting"]:
            report["ratios"] = report["ratios_by_setting"][first]
            print("SIGA_R / TRBA time (" + first + "): "
                  + ", ".join(f"{k} {v:.2f}×" for k, v in report["ratios"].items()))
    if args.data:
        report["data"] = bench_loader(args)
        print(f"training loader, {args.workers} workers: {report['data']['images_per_second']:.0f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
