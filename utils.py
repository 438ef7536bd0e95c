"""Configuration and presets, the tokenizer, metrics, the shared evaluation loop, checkpoints, seeding."""
from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from modules.losses import SigaLossSettings

CHARSET_36 = "abcdefghijklmnopqrstuvwxyz1234567890"
CHARSET_94 = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Every model, data and optimisation setting; defaults are the paper's (SPEC §1–§5)."""

    model: str = "TRBA"
    charset: str = "36"  # "36", "94" or a path to a charset file (one character per line)
    sensitive: bool = False  # case-sensitive labels (charset 94 by default when set)
    max_label_length: int = 25  # N_max; decoding steps S = N_max + 1
    img_h: int = 32
    img_w: int = 128
    # architecture widths
    num_fiducial: int = 20
    tps_channels: tuple[int, ...] = (64, 128, 256, 512)
    tps_fc: int = 256
    backbone_channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512)  # stem, layer1..layer5 (6, 7 = last)
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 6, 3, 2, 1)  # layer1..layer7
    hidden_size: int = 256
    glyph_channels: int = 128  # width of the glyph attention network's U-Net decoder (SPEC §3.5)
    dropout: float = 0.3  # on the glyph sequences and the final projection (SPEC §3.10)
    # SIGA losses (SPEC §4, §7 #28); paper values
    mask_threshold: float = 0.5  # K-means mask binarisation (strict >)
    foreground_threshold: float = 0.5  # predicted text foreground p1 > 0.5
    glyph_foreground_threshold: float = 0.4  # resized foreground ≥ 0.4 at the glyph scales
    glyph_attention_threshold: float = 0.05  # α: attention > α marks a character's columns
    sharpen_slope: float = 70.0  # ψ(a) = σ(slope · (a − offset))
    sharpen_offset: float = 0.1
    hard_sample_threshold: float = 1.0  # after the switch, L_seg ignores samples with mean loss ≥ this
    siga_switch_iter: int = 20000  # iteration of the L_seg / λ switch
    align_weight_early: float = 1.0  # λ before the switch
    align_weight_late: float = 0.3  # λ from the switch on
    freeze_tps: bool = False  # TPS excluded from training (set by --tps_from, the paper's two-stage recipe)
    freeze_tps_bn: bool = False  # keep the (frozen) TPS's BatchNorm statistics fixed in training (SPEC §7 #7)
    # optimisation (SPEC §5.2)
    batch_size: int = 384
    num_iter: int = 300000
    lr: float = 4.5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    div_factor: float = 20.0
    final_div_factor: float = 1000.0
    pct_start: float = 0.3
    grad_clip: float = 5.0
    seed: int = 111
    # data
    augment: bool = True
    aug_mode: str = "sample"  # "sample" (per-sample draw) or "fixed" (official once-per-process quirk)
    workers: int = 4
    valid_interval: int = 1000
    save_interval: int = 20000  # periodic snapshots iter_<N>.pth (SPEC §5.5)
    eval_batch_size: int = 256

    @property
    def num_steps(self) -> int:
        """Decoding steps S = N_max + 1 (characters plus EOS)."""
        return self.max_label_length + 1

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Rebuild from a checkpoint's dict, ignoring keys this version does not know."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kept = {}
        for key, value in values.items():
            if key in names:
                kept[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kept)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's SIGA_R / TRBA configuration (SPEC §5.1, global batch 640 = 2 × 320).
    "paper": dict(batch_size=320, num_iter=160000, workers=12),
    # Same architecture at reduced widths, sized for a 2-core CPU in a few minutes.
    "demo": dict(
        tps_channels=(16, 32, 64, 128), tps_fc=64,
        backbone_channels=(16, 16, 32, 64, 96, 128), backbone_blocks=(1, 1, 1, 1, 1, 1, 1),
        hidden_size=96, glyph_channels=32, batch_size=32, num_iter=4000, lr=1e-3, pct_start=0.15, augment=False, workers=1,
        valid_interval=500, siga_switch_iter=500,  # the paper switches at 1/8 of its schedule
    ),
    # Smallest working network, for tests.
    "tiny": dict(
        tps_channels=(4, 8, 8, 16), tps_fc=16, backbone_channels=(8, 8, 8, 16, 16, 32),
        backbone_blocks=(1, 1, 1, 1, 1, 1, 1), hidden_size=32, glyph_channels=8, batch_size=8, num_iter=20,
        workers=0, valid_interval=10, save_interval=10, eval_batch_size=16,
    ),
}


