"""Scoring: the benchmark protocol (SPEC §6), word accuracy and NED, and the one prediction step (``predict``
in ``evaluation_mode``) that validation, test.py, demo.py and bench.py all use."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from tokenizer import Tokenizer
from utils import autocast

_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def benchmark_normalize(text: str) -> str:
    """The standard protocol: lowercase, keep [0-9a-z] only."""
    return _NOT_ALNUM.sub("", text.lower())


def normalized_edit_similarity(prediction: str, target: str) -> float:
    """1 − ED / max(len) (nltk Levenshtein); 0 if either string is empty (SPEC §6)."""
    from nltk.metrics.distance import edit_distance

    if not prediction or not target:
        return 0.0
    return 1.0 - edit_distance(prediction, target) / max(len(prediction), len(target))


@dataclass
class EvalResult:
    """Word accuracy (%), mean normalised edit similarity, mean confidence over ``num_samples``, of which
    ``num_unreadable`` could not be decoded and count as wrong (similarity and confidence 0)."""

    num_samples: int = 0
    num_correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0
    num_unreadable: int = 0
    predictions: list[tuple[str, str, float]] = field(default_factory=list)  # (prediction, target, conf)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.num_correct / max(self.num_samples, 1)

    @property
    def ned(self) -> float:
        return self.ned_sum / max(self.num_samples, 1)

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / max(self.num_samples, 1)

    def add(self, predictions: Iterable[str], targets: Iterable[str], confidences: Iterable[float], keep: bool) -> None:
        for prediction, target, confidence in zip(predictions, targets, confidences):
            pred_n, target_n = benchmark_normalize(prediction), benchmark_normalize(target)
            self.num_samples += 1
            self.num_correct += int(pred_n == target_n)
            self.ned_sum += normalized_edit_similarity(pred_n, target_n)
            self.confidence_sum += confidence
            if keep:
                self.predictions.append((prediction, target, confidence))

    def add_unreadable(self, count: int) -> None:
        """``count`` samples that could not be read: in n, never correct."""
        self.num_samples += count
        self.num_unreadable += count


def weighted_total(results: Iterable[EvalResult]) -> EvalResult:
    """Sample-weighted combination of several datasets' results (SPEC §6 'total')."""
    total = EvalResult()
    for result in results:
        total.num_samples += result.num_samples
        total.num_unreadable += result.num_unreadable
        total.num_correct += result.num_correct
        total.ned_sum += result.ned_sum
        total.confidence_sum += result.confidence_sum
    return total


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, tokenizer: Tokenizer, device: torch.device | str,
            amp_dtype: torch.dtype | None = None) -> tuple[list[str], list[float]]:
    """Greedy (texts, confidences) of normalised images [B, 3, H, W] (the model's mode is the caller's: see
    ``evaluation_mode``)."""
    device = torch.device(device)
    with autocast(device, amp_dtype):
        logits = model(images.to(device, non_blocking=True)).logits
    return tokenizer.decode(logits)


def evaluate(model: torch.nn.Module, loader: Iterable, tokenizer: Tokenizer, device: torch.device | str,
             keep_predictions: bool = False, amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Greedy predictions of ``model`` in eval mode over the ``loader``'s batches (``dataset.Batch``), scored
    with the standard protocol. Samples the collate could not decode (a batch's ``skipped``) count as wrong."""
    result = EvalResult()
    with evaluation_mode(model):
        for batch in loader:
            result.add_unreadable(len(batch.skipped))
            if len(batch):
                predictions, confidences = predict(model, batch.images, tokenizer, device, amp_dtype)
                result.add(predictions, batch.labels, confidences, keep_predictions)
    return result
