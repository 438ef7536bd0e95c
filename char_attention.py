"""Does the decoder attend to the right character? The paper's central claim, measured against ground-truth
character boxes.

For every decoding step the model's maps are reduced to one point, its peak, and the point is carried back
to the pixels of the original (stored) image:

* the 1-D attention α [B, T, S] of the decoder whose steps make the prediction (``model.trace``): column
  t of T stands for the t-th of T equal spans of the rectified image's width, so its peak is the centre of
  that span at the rectified image's vertical centre (α carries no vertical information);
* the glyph map of a SIGA model: channel k + 1 of the low-scale glyph logits [B, K, h, w] belongs to step
  k; its peak is the centre of the cell holding its spatial maximum (the softmax that pools glyph
  features does not move the maximum). The glyph loss is a per-pixel cross-entropy over the K channels,
  which constrains each pixel's logits only up to a common offset; so the same peak is also taken of the
  class probability (the softmax over channels, "glyph_class"), which is what that loss trains to mark the
  k-th character's pixels;
* rectified pixel → model-input pixel by a bilinear lookup of the rectifier's sampling grid at the point
  (``align_corners=True``, as ``grid_sample`` reads it); model-input pixel → original pixel by the
  bicubic resize's pixel-centre mapping x_orig = (x + ½) · w_orig / W − ½.

Step i is then compared with ground-truth character i (after the tokenizer's charset filtering, which
drops the matching boxes): a 1-D peak hits when its x lies in the box's columns, a glyph peak when (x, y)
lies in the box (and, to tell a wrong row from a wrong column, its x alone in the box's columns:
``HIT_TESTS``); "in" means the pixel the point falls in, i.e. x − ½ ≤ p < x + w − ½. Characters past the
step a sequence emitted EOS at (or past the last step) count as misses, so a sample's score never depends
on the rest of its batch; so do the characters of an unreadable sample. Counts are kept over all
ground-truth characters and over those of correctly read words.

Ground truth: a JSON file keyed by the 1-based sample index of the evaluated set (for a one-LMDB set its
``image-%09d`` index), see ``../shared/data/README_charbounds.md``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import lmdb
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from benchmarks import EvalSet
from config import Config
from dataset import Collate, LmdbDataset, Sample
from evaluation import benchmark_normalize, evaluation_mode
from lmdb_io import IMAGE_KEY, LABEL_KEY, UndecodableImage, decode_image, open_lmdb, read_num_samples
from modules.outputs import GlyphTrace, Trace
from tokenizer import Tokenizer, first_eos_index
from utils import autocast

#: the maps whose peaks are located, and whether their own hit test is 2-D
MAPS = {"1d": False, "glyph": True, "glyph_class": True}
#: the hit tests scored: name → (map whose peaks it reads, 2-D). "glyph_x" tests the glyph peaks' x alone, which
#: separates a glyph channel that finds its character's column but the wrong row from one that misses the column
HIT_TESTS = {"1d": ("1d", False), "glyph_x": ("glyph", False), "glyph": ("glyph", True),
             "glyph_class": ("glyph_class", True)}
TEST_TITLES = {"1d": "1-D attention (x)", "glyph_x": "glyph map (x only)", "glyph": "glyph map (x, y)",
               "glyph_class": "glyph class prob. (x, y)"}


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CharBoxes:
    """One sample's ground truth: ``label`` as in the file, ``chars`` the characters a model reads (after
    charset filtering) and one box (x, y, w, h) per character of ``chars``, in pixels of the stored image of
    ``width`` × ``height``, covering columns x … x + w − 1 and rows y … y + h − 1."""

    label: str
    chars: str
    boxes: tuple[tuple[int, int, int, int], ...]
    width: int
    height: int


def _parse_entry(key: str, entry: object, where: str) -> tuple[int, CharBoxes]:
    """Validate one JSON entry; a ValueError naming ``where`` (file and index) says what is wrong."""
    if not key.isdigit() or int(key) < 1:
        raise ValueError(f"{where}: the key must be a 1-based sample index")
    if not isinstance(entry, dict) or not {"chars", "width", "height", "boxes"} <= entry.keys():
        raise ValueError(f"{where}: expected an object with chars, width, height and boxes")
    chars, width, height, boxes = entry["chars"], entry["width"], entry["height"], entry["boxes"]
    if not isinstance(chars, str):
        raise ValueError(f"{where}: chars must be a string, got {chars!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise ValueError(f"{where}: width and height must be positive integers, got {width!r}, {height!r}")
    if not isinstance(boxes, list) or len(boxes) != len(chars):
        count = len(boxes) if isinstance(boxes, list) else "no list of"
        raise ValueError(f"{where}: {count} boxes for the {len(chars)} characters of {chars!r}")
    for number, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in box)):
            raise ValueError(f"{where}: box {number} must be [x, y, w, h] integers, got {box!r}")
        x, y, w, h = box
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise ValueError(f"{where}: box {number} {box} is empty or leaves the {width}x{height} image")
    return int(key), CharBoxes(chars, chars, tuple(map(tuple, boxes)), width, height)


def read_char_boxes(path: str | os.PathLike) -> dict[int, CharBoxes]:
    """Every entry of a character-box JSON file by 1-based sample index, unfiltered (``chars == label``).
    Raises ValueError naming the file and the index of the first malformed entry."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object keyed by sample index")
    return dict(_parse_entry(key, entry, f"{path}, index {key}") for key, entry in raw.items())


