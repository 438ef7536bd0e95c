"""Export a checkpoint's greedy inference path to ONNX and, with ``--verify``, check onnxruntime against PyTorch
on real words.

Usage, from the repository root (needs ``pip install -r requirements-onnx.txt``)::

    python -m tools.export_onnx --checkpoint saved_models/RUN/best_accuracy.pth --out model.onnx
    python -m tools.export_onnx --checkpoint CKPT --out model.onnx --verify [LMDB] [--limit N]

The graph (``onnx_export``: inputs, outputs, metadata, why one unrolled graph) reads preprocessed images
[B, 3, H, W] with a dynamic batch. ``--verify`` reads an LMDB of labelled crops exactly as ``test.py`` does
(``dataset.LmdbDataset`` in test mode + ``Collate``; default ../shared/data/IIIT5k_train_2000), runs the same
batches through onnxruntime (CPUExecutionProvider) and the PyTorch model (fp32, CPU), decodes both with the
checkpoint's tokenizer and prints the number of samples, the share of identical predictions, the largest
absolute logit difference and both accuracies (the benchmark protocol). The exit status is 1 when fewer than
99.9 % of the predictions are identical.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from checkpoint import load_model
from config import Config
from dataset import Collate, LmdbDataset
from evaluation import EvalResult, evaluation_mode
from onnx_export import EXPORTERS, INSTALL_HINT, cpu_session, export_onnx, missing_onnx_packages, run_session
from tokenizer import Tokenizer

DEFAULT_LMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "IIIT5k_train_2000"
#: the share of identical predictions below which the parity check fails (%)
IDENTICAL_THRESHOLD = 99.9


@dataclass
class ParityReport:
    """onnxruntime against PyTorch on ``samples`` decoded crops: identical predictions, the largest |logit
    difference| over every sample and step, each runtime's accuracy, and both lists of predictions (in LMDB
    order); ``unreadable`` crops (whose image could not be decoded) are left out of all of them."""

    samples: int = 0
    unreadable: int = 0
    identical: int = 0
    max_logit_difference: float = 0.0
    pytorch: EvalResult = field(default_factory=EvalResult)
    onnxruntime: EvalResult = field(default_factory=EvalResult)

    @property
    def identical_percent(self) -> float:
        return 100.0 * self.identical / max(self.samples, 1)

    @property
    def passed(self) -> bool:
        return self.samples > 0 and self.identical_percent >= IDENTICAL_THRESHOLD

    def lines(self) -> list[str]:
        """The printed report (README "ONNX export" shows it)."""
        left_out = f" ({self.unreadable} unreadable crops left out)" if self.unreadable else ""
        return [f"samples: {self.samples}{left_out}",
                f"identical predictions: {self.identical} ({self.identical_percent:.2f} %)",
                f"max |logit difference|: {self.max_logit_difference:.3g}",
                f"accuracy: PyTorch {self.pytorch.accuracy:.2f} %, onnxruntime {self.onnxruntime.accuracy:.2f} %"]


def verify(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, onnx_path: str | Path, lmdb: str | Path,
           batch_size: int = 64, limit: int | None = None, threads: int | None = None) -> ParityReport:
    """Compare the ONNX graph at ``onnx_path`` (onnxruntime, CPU, ``threads`` threads) with ``model`` (a fp32 model on
    the CPU, as ``checkpoint.load_model`` gives it, in eval mode, decoding the graph's number of steps without
    stopping early) on the first ``limit`` (default all) crops of ``lmdb``, read as ``test.py`` reads them."""
    session = cpu_session(onnx_path, threads)
    meta = session.get_modelmeta().custom_metadata_map
    if "steps" not in meta:
        raise ValueError(f"{onnx_path}: no 'steps' in its metadata, so not a graph written by onnx_export.export_onnx")
    steps = int(meta["steps"])
    dataset = LmdbDataset(lmdb, tokenizer, (config.img_h, config.img_w), "test")
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=Collate(config.normalize_images))
    report = ParityReport()
    for batch in loader:
        report.unreadable += len(batch.skipped)
        if not len(batch):
            continue
        with evaluation_mode(model), torch.inference_mode():
            reference = model(batch.images, early_stop=False, max_steps=steps).logits
        logits = run_session(session, batch.images)["logits"]
        texts, confidences = tokenizer.decode(reference)
        onnx_texts, onnx_confidences = tokenizer.decode(logits)
        report.samples += len(texts)
        report.identical += sum(a == b for a, b in zip(texts, onnx_texts))
        report.max_logit_difference = max(report.max_logit_difference, (logits - reference).abs().max().item())
        report.pytorch.add(texts, batch.labels, confidences, keep=True)
        report.onnxruntime.add(onnx_texts, batch.labels, onnx_confidences, keep=True)
    return report


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py (any model)")
    parser.add_argument("--out", required=True, help="the ONNX file to write")
    parser.add_argument("--max_steps", type=int, help="decoding steps in the graph (default: the model's S)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torch.onnx's TorchScript exporter (fast, the default) or its dynamo exporter")
    parser.add_argument("--verify", nargs="?", const=str(DEFAULT_LMDB), metavar="LMDB",
                        help=f"compare onnxruntime with PyTorch on this LMDB (default {DEFAULT_LMDB})")
    parser.add_argument("--limit", type=int, help="--verify: only the first N crops")
    parser.add_argument("--batch_size", type=int, default=64, help="--verify: crops per batch")
    args = parser.parse_args(argv)
    missing = missing_onnx_packages(("onnx", "onnxruntime", "onnxscript") if args.exporter == "dynamo" else
                                    ("onnx", "onnxruntime"))
    if missing:
        parser.error(f"{', '.join(missing)} not installed: {INSTALL_HINT}")
    if args.verify and not Path(args.verify).is_dir():
        parser.error(f"--verify: no LMDB directory at {args.verify}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch_size and --limit must be positive")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    try:
        model, tokenizer, config = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.max_steps is not None and not 1 <= args.max_steps <= config.num_steps:
        parser.error(f"--max_steps must be between 1 and {config.num_steps} for {args.checkpoint}")
    path = export_onnx(model, tokenizer, config, args.out, args.max_steps, args.exporter)
    print(f"exported {config.model} from {args.checkpoint} to {path} ({path.stat().st_size / 2**20:.1f} MB, "
          f"{args.exporter} exporter, {args.max_steps or config.num_steps} steps, onnx.checker passed)")
    if not args.verify:
        return 0
    report = verify(model, tokenizer, config, path, args.verify, args.batch_size, args.limit)
    print(f"onnxruntime {version('onnxruntime')} (CPUExecutionProvider) vs PyTorch {torch.__version__} fp32 on "
          f"{args.verify}")
    print("\n".join(report.lines()))
    if not report.passed:
        print(f"error: {report.identical_percent:.2f} % identical predictions, below {IDENTICAL_THRESHOLD} %",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