def siga_loss_settings(config: Config) -> SigaLossSettings:
    """The SIGA loss constants of a config (SPEC §7 #28), for the pure loss functions."""
    return SigaLossSettings(
        mask_threshold=config.mask_threshold, foreground_threshold=config.foreground_threshold,
        glyph_foreground_threshold=config.glyph_foreground_threshold,
        glyph_attention_threshold=config.glyph_attention_threshold, sharpen_slope=config.sharpen_slope,
        sharpen_offset=config.sharpen_offset, hard_sample_threshold=config.hard_sample_threshold,
        switch_iter=config.siga_switch_iter, align_weight_early=config.align_weight_early,
        align_weight_late=config.align_weight_late)


def make_config(preset: str = "paper", **overrides: Any) -> Config:
    """A Config from a named preset with explicit overrides (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
def load_charset(spec: str, sensitive: bool = False) -> str:
    """Resolve a charset spec: ``"36"``, ``"94"`` or a file with one character per line."""
    if spec == "36":
        return CHARSET_36
    if spec == "94":
        return CHARSET_94
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"charset {spec!r} is neither '36', '94' nor an existing file")
    chars: list[str] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line == "":
            continue
        if len(line) != 1:
            raise ValueError(f"{path}, line {line_no}: expected exactly one character, got {line!r}")
        if line in seen:
            raise ValueError(f"{path}, line {line_no}: duplicate character {line!r} (first on line {seen[line]})")
        seen[line] = line_no
        chars.append(line)
    if not chars:
        raise ValueError(f"{path}: charset file is empty")
    return "".join(chars)


class Tokenizer:
    """Label normalisation and id encoding (SPEC §2, with bug #1 fixed: SOS = len(charset) + 1).

    Ids: 0 = EOS and padding, 1..n = characters, n + 1 = SOS (the extra embedding row).
    In case-insensitive mode labels are lowercased first; characters outside the charset are
    dropped in every mode (SPEC §1.2 and bug #24), never a KeyError.
    """

    eos_id = 0
    pad_id = 0

    def __init__(self, charset: str, max_label_length: int = 25, sensitive: bool = False):
        if len(set(charset)) != len(charset):
            raise ValueError("charset has duplicate characters")
        self.charset = charset
        self.max_label_length = max_label_length
        self.sensitive = sensitive
        self._char_to_id = {c: i + 1 for i, c in enumerate(charset)}
        self._id_to_char = np.array(["", *charset], dtype=object)

    @classmethod
    def from_config(cls, config: Config) -> "Tokenizer":
        return cls(load_charset(config.charset, config.sensitive), config.max_label_length, config.sensitive)

    @property
    def num_classes(self) -> int:
        """Output classes C = 1 (EOS) + charset size."""
        return len(self.charset) + 1

    @property
    def sos_id(self) -> int:
        return len(self.charset) + 1

    @property
    def num_steps(self) -> int:
        return self.max_label_length + 1

    def normalize(self, label: str) -> str:
        """Lowercase (unless case-sensitive) and drop characters outside the charset."""
        if not self.sensitive:
            label = label.lower()
        return "".join(c for c in label if c in self._char_to_id)

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode normalised labels.

        Returns ``ids`` [B, S + 1] = [SOS, c1..cL, EOS, pad…] and ``lengths`` [B] = L + 1 (with EOS).
        The decoder input is ``ids[:, :-1]``, the target ``ids[:, 1:]``. Labels longer than N_max are
        truncated (the training set filters them out beforehand).
        """
        ids = torch.zeros(len(labels), self.num_steps + 1, dtype=torch.long)
        ids[:, 0] = self.sos_id
        lengths = torch.empty(len(labels), dtype=torch.long)
        for row, label in enumerate(labels):
            char_ids = [self._char_to_id[c] for c in self.normalize(label)][: self.max_label_length]
            ids[row, 1 : 1 + len(char_ids)] = torch.tensor(char_ids, dtype=torch.long)
            lengths[row] = len(char_ids) + 1
        if device is not None:
            ids, lengths = ids.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        return ids, lengths

    def decode(self, logits: torch.Tensor, drop_last_without_eos: bool = False) -> tuple[list[str], list[float]]:
        """Greedy strings and confidences from logits [B, S, C].

        A string is cut at its first EOS. Without EOS all S characters are kept, unless
        ``drop_last_without_eos`` reproduces the official quirk of dropping the last one (SPEC §2).
        Confidence = product of per-step max probabilities up to and including EOS (DTRB's
        definition); 0 for an empty prediction.
        """
        probs = logits.detach().float().softmax(-1)
        max_probs, ids = probs.max(-1)
        is_eos = ids == self.eos_id
        has_eos = is_eos.any(1)
        steps = ids.shape[1]
        first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, steps, dtype=torch.long))
        keep = torch.arange(steps, device=ids.device)[None] <= first_eos[:, None]
        confidence = torch.where(keep, max_probs, torch.ones_like(max_probs)).prod(1)
        cut = first_eos.clone()
        if drop_last_without_eos:
            cut = torch.where(has_eos, cut, cut - 1)
        texts: list[str] = []
        for row, (row_ids, length) in enumerate(zip(ids.cpu().numpy(), cut.cpu().tolist())):
            texts.append("".join(self._id_to_char[row_ids[:length]]))
        conf = [c if t else 0.0 for c, t in zip(confidence.cpu().tolist(), texts)]
        return texts, conf

    def decode_ids(self, ids: torch.Tensor) -> list[str]:
        """Strings from id rows (EOS-terminated), e.g. the targets ``ids[:, 1:]``."""
        out = []
        for row in ids.cpu().numpy():
            end = np.flatnonzero(row == self.eos_id)
            out.append("".join(self._id_to_char[row[: end[0] if len(end) else len(row)]]))
        return out


