"""Speed, memory and FLOP measurements of the models (what ``bench.py`` reports): interleaved timing with
medians, a matmul reference rate, FLOP counts, peak memory in a fresh process, the training loader's
throughput, fp32/bf16 prediction agreement, and the exported graphs under onnxruntime beside PyTorch."""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from checkpoint import load_model
from config import Config, make_config
from dataset import Batch, Collate, LmdbDataset
from distributed import DistEnv
from engine import Trainer
from flops import forward_flops
from evaluation import benchmark_normalize, evaluate
from loaders import make_train_loader
from model import build_model
from onnx_export import INSTALL_HINT, cpu_session, export_onnx, missing_onnx_packages, run_session
from tokenizer import Tokenizer
from utils import AMP_DTYPES, bf16_emulation_reason, use_channels_last

#: bench.py's precision names and their autocast dtypes
DTYPES = {"fp32": AMP_DTYPES["off"], "bf16": AMP_DTYPES["bf16"]}


def median_seconds(runs: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                   repeats: int) -> dict[str, float]:
    """Median wall time of each run (device work included), the runs interleaved repeat by repeat so that
    a slow spell of the machine hits every model alike and the ratios stay comparable."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    seconds = median_seconds({"matmul": lambda: a @ b}, device, warmup, repeats)["matmul"]
    return 2 * size**3 / seconds / 1e9


#: the SIGA models whose glyph-free baseline trains their TPS in the two-stage recipe
TWO_STAGE_MODELS = ("SIGA_R", "SIGA_S")


def siga_overrides(name: str, args: argparse.Namespace) -> dict:
    """Config fields bench.py sets on model ``name``: the frozen TPS of the two-stage recipe (``--two_stage``, or
    a preset that trains a TPS stage first, as SIGA_R's demo: timed as it trains after the stage) and SIGA_R's
    segmentation resolution (``--seg_resolution``); baselines keep their preset."""
    overrides = {}
    staged = make_config(args.preset, model=name).tps_stage_iters > 0
    if (getattr(args, "two_stage", False) or staged) and name in TWO_STAGE_MODELS:
        overrides["freeze_tps"] = True
    if getattr(args, "seg_resolution", None) and name == "SIGA_R":
        overrides["seg_resolution"] = args.seg_resolution
    return overrides


class Workload:
    """One model on one device in one precision, with its synthetic batch: a training step, greedy
    inference of ``decode_steps`` steps, and batch-1 inference."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, dtype_name: str):
        self.config = config = make_config(args.preset, model=name, batch_size=args.batch_size,
                                           **siga_overrides(name, args))
        self.tokenizer = tokenizer = Tokenizer.from_config(config)
        torch.manual_seed(config.seed)
        self.model = build_model(config, tokenizer).to(device)
        self.channels_last = use_channels_last(self.model, args.channels_last, device, training=True)
        self.dtype = DTYPES[dtype_name]
        self.device, self.decode_steps = device, args.decode_steps
        self.images, masks, labels = synthetic_batch(config, tokenizer, args.batch_size, args.label_length, device)
        self.batch = Batch(self.images, masks if getattr(self.model, "needs_masks", False) else None, labels, [])
        self.trainer = Trainer(self.model, config, tokenizer, DistEnv(device=device), self.dtype, sync_bn=False)

    def train_step(self) -> None:
        self.model.train()
        self.trainer.step(self.batch, 0, 1.0)

    @torch.inference_mode()
    def infer(self, images: torch.Tensor | None = None) -> torch.Tensor:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(self.images if images is None else images, early_stop=False,
                              max_steps=self.decode_steps).logits

    def infer_one(self) -> torch.Tensor:
        return self.infer(self.images[:1])

    def flops_per_image(self) -> float:
        self.model.eval()
        flops = forward_flops(self.model, lambda: self.model(self.images, early_stop=False, max_steps=self.decode_steps))
        return flops / len(self.images)


class OnnxWorkload:
    """A CPU workload's model exported to ONNX (fp32, its ``decode_steps`` steps: the same work as
    ``Workload.infer``) and run by onnxruntime with torch's thread count, on the workload's images."""

    def __init__(self, workload: Workload):
        with tempfile.TemporaryDirectory() as directory:
            path = export_onnx(workload.model, workload.tokenizer, workload.config, Path(directory) / "model.onnx",
                               workload.decode_steps)
            self.session = cpu_session(path, torch.get_num_threads())
        self.images = workload.images.cpu()

    def infer(self) -> dict[str, torch.Tensor]:
        return run_session(self.session, self.images)

    def infer_one(self) -> dict[str, torch.Tensor]:
        return run_session(self.session, self.images[:1])


def onnxruntime_skip_reason(args: argparse.Namespace) -> str | None:
    """Why this run of bench.py measures no onnxruntime row (None: it does, beside PyTorch's cpu/fp32 rows)."""
    missing = missing_onnx_packages()
    if missing:
        return f"{' and '.join(missing)} not installed ({INSTALL_HINT})"
    if "cpu" not in {torch.device(name).type for name in args.device}:
        return "it runs on the CPU, and --device has no cpu"
    if args.dtypes is not None and "fp32" not in args.dtypes:
        return "it is compared with PyTorch's fp32 rows, and --dtypes has no fp32"
    return None


def precisions(requested: list[str] | None, device: torch.device, skipped_rows: dict[str, str]) -> list[str]:
    """The precisions to time on ``device``: those ``requested``, or by default fp32 and bf16 where ``device``
    runs bf16 natively; a default bf16 row left out goes into ``skipped_rows`` with its reason."""
    if requested is not None:
        return requested
    emulated = bf16_emulation_reason(device)
    if emulated:
        skipped_rows[f"{device.type}/bf16"] = emulated
    return ["fp32"] if emulated else ["fp32", "bf16"]


def peak_memory_mb(name: str, args: argparse.Namespace, device_name: str, dtype_name: str, phase: str) -> float:
    """Peak memory of two ``phase`` ("train" or "infer") calls of one workload, in a fresh process so that
    nothing else counts: CUDA's peak allocation, or the CPU process's peak resident set (which includes
    the ~0.8 GB of the torch libraries themselves)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_memory_probe, (name, args, device_name, dtype_name, phase))


def _memory_probe(name: str, args: argparse.Namespace, device_name: str, dtype_name: str, phase: str) -> float:
    device = torch.device(device_name)
    workload = Workload(name, args, device, dtype_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        workload.train_step() if phase == "train" else workload.infer()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_resident_mb()


def peak_resident_mb() -> float:
    """This process's peak resident set: Linux's VmHWM, which (unlike getrusage's maxrss, kept across
    exec) starts afresh in a spawned process; getrusage elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def bench_setting(args: argparse.Namespace, device: torch.device, dtype_name: str) -> list[dict]:
    """Every model of ``args.models`` on one device in one precision, timed interleaved; on the CPU in fp32 their
    ONNX graphs under onnxruntime too (unless ``onnxruntime_skip_reason``), interleaved with them."""
    workloads = {name: Workload(name, args, device, dtype_name) for name in args.models}
    onnx = {}
    if device.type == "cpu" and dtype_name == "fp32" and onnxruntime_skip_reason(args) is None:
        onnx = {f"{name} onnxruntime": OnnxWorkload(workload) for name, workload in workloads.items()}
    latency_repeats = max(args.repeats, 5)
    train = median_seconds({n: w.train_step for n, w in workloads.items()}, device, args.warmup, args.repeats)
    infer = median_seconds({**{n: w.infer for n, w in workloads.items()}, **{n: o.infer for n, o in onnx.items()}},
                           device, args.warmup, args.repeats)
    latency = median_seconds({**{n: w.infer_one for n, w in workloads.items()},
                              **{n: o.infer_one for n, o in onnx.items()}}, device, args.warmup, latency_repeats)
    rows = []
    for name, workload in workloads.items():
        onnx_name = f"{name} onnxruntime"
        flops = workload.flops_per_image()
        infer_rate = args.batch_size / infer[name]
        rows.append({
            "model": name, "device": device.type, "dtype": dtype_name, "batch_size": args.batch_size,
            "config_overrides": siga_overrides(name, args),
            "channels_last": workload.channels_last, "decode_steps": args.decode_steps,
            "parameters": sum(p.numel() for p in workload.model.parameters()),
            "train_images_per_second": args.batch_size / train[name], "train_step_ms": 1e3 * train[name],
            "infer_images_per_second": infer_rate, "infer_batch_ms": 1e3 * infer[name],
            "latency_ms": 1e3 * latency[name],
            "train_peak_memory_mb": peak_memory_mb(name, args, device.type, dtype_name, "train"),
            "infer_peak_memory_mb": peak_memory_mb(name, args, device.type, dtype_name, "infer"),
            "infer_gflops_per_image": flops / 1e9, "infer_achieved_gflops": flops * infer_rate / 1e9,
            "onnxruntime_images_per_second": args.batch_size / infer[onnx_name] if onnx_name in infer else None,
            "onnxruntime_latency_ms": 1e3 * latency[onnx_name] if onnx_name in latency else None})
    return rows


def bench_loader(args: argparse.Namespace, train_root: str, mask_root: str) -> dict:
    """Training loader throughput (SIGA_R data: images, stored masks, augmentation) on LMDBs under
    ``train_root`` with their masks under ``mask_root``."""
    config = make_config("paper", model="SIGA_R", batch_size=args.batch_size, workers=args.workers)
    loader, _ = make_train_loader(train_root, "/", None, mask_root, config, Tokenizer.from_config(config), True,
                                  DistEnv(), 0, log=lambda message: None)
    batches = iter(loader)
    for _ in range(max(args.warmup, args.workers)):
        next(batches)
    count = 10 * args.repeats
    start = time.perf_counter()
    images = sum(len(next(batches)) for _ in range(count))
    seconds = time.perf_counter() - start
    return {"data": train_root, "workers": args.workers, "batch_size": args.batch_size, "batches": count,
            "images_per_second": images / seconds}


def bench_agreement(args: argparse.Namespace) -> dict:
    """fp32 and bf16 greedy predictions of a trained checkpoint over one LMDB: the share of identical
    strings, and both accuracies."""
    device = torch.device(args.device[0])
    model, tokenizer, config = load_model(args.agreement, device)
    channels_last = use_channels_last(model, args.channels_last, device, training=False)
    dataset = LmdbDataset(args.eval_data, tokenizer, (config.img_h, config.img_w), "test")
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=Collate(config.normalize_images))
    full = evaluate(model, loader, tokenizer, device, keep_predictions=True)
    half = evaluate(model, loader, tokenizer, device, keep_predictions=True, amp_dtype=DTYPES["bf16"])
    same = [a[0] == b[0] for a, b in zip(full.predictions, half.predictions)]
    correct = [benchmark_normalize(p) == benchmark_normalize(t) for p, t, _ in full.predictions]
    same_when_correct = sum(s for s, c in zip(same, correct) if c)
    return {"checkpoint": args.agreement, "eval_data": args.eval_data, "device": device.type,
            "channels_last": channels_last, "samples": full.num_samples, "identical": sum(same),
            "identical_percent": 100.0 * sum(same) / max(full.num_samples, 1),
            "identical_percent_where_fp32_correct": 100.0 * same_when_correct / max(sum(correct), 1),
            "changed_max_fp32_confidence": max((c for (_, _, c), s in zip(full.predictions, same) if not s), default=None),
            "accuracy_fp32": full.accuracy, "accuracy_bf16": half.accuracy}


#: each SIGA model and the glyph-free baseline it is compared with
BASELINES = {"SIGA_R": "TRBA", "SIGA_S": "TSBA", "SIGA_T": "VITBA"}


def compare(results: list[dict], model: str = "SIGA_R") -> dict:
    """``model``'s time over its baseline's (BASELINES) for each device and precision present for both."""
    ratios = {}
    for row in results:
        if row["model"] != model:
            continue
        base = next((r for r in results if r["model"] == BASELINES[model] and r["device"] == row["device"]
                     and r["dtype"] == row["dtype"]), None)
        if base is not None:
            ratios[f"{row['device']}/{row['dtype']}"] = {
                "train": base["train_images_per_second"] / row["train_images_per_second"],
                "infer": base["infer_images_per_second"] / row["infer_images_per_second"],
                "latency": row["latency_ms"] / base["latency_ms"]}
    return ratios