def for_charset(entry: CharBoxes, tokenizer: Tokenizer, where: str) -> CharBoxes:
    """``entry`` as the tokenizer reads its label: each character normalised on its own (lower-cased for a
    case-insensitive model, dropped outside the charset), its box dropped with it. A character that
    normalises to several (a rare Unicode lower-casing) keeps its box for each; a label whose normalisation
    differs from the per-character one is a ValueError naming ``where``."""
    chars, boxes = [], []
    for char, box in zip(entry.label, entry.boxes):
        kept = tokenizer.normalize(char)
        chars.append(kept)
        boxes.extend([box] * len(kept))
    filtered = "".join(chars)
    if filtered != tokenizer.normalize(entry.label):
        raise ValueError(f"{where}: label {entry.label!r} normalises to {tokenizer.normalize(entry.label)!r} but "
                         f"character by character to {filtered!r}; its boxes cannot be matched")
    return CharBoxes(entry.label, filtered, tuple(boxes), entry.width, entry.height)


def load_char_boxes(path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> dict[int, CharBoxes]:
    """``read_char_boxes``, filtered for ``tokenizer``'s charset when one is given (see ``for_charset``)."""
    entries = read_char_boxes(path)
    if tokenizer is None:
        return entries
    return {index: for_charset(entry, tokenizer, f"{path}, index {index}") for index, entry in entries.items()}


def _lmdb_samples(eval_set: EvalSet) -> list[tuple[Path, int]]:
    """(LMDB, number of samples) of each leaf of ``eval_set``, in the set's order."""
    sizes = []
    for leaf in eval_set.leaves:
        env = open_lmdb(leaf)
        try:
            sizes.append((Path(leaf), read_num_samples(env, leaf)))
        finally:
            env.close()
    return sizes


def check_against_set(boxes: dict[int, CharBoxes], eval_set: EvalSet, path: str | os.PathLike) -> None:
    """Every index of ``boxes`` must be a sample of ``eval_set`` (1-based over its LMDBs in order) whose label
    equals the file's and whose stored image has the file's size (an undecodable image is left to the
    evaluation, which counts it). Raises ValueError naming the file, the index and the LMDB key."""
    start, leaves = 0, []
    for leaf, size in _lmdb_samples(eval_set):
        leaves.append((leaf, start, size))
        start += size
    beyond = [index for index in boxes if index > start]
    if beyond:
        raise ValueError(f"{path}, index {min(beyond)}: evaluation set {eval_set.name} has only {start} samples")
    for leaf, offset, size in leaves:
        wanted = sorted(index for index in boxes if offset < index <= offset + size)
        if not wanted:
            continue
        env = open_lmdb(leaf)
        try:
            with env.begin(write=False) as txn:
                for index in wanted:
                    _check_sample(txn, leaf, index - offset, boxes[index], f"{path}, index {index}")
        finally:
            env.close()


def _check_sample(txn: lmdb.Transaction, leaf: Path, index: int, entry: CharBoxes, where: str) -> None:
    key = LABEL_KEY % index
    raw = txn.get(key.encode())
    label = raw.decode("utf-8", errors="replace") if raw is not None else None
    if label != entry.label:
        raise ValueError(f"{where}: chars {entry.label!r} but {leaf}/{key} is {label!r}")
    data = txn.get((IMAGE_KEY % index).encode())
    try:
        size = decode_image(data).size if data is not None else None
    except UndecodableImage:
        return
    if size is not None and size != (entry.width, entry.height):
        raise ValueError(f"{where}: size {entry.width}x{entry.height} but {leaf}/{IMAGE_KEY % index} is "
                         f"{size[0]}x{size[1]}")


def load_char_boxes_for_sets(path: str | os.PathLike, tokenizer: Tokenizer,
                             eval_sets: Sequence[EvalSet]) -> dict[int, CharBoxes]:
    """The boxes of ``path`` for ``tokenizer``, checked against every set they are to score (ValueError,
    naming file and index, on a malformed entry or a label or size that differs from the LMDB's)."""
    if not Path(path).is_file():
        raise ValueError(f"character boxes not found: {path}")
    boxes = load_char_boxes(path, tokenizer)
    for eval_set in eval_sets:
        check_against_set(boxes, eval_set, path)
    return boxes


# --------------------------------------------------------------------------------------------------
# Geometry: peaks and their way back to the original image (points are (x, y) in pixel-index coordinates,
# pixel centres at integers)
# --------------------------------------------------------------------------------------------------
def attention_peaks(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1-D attention α [B, T, S] → peak per step [B, S, 2] in the rectified image of ``size`` = (H, W): the
    centre of the arg-max column's span of the width, at the vertical centre."""
    height, width = size
    columns = attention.argmax(1).to(torch.float32)
    x = (columns + 0.5) * (width / attention.shape[1]) - 0.5
    return torch.stack([x, torch.full_like(x, (height - 1) / 2)], -1)


def glyph_peaks(glyph_logits: torch.Tensor, size: tuple[int, int], steps: int) -> torch.Tensor:
    """Glyph logits [B, K, h, w] → the peak [B, steps, 2] of channels 1 … steps (step k ↔ channel k + 1) in the
    rectified image of ``size`` = (H, W): the centre of the cell of each channel's spatial maximum."""
    if steps > glyph_logits.shape[1] - 1:
        raise ValueError(f"{steps} steps but only {glyph_logits.shape[1] - 1} glyph character slots")
    height, width = size
    rows_h, cols_w = glyph_logits.shape[-2:]
    flat = glyph_logits[:, 1 : steps + 1].flatten(2).argmax(-1)
    rows, columns = (flat // cols_w).to(torch.float32), (flat % cols_w).to(torch.float32)
    return torch.stack([(columns + 0.5) * (width / cols_w) - 0.5, (rows + 0.5) * (height / rows_h) - 0.5], -1)


def through_grid(points: torch.Tensor, grid: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Rectified-image points [B, N, 2] → model-input pixels [B, N, 2]: the sampling grid [B, H, W, 2] looked
    up bilinearly at each point (border-clamped; ``align_corners=True`` as the rectifier's ``grid_sample``
    reads it), its [−1, 1] value scaled to the input of ``input_size`` = (H_in, W_in)."""
    _, height, width, _ = grid.shape
    grid = grid.to(torch.float32)
    points = points.to(grid)
    normalised = points * points.new_tensor([2 / (width - 1), 2 / (height - 1)]) - 1
    looked_up = F.grid_sample(grid.permute(0, 3, 1, 2), normalised[:, :, None], mode="bilinear",
                              padding_mode="border", align_corners=True)  # [B, 2, N, 1]
    in_height, in_width = input_size
    return (looked_up[..., 0].transpose(1, 2) + 1) / 2 * points.new_tensor([in_width - 1, in_height - 1])


def to_original(points: torch.Tensor, input_size: tuple[int, int], original_sizes: torch.Tensor) -> torch.Tensor:
    """Model-input pixels [B, N, 2] → pixels of the original images [B, N, 2], which were resized from
    ``original_sizes`` [B, 2] = (width, height) each to ``input_size`` = (H, W): pixel centres map to pixel
    centres, x_orig = (x + ½) · width / W − ½."""
    height, width = input_size
    scale = original_sizes.to(points) / points.new_tensor([width, height])
    return (points + 0.5) * scale[:, None] - 0.5


def decoded_steps(logits: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Steps [B] each sequence of greedy ``logits`` [B, S, C] ran through: up to and including its first EOS,
    all S without one (only these are computed whatever the batch)."""
    return (first_eos_index(logits.argmax(-1), eos_id) + 1).clamp(max=logits.shape[1])


class StepPeaks(NamedTuple):
    """Where each decoding step of a batch looked: ``steps`` [B] (see ``decoded_steps``); per map name of
    ``MAPS`` present (glyph: SIGA models only) the peaks [B, S, 2] in the rectified image (``rectified``) and
    in the original images (``original``)."""

    steps: torch.Tensor
    rectified: dict[str, torch.Tensor]
    original: dict[str, torch.Tensor]


def locate_peaks(trace: Trace | GlyphTrace, original_sizes: torch.Tensor, eos_id: int) -> StepPeaks:
    """The peaks of a ``model.trace`` output (see the module docstring) for images resized from
    ``original_sizes`` [B, 2] = (width, height); the rectified image and the model input have the grid's size."""
    size = tuple(trace.grid.shape[1:3])
    rectified = {"1d": attention_peaks(trace.attention, size)}
    if isinstance(trace, GlyphTrace):
        rectified["glyph"] = glyph_peaks(trace.glyph_logits_low, size, trace.attention.shape[2])
        rectified["glyph_class"] = glyph_peaks(trace.glyph_logits_low.float().softmax(1), size,
                                               trace.attention.shape[2])
    original = {name: to_original(through_grid(points, trace.grid, size), size, original_sizes.to(points.device))
                for name, points in rectified.items()}
    return StepPeaks(decoded_steps(trace.logits, eos_id), rectified, original)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def pad_boxes(entries: Sequence[CharBoxes], device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes of a batch as (boxes [B, L, 4] int64, zero-padded to the longest ``chars``; lengths [B])."""
    lengths = [len(entry.chars) for entry in entries]
    boxes = np.zeros((len(entries), max(lengths, default=0), 4), dtype=np.int64)
    for row, entry in enumerate(entries):
        boxes[row, : lengths[row]] = np.asarray(entry.boxes, dtype=np.int64).reshape(-1, 4)
    return torch.from_numpy(boxes).to(device), torch.tensor(lengths, device=device)


def box_hits(points: torch.Tensor, boxes: torch.Tensor, lengths: torch.Tensor, steps: torch.Tensor,
             two_d: bool) -> torch.Tensor:
    """Hits [B, L] of step i's peak (``points`` [B, S, 2]) in box i (``boxes`` [B, L, 4] as x, y, w, h) for
    i < ``lengths`` [B] (ground-truth characters) and i < ``steps`` [B] (steps decoded); the x test only,
    or x and y when ``two_d``. A point is in a box when the pixel it falls in is: x − ½ ≤ p < x + w − ½."""
    count = min(points.shape[1], boxes.shape[1])
    hits = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    if count == 0:
        return hits
    point, box = points[:, :count].to(boxes.device), boxes[:, :count].to(points.dtype)
    low = box[..., :2] - 0.5
    inside = (point >= low) & (point < low + box[..., 2:])
    hits[:, :count] = inside.all(-1) if two_d else inside[..., 0]
    positions = torch.arange(boxes.shape[1], device=boxes.device)
    return hits & (positions < lengths.to(boxes.device)[:, None]) & (positions < steps.to(boxes.device)[:, None])


def even_spacing_points(entries: Sequence[CharBoxes], device: torch.device | str | None = None) -> torch.Tensor:
    """The peaks [B, L, 2] of a model that knows only each word's length n: character i at the centre of the
    i-th of n equal slices of the original image's width, at its vertical centre (the chance level of the
    metric on words that fill their image)."""
    lengths = torch.tensor([len(entry.chars) for entry in entries], device=device)
    sizes = torch.tensor([[entry.width, entry.height] for entry in entries], device=device, dtype=torch.float32)
    positions = torch.arange(int(lengths.max()) if len(entries) else 0, device=device, dtype=torch.float32)
    x = (positions + 0.5) * sizes[:, :1] / lengths[:, None].clamp(min=1) - 0.5
    return torch.stack([x, ((sizes[:, 1:] - 1) / 2).expand_as(x)], -1)


@dataclass
class AttentionTally:
    """Character-attention counts of one evaluation set: words scored (``unreadable`` of them could not be
    decoded: every character a miss), correctly read words, ground-truth characters over all words and over
    correct ones, per hit test of ``HIT_TESTS`` the hits among each, and the hits of ``even_spacing_points``
    under each test over all characters (``baseline_hits``)."""

    name: str
    words: int = 0
    unreadable: int = 0
    correct_words: int = 0
    chars: int = 0
    correct_chars: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    correct_hits: dict[str, int] = field(default_factory=dict)
    baseline_hits: dict[str, int] = field(default_factory=dict)

    def percent(self, name: str, correct_only: bool = False) -> float:
        """Hits of test ``name`` in % of all characters (or of the characters of correctly read words)."""
        hits, chars = (self.correct_hits, self.correct_chars) if correct_only else (self.hits, self.chars)
        return 100.0 * hits.get(name, 0) / max(chars, 1)

    def baseline_percent(self, name: str) -> float:
        """Hits of the even-spacing baseline under test ``name``, in % of all characters."""
        return 100.0 * self.baseline_hits.get(name, 0) / max(self.chars, 1)

    def _add_baseline(self, entries: Sequence[CharBoxes], device: torch.device | str) -> None:
        boxes, lengths = pad_boxes(entries, device)
        points = even_spacing_points(entries, device)
        for name, (_, two_d) in HIT_TESTS.items():
            hits = box_hits(points, boxes, lengths, lengths, two_d)
            self.baseline_hits[name] = self.baseline_hits.get(name, 0) + int(hits.sum())

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct_words / max(self.words, 1)

    def add_batch(self, peaks: StepPeaks, entries: Sequence[CharBoxes], correct: torch.Tensor) -> None:
        """Count one batch: its ``peaks``, ground truth and which words were read correctly ([B] bool)."""
        boxes, lengths = pad_boxes(entries, correct.device)
        self.words += len(entries)
        self.correct_words += int(correct.sum())
        self.chars += int(lengths.sum())
        self.correct_chars += int(lengths[correct].sum())
        for name, (source, two_d) in HIT_TESTS.items():
            if source not in peaks.original:
                continue
            hits = box_hits(peaks.original[source], boxes, lengths, peaks.steps, two_d)
            self.hits[name] = self.hits.get(name, 0) + int(hits.sum())
            self.correct_hits[name] = self.correct_hits.get(name, 0) + int(hits[correct].sum())
        self._add_baseline(entries, correct.device)

    def add_unreadable(self, entries: Sequence[CharBoxes]) -> None:
        """Samples that could not be decoded: in the word and character counts, never hits (the baseline,
        which needs no image, counts them as usual)."""
        self.words += len(entries)
        self.unreadable += len(entries)
        self.chars += sum(len(entry.chars) for entry in entries)
        if entries:
            self._add_baseline(entries, "cpu")

    def row(self) -> dict:
        """The tally as a JSON-ready dict, with the percentages."""
        return {"name": self.name, "words": self.words, "unreadable": self.unreadable,
                "correct_words": self.correct_words, "accuracy": self.accuracy, "chars": self.chars,
                "correct_chars": self.correct_chars, "hits": dict(self.hits), "correct_hits": dict(self.correct_hits),
                "percent": {name: self.percent(name) for name in self.hits},
                "percent_correct_words": {name: self.percent(name, True) for name in self.hits},
                "baseline_hits": {name: self.baseline_hits.get(name, 0) for name in self.hits},
                "baseline_percent": {name: self.baseline_percent(name) for name in self.hits}}


# --------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------
class _BoxedSamples(Dataset):
    """The samples of an evaluation set that have ground truth, each as (1-based position, Sample | Skipped)."""

    def __init__(self, datasets: Sequence[LmdbDataset], positions: Sequence[int]):
        self.samples, self.positions = ConcatDataset(datasets), list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int):
        position = self.positions[item]
        return position, self.samples[position - 1]


class _BoxedCollate:
    """``Collate`` of the readable samples, with the positions of the readable and of the unreadable ones."""

    def __init__(self, normalize: bool):
        self.collate = Collate(normalize)

    def __call__(self, items):
        readable = [position for position, sample in items if isinstance(sample, Sample)]
        unreadable = [position for position, sample in items if not isinstance(sample, Sample)]
        return readable, unreadable, self.collate([sample for _, sample in items])


@torch.inference_mode()
def score_images(model: torch.nn.Module, tokenizer: Tokenizer, images: torch.Tensor, entries: Sequence[CharBoxes],
                 tally: AttentionTally, device: torch.device, amp_dtype: torch.dtype | None = None
                 ) -> tuple[StepPeaks, list[str]]:
    """Trace ``images`` [B, 3, H, W] (the model's mode is the caller's), count their hits into ``tally`` and
    return the peaks and the greedy readings."""
    with autocast(device, amp_dtype):
        trace = model.trace(images.to(device, non_blocking=True))
    sizes = torch.tensor([[entry.width, entry.height] for entry in entries], device=device)
    peaks = locate_peaks(trace, sizes, tokenizer.eos_id)
    texts, _ = tokenizer.decode(trace.logits)
    correct = torch.tensor([benchmark_normalize(text) == benchmark_normalize(entry.chars)
                            for text, entry in zip(texts, entries)], dtype=torch.bool, device=device)
    tally.add_batch(peaks, entries, correct)
    return peaks, texts


def evaluate_char_attention(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, eval_set: EvalSet,
                            boxes: dict[int, CharBoxes], device: torch.device, batch_size: int, workers: int = 0,
                            amp_dtype: torch.dtype | None = None) -> AttentionTally:
    """Trace the model over the samples of ``eval_set`` that ``boxes`` annotates (keyed by 1-based position in
    the set, see ``check_against_set``) and count the hits of each step's peaks."""
    datasets = [LmdbDataset(leaf, tokenizer, (config.img_h, config.img_w), "test") for leaf in eval_set.leaves]
    total = sum(len(dataset) for dataset in datasets)
    positions = sorted(index for index in boxes if index <= total)
    loader = DataLoader(_BoxedSamples(datasets, positions), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_BoxedCollate(config.normalize_images), pin_memory=device.type == "cuda")
    tally = AttentionTally(eval_set.name)
    with evaluation_mode(model):
        for readable, unreadable, batch in loader:
            tally.add_unreadable([boxes[position] for position in unreadable])
            if readable:
                score_images(model, tokenizer, batch.images, [boxes[p] for p in readable], tally, device, amp_dtype)
    return tally


def format_char_attention(tallies: Sequence[AttentionTally]) -> str:
    """A table per set: words, accuracy and characters, then per map the hit rate over all characters, over the
    characters of correctly read words and of the even-spacing baseline, each with its counts."""
    names = [name for name in HIT_TESTS if any(name in tally.hits for tally in tallies)]
    kinds = ("all chars", "correct words", "even spacing")

    def cells(tally: AttentionTally, name: str) -> list[str]:
        counts = [(tally.hits.get(name, 0), tally.chars), (tally.correct_hits.get(name, 0), tally.correct_chars),
                  (tally.baseline_hits.get(name, 0), tally.chars)]
        return [f"{100.0 * hits / max(chars, 1):.2f} ({hits}/{chars})" for hits, chars in counts]

    rows = {tally.name: [cell for name in names for cell in cells(tally, name)] for tally in tallies}
    cell = max([len(kind) for kind in kinds] + [len(c) for row in rows.values() for c in row])
    width = max([len("dataset")] + [len(tally.name) for tally in tallies])
    lead = f"{'dataset':<{width}}  {'words':>6}  {'accuracy':>8}  {'chars':>6}"
    group = 3 * cell + 4
    groups = " " * len(lead) + "".join(f"  {TEST_TITLES[name]:^{group}}" for name in names)
    header = lead + "".join(f"  {kind:>{cell}}" for _ in names for kind in kinds)

    def line(tally: AttentionTally) -> str:
        note = f"  ({tally.unreadable} unreadable: misses)" if tally.unreadable else ""
        return (f"{tally.name:<{width}}  {tally.words:>6d}  {tally.accuracy:>8.2f}  {tally.chars:>6d}"
                + "".join(f"  {c:>{cell}}" for c in rows[tally.name]) + note)

    title = "character attention: % of ground-truth characters i whose decoding step i peaks inside their box"
    note = ("even spacing: the chance level, peaks of a model that knows only the word length (character i at "
            "the centre of the i-th of n equal slices of the image width)")
    return "\n".join([title, groups.rstrip(), header, "-" * len(header), *map(line, tallies), note])