# --------------------------------------------------------------------------------------------------
# Metrics (SPEC §6)
# --------------------------------------------------------------------------------------------------
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
    """Word accuracy (%), mean normalised edit similarity, mean confidence over ``num_samples``."""

    num_samples: int = 0
    num_correct: int = 0
    ned_sum: float = 0.0
    confidence_sum: float = 0.0
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


def weighted_total(results: Iterable[EvalResult]) -> EvalResult:
    """Sample-weighted combination of several datasets' results (SPEC §6 'total')."""
    total = EvalResult()
    for result in results:
        total.num_samples += result.num_samples
        total.num_correct += result.num_correct
        total.ned_sum += result.ned_sum
        total.confidence_sum += result.confidence_sum
    return total


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: Iterable, tokenizer: Tokenizer, device: torch.device | str,
             keep_predictions: bool = False, amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Greedy predictions of ``model`` over ``loader`` batches, scored with the standard protocol.

    The model is switched to eval mode and restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    result = EvalResult()
    device = torch.device(device)
    for batch in loader:
        if len(batch) == 0:  # every sample of this batch was unreadable (reported by the caller's loader)
            continue
        images = batch.images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).logits
        predictions, confidences = tokenizer.decode(logits)
        result.add(predictions, batch.labels, confidences, keep_predictions)
    model.train(was_training)
    return result


# --------------------------------------------------------------------------------------------------
# Process set-up, seeding, checkpoints, learning-rate schedule
# --------------------------------------------------------------------------------------------------
#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process heap instead of unmapping it (Linux only;
    returns whether it applied). Glibc serves blocks above 32 MiB with a fresh mmap and returns them to
    the OS when freed, so every CPU training step page-faults and zero-fills its largest activations
    again: SIGA_R's full-resolution 128-channel glyph maps (128 MiB each at batch 32) made its paper-size
    training step 7.7 s instead of 6.2 s that way. The resident memory then stays at its peak between
    steps instead of shrinking."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch CPU and (on CUDA) the device's generator states, in a form
    ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "position": int(position), "has_gauss": int(has_gauss),
                                                    "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Undo :func:`capture_rng_state`: the generators continue exactly where they were captured."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same directory, then rename: never a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` of a file that must exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location=map_location, weights_only=True)


def check_checkpoint(checkpoint: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint`` if it has the format ``train.py`` writes, else a ValueError naming ``path``."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path}: not a checkpoint of this repository (expected keys 'model' and 'config')")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by this repo (``weights_only=True``)."""
    return check_checkpoint(read_checkpoint_file(path, map_location), path)


def one_cycle_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR exactly as SPEC §5.2: cosine warm-up over pct_start, then cosine decay, no momentum cycling."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.num_iter, pct_start=config.pct_start,
        anneal_strategy="cos", cycle_momentum=False, div_factor=config.div_factor,
        final_div_factor=config.final_div_factor, three_phase=False,
    )


def format_seconds(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
