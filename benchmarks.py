"""The standard benchmarks (SPEC §6): finding the evaluation sets under a root, scoring each with the
evaluation loop (unreadable samples count as errors: n is always the LMDB's sample count), totals, the table
and per-sample predictions."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from config import Config
from dataset import Collate, LmdbDataset
from evaluation import EvalResult, benchmark_normalize, evaluate, weighted_total
from lmdb_io import find_lmdb_leaves, is_lmdb_dir
from tokenizer import Tokenizer

BENCHMARKS = ("IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077",
              "SVTP", "CUTE80", "MPSC", "ArbitText")
STANDARD_BENCHMARKS = BENCHMARKS[:10]  # the sets of the weighted total (SPEC §6)


@dataclass
class EvalSet:
    """A named evaluation set: one LMDB, or several under a benchmark folder, read as one."""

    name: str
    leaves: list[Path]


@dataclass
class SetResult:
    name: str
    result: EvalResult
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (1-based index in the set, reason)
    positions: list[int] = field(default_factory=list)  # 1-based sample index of each prediction

    def row(self) -> dict:
        return {"name": self.name, "n": self.result.num_samples, "correct": self.result.num_correct,
                "accuracy": self.result.accuracy, "ned": self.result.ned, "confidence": self.result.mean_confidence,
                "unreadable": self.result.num_unreadable}


def _has_lmdb(folder: Path) -> bool:
    return any("data.mdb" in files for _, _, files in os.walk(folder, followlinks=True))


def resolve_eval_sets(root: str | os.PathLike, benchmarks_only: bool = False) -> tuple[list[EvalSet], list[str]]:
    """The sets to evaluate under ``root`` and the benchmark names not found there.

    Benchmarks are direct subdirectories matched by name (exactly, else ignoring case); other LMDB
    leaves follow, named by their path relative to ``root``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: evaluation data path does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: evaluation data path is not a directory")
    if is_lmdb_dir(root):
        return [EvalSet(root.resolve().name, [root])], []
    subdirs = {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}
    folded = {name.lower(): p for name, p in subdirs.items()}
    sets, missing, claimed = [], [], []
    for name in BENCHMARKS:
        folder = subdirs.get(name) or folded.get(name.lower())
        leaves = find_lmdb_leaves(folder) if folder is not None and _has_lmdb(folder) else []
        if leaves:
            sets.append(EvalSet(name, leaves))
            claimed.append(folder.resolve())
        else:
            missing.append(name)
    if not benchmarks_only and _has_lmdb(root):
        for leaf in find_lmdb_leaves(root):
            resolved = leaf.resolve()
            if any(resolved == c or c in resolved.parents for c in claimed):
                continue
            sets.append(EvalSet(leaf.relative_to(root).as_posix(), [leaf]))
    if not sets:
        what = "benchmark folder" if benchmarks_only else "LMDB (directory with data.mdb)"
        raise FileNotFoundError(f"{root}: no {what} found")
    return sets, missing


class _TrackSkipped:
    """Iterate a loader for ``evaluation.evaluate``, recording the samples the collate could not decode."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.skipped: list[tuple[str, int, str]] = []

    def __iter__(self):
        for batch in self.loader:
            self.skipped.extend(batch.skipped)
            yield batch


def evaluate_set(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, eval_set: EvalSet, device: torch.device,
                 batch_size: int, workers: int, amp_dtype: torch.dtype | None = None,
                 keep_predictions: bool = False) -> SetResult:
    """Score one set; unreadable samples count as wrong predictions and are listed in ``unreadable``."""
    datasets = [LmdbDataset(leaf, tokenizer, (config.img_h, config.img_w), "test") for leaf in eval_set.leaves]
    loader = DataLoader(ConcatDataset(datasets), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=Collate(config.normalize_images), pin_memory=device.type == "cuda")
    tracked = _TrackSkipped(loader)
    result = evaluate(model, tracked, tokenizer, device, keep_predictions=keep_predictions, amp_dtype=amp_dtype)
    offsets, start = {}, 0
    for dataset in datasets:
        offsets[dataset.path] = start
        start += len(dataset)
    unreadable = sorted((offsets.get(path, 0) + index, reason) for path, index, reason in tracked.skipped)
    dropped = {position for position, _ in unreadable}
    positions = [p for p in range(1, start + 1) if p not in dropped] if keep_predictions else []
    return SetResult(eval_set.name, result, unreadable, positions)


def compute_totals(results: list[SetResult]) -> dict[str, dict]:
    """'standard': over the SPEC §6 ten benchmarks present; 'all': over every evaluated set (when different)."""
    totals = {}
    standard = [r for r in results if r.name in STANDARD_BENCHMARKS]
    if standard:
        total = SetResult(f"total ({len(standard)}/{len(STANDARD_BENCHMARKS)} standard benchmarks)",
                          weighted_total(r.result for r in standard))
        totals["standard"] = {**total.row(), "datasets": [r.name for r in standard]}
    if len(standard) != len(results):
        total = SetResult(f"total (all {len(results)} sets)", weighted_total(r.result for r in results))
        totals["all"] = {**total.row(), "datasets": [r.name for r in results]}
    return totals


def format_table(rows: list[dict], totals: list[dict]) -> str:
    width = max([len("dataset")] + [len(r["name"]) for r in rows + totals])
    header = f"{'dataset':<{width}}  {'n':>8}  {'accuracy':>8}  {'NED':>6}  {'conf':>6}"
    rule = "-" * len(header)

    def line(r: dict) -> str:
        unreadable = f"  ({r['unreadable']} unreadable, counted wrong)" if r.get("unreadable") else ""
        return (f"{r['name']:<{width}}  {r['n']:>8d}  {r['accuracy']:>8.2f}  {r['ned']:>6.4f}  "
                f"{r['confidence']:>6.4f}{unreadable}")

    lines = [header, rule, *map(line, rows)]
    if totals:
        lines += [rule, *map(line, totals)]
    return "\n".join(lines)


def write_predictions(path: str, results: list[SetResult]) -> None:
    """One CSV row per sample, in index order; an unreadable sample has an empty prediction, ``correct`` 0 and
    the reason in ``error``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "index", "prediction", "ground_truth", "correct", "confidence", "error"])
        for set_result in results:
            rows = [(position, [prediction, target, int(benchmark_normalize(prediction) == benchmark_normalize(target)),
                                f"{confidence:.6f}", ""])
                    for position, (prediction, target, confidence) in zip(set_result.positions,
                                                                           set_result.result.predictions)]
            rows += [(position, ["", "", 0, f"{0.0:.6f}", reason]) for position, reason in set_result.unreadable]
            for position, fields in sorted(rows, key=lambda row: row[0]):
                writer.writerow([set_result.name, position, *fields])
