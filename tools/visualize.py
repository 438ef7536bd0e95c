"""Render what a SIGA_R checkpoint sees and attends to, one PNG per image, for inspecting training.

For every image the figure shows, top to bottom:

* the model input and its TPS-rectified version;
* the K-means text mask (SPEC §1.5) warped by the same TPS grid, next to the predicted text foreground
  p(text) = softmax(Z_seg)_1 with the binary F̂ = [p > 0.5] outlined (SPEC §4.3);
* the 1-D decoder's attention A (steps × positions, SPEC §3.3/§4.3), as a heat map and as one curve per
  character over the rectified image;
* the glyph pseudo-labels built from A and F̂ at 16×64 (the hard first-maximum label, SPEC §4.4), next to
  the learned glyph map (argmax of the channel softmax of G_low, SPEC §3.5/§4.5), both coloured per
  character slot;
* the channel-softmax probability of each of the first L character slots of G_low.

The prediction is SIGA_R's greedy output. The maps come from a teacher-forced pass in eval mode with the
given label (or, without ``--labels``, the prediction), because the attention A and the pseudo-labels are
defined for a known transcript, as in training.

Usage::

    python -m tools.visualize --checkpoint saved_models/siga/best_accuracy.pth \\
        --images demo_image/ --out_dir graph/ [--labels word1 word2 ...] [--device cpu]

``--images`` takes files, directories and glob patterns like ``demo.py``. Only SIGA_R checkpoints
(ours or the authors' released one) have segmentation and glyph maps; a TRBA checkpoint is an error.

With ``--lmdb`` and ``--char_boxes`` instead (any model), one PNG per ``--indices`` sample shows what the
character-attention metric (``char_attention``) compares: on the original image, the ground-truth box of
each character and, in the same colour, the peak of the decoding step it is compared with (1-D attention:
a dashed line at its x and a cross; glyph map of a SIGA model: a dot, its class probability: a square), and
below the same peaks on the rectified image::

    python -m tools.visualize --checkpoint saved_models/trba/best_accuracy.pth \
        --lmdb ../shared/data/IIIT5k_train_2000 --char_boxes ../shared/data/IIIT5k_train_2000_charbounds.json \
        --indices 1 2 3 --out_dir graph/
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from benchmarks import EvalSet
from char_attention import (MAPS, AttentionTally, CharBoxes, box_hits, check_against_set, load_char_boxes, pad_boxes,
                            score_images)
from config import Config
from dataset import IMAGENET_MEAN, IMAGENET_STD, resize_mask
from inference import image_paths_for_cli, load_for_inference, preprocess, readable_images, unreadable_report
from lmdb_io import IMAGE_KEY, LABEL_KEY, decode_image, open_lmdb
from modules.kmeans_mask import text_mask_from_pil
from model import GlyphAttentionRecognizer
from modules.losses import SigaLossSettings, glyph_pseudo_labels, predicted_foreground
from tokenizer import Tokenizer

#: character slots per row of the per-character glyph map grid
GRID_COLUMNS = 4


@dataclass
class GlyphView:
    """Everything one figure shows, as CPU numpy arrays (H×W = the model's input size, h×w = 16×64 for
    the paper's 32×128 input).

    ``attention`` is A for the L characters and the EOS step, [L+1, T]; ``pseudo_labels`` and
    ``glyph_argmax`` are slot indices [h, w] (0 = background, k = character k); ``glyph_foreground`` is the
    foreground F_s [h, w] the pseudo-labels use; ``glyph_probs`` [L, h, w] are the channel-softmax
    probabilities of slots 1..L.
    """

    input_rgb: np.ndarray
    rectified_rgb: np.ndarray
    warped_mask: np.ndarray
    foreground_prob: np.ndarray
    foreground: np.ndarray
    attention: np.ndarray
    pseudo_labels: np.ndarray
    glyph_foreground: np.ndarray
    glyph_argmax: np.ndarray
    glyph_probs: np.ndarray
    num_slots: int
    chars: str
    prediction: str
    confidence: float
    label: str | None


def to_display(images: torch.Tensor, normalized: bool = True) -> np.ndarray:
    """One network input [1, 3, H, W] → RGB floats [H, W, 3] in [0, 1], undoing the ImageNet normalisation
    when the model's data path applies it."""
    if normalized:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        images = images * std + mean
    return images.clamp(0.0, 1.0)[0].permute(1, 2, 0).float().cpu().numpy()


@torch.inference_mode()
def analyse(model: GlyphAttentionRecognizer, tokenizer: Tokenizer, config: Config, image: Image.Image, label: str | None,
            settings: SigaLossSettings, kmeans_seed: int | None, device: torch.device) -> GlyphView:
    """Greedy prediction and teacher-forced maps of one image; ``model`` must be in eval mode (as
    ``load_model`` returns it), so that dropout is off and BatchNorm uses its running statistics.

    The mask follows the training data path: K-means at the image's own resolution (or, for the "resized"
    pipeline, of the resized image), then ``resize_mask`` to the model input. The teacher-forced transcript is ``label`` normalised by the tokenizer (and cut
    to N_max), or the prediction when ``label`` is None.
    """
    images = preprocess([image], config).to(device)
    size = (config.img_w, config.img_h)
    source = image.convert("RGB").resize(size, Image.BICUBIC) if config.data_pipeline == "resized" else image
    mask = resize_mask(text_mask_from_pil(source, seed=kmeans_seed), size)
    masks = torch.from_numpy(mask)[None, None].to(device)

    texts, confidences = tokenizer.decode(model(images).logits)
    chars = tokenizer.normalize(texts[0] if label is None else label)[: tokenizer.max_label_length]
    ids, lengths = tokenizer.encode([chars], device=device)
    output = model(images, ids[:, :-1], masks)
    rectified, _ = model.transformation(images)

    foreground = predicted_foreground(output.seg_logits, settings.foreground_threshold)
    glyph_size = tuple(output.glyph_logits_low.shape[-2:])
    labels, hard = glyph_pseudo_labels(output.attention, foreground, lengths, glyph_size, settings)
    glyph_probs = output.glyph_logits_low.float().softmax(dim=1)[0]
    num_chars = len(chars)
    return GlyphView(
        input_rgb=to_display(images, config.normalize_images),
        rectified_rgb=to_display(rectified, config.normalize_images),
        warped_mask=output.rectified_mask[0, 0].float().cpu().numpy(),
        foreground_prob=output.seg_logits.float().softmax(dim=1)[0, 1].cpu().numpy(),
        foreground=foreground[0, 0].float().cpu().numpy(),
        attention=output.attention[0, :, : num_chars + 1].float().T.cpu().numpy(),
        pseudo_labels=hard[0].cpu().numpy(),
        glyph_foreground=(1.0 - labels[0, 0]).float().cpu().numpy(),
        glyph_argmax=glyph_probs.argmax(dim=0).cpu().numpy(),
        glyph_probs=glyph_probs[1 : num_chars + 1].cpu().numpy(),
        num_slots=glyph_probs.shape[0],
        chars=chars,
        prediction=texts[0],
        confidence=confidences[0],
        label=label,
    )


def slot_colormap(num_slots: int) -> ListedColormap:
    """Black for the background slot 0, then tab20's colours in turn for character slots 1..K−1, so a
    character has the same colour in the attention curves, the pseudo-labels and the learned map."""
    palette = colormaps["tab20"].colors
    return ListedColormap([(0.0, 0.0, 0.0)] + [palette[k % len(palette)] for k in range(num_slots - 1)])


def _label_slots(ax: Axes, slots: np.ndarray, chars: str) -> None:
    """Write each character at the centroid of its slot's pixels (slots absent from the map get nothing)."""
    for k, char in enumerate(chars, start=1):
        ys, xs = np.nonzero(slots == k)
        if len(xs):
            ax.text(xs.mean(), ys.mean(), char, color="white", ha="center", va="center", fontsize=10,
                    fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])


def _slot_map(ax: Axes, slots: np.ndarray, chars: str, colormap: ListedColormap, title: str,
              foreground: np.ndarray | None = None) -> None:
    """Slot indices in their colours; with ``foreground``, its pixels that no slot covers (hard label 0,
    like the background) are grey, to tell missing attention from background."""
    colors = colormap(slots)
    if foreground is not None:
        colors[(slots == 0) & (foreground > 0.5)] = (0.5, 0.5, 0.5, 1.0)
    ax.imshow(colors, interpolation="nearest")
    _label_slots(ax, slots, chars)
    ax.set_title(title, fontsize=9)


def _attention_curves(ax: Axes, view: GlyphView, colormap: ListedColormap) -> None:
    """A's row for each step drawn over the rectified image: position t at the centre of its image
    columns, attention from 0 to the largest value of A spanning the image height (so that the flat
    attention of an untrained model is visible too); the character sits at its curve's peak."""
    height, width = view.rectified_rgb.shape[:2]
    positions = view.attention.shape[1]
    x = (np.arange(positions) + 0.5) * width / positions - 0.5
    scale = (height - 1) / max(float(view.attention.max()), 1e-6)
    ax.imshow(view.rectified_rgb)
    for step, weights in enumerate(view.attention):
        y = height - 0.5 - weights * scale
        is_eos = step == len(view.chars)
        color = "white" if is_eos else colormap(step + 1)
        ax.plot(x, y, color=color, linewidth=1.2, linestyle="--" if is_eos else "-")
        peak = int(weights.argmax())
        ax.text(x[peak], y[peak], "EOS" if is_eos else view.chars[step], color=color, ha="center", va="bottom",
                fontsize=8, fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(f"1-D attention per step over the rectified image (full height = {view.attention.max():.3f})",
                 fontsize=9)


def render(view: GlyphView, title: str, path: Path) -> None:
    """Draw ``view`` as described in the module docstring and write it to ``path`` (PNG, Agg)."""
    num_chars = len(view.chars)
    grid_rows = -(-num_chars // GRID_COLUMNS)
    figure = Figure(figsize=(12, 0.8 + 4 * 1.9 + grid_rows * 1.15), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subfigures(2, 1, height_ratios=[0.8 + 4 * 1.9, max(grid_rows * 1.15, 1e-3)])
    colormap = slot_colormap(view.num_slots)
    axes = top.subplots(4, 2)

    axes[0, 0].imshow(view.input_rgb)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].imshow(view.rectified_rgb)
    axes[0, 1].set_title("TPS-rectified input", fontsize=9)

    axes[1, 0].imshow(view.warped_mask, cmap="gray", vmin=0.0, vmax=1.0)
    axes[1, 0].set_title("K-means mask, TPS-warped", fontsize=9)
    axes[1, 1].imshow(view.foreground_prob, cmap="magma", vmin=0.0, vmax=1.0)
    if 0.0 < view.foreground.mean() < 1.0:
        axes[1, 1].contour(view.foreground, levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1, 1].set_title("predicted foreground p(text); cyan: F̂ = [p > 0.5]", fontsize=9)

    axes[2, 0].imshow(view.attention, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    axes[2, 0].set_yticks(range(num_chars + 1), list(view.chars) + ["EOS"], fontsize=7)
    axes[2, 0].set_xlabel("position t", fontsize=8)
    axes[2, 0].set_title("1-D attention A (step × position)", fontsize=9)
    _attention_curves(axes[2, 1], view, colormap)

    _slot_map(axes[3, 0], view.pseudo_labels, view.chars, colormap,
              f"glyph pseudo-labels at {view.pseudo_labels.shape[0]}×{view.pseudo_labels.shape[1]} "
              "(hard label; grey: foreground no slot covers)", view.glyph_foreground)
    _slot_map(axes[3, 1], view.glyph_argmax, view.chars, colormap, "learned glyph map (argmax of G_low)")
    for ax in axes.flat:
        if ax is not axes[2, 0]:
            ax.set_xticks([])
            ax.set_yticks([])
    top.suptitle(title, fontsize=11)

    if num_chars:
        cells = bottom.subplots(grid_rows, GRID_COLUMNS, squeeze=False).flat
        for k, ax in enumerate(cells):
            ax.set_xticks([])
            ax.set_yticks([])
            if k < num_chars:
                ax.imshow(view.glyph_probs[k], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_title(f"slot {k + 1}: {view.chars[k]!r}", fontsize=8, color=colormap(k + 1))
            else:
                ax.set_axis_off()
        bottom.suptitle("learned glyph attention per character (channel softmax of G_low)", fontsize=9)
    figure.savefig(path, dpi=100)


@dataclass
class CharBoxView:
    """What a character-box figure shows, as CPU numpy arrays: the stored image ``original_rgb`` [h, w, 3]
    (uint8), the rectified model input ``rectified_rgb`` [H, W, 3]; the characters the model reads with their
    ``boxes`` [L, 4] (x, y, w, h in original pixels); the ``steps`` decoded (through EOS); per map name of
    ``char_attention.MAPS`` the peaks [S, 2] in original (``peaks``) and rectified (``rectified_peaks``)
    pixels and which characters they hit (``hits`` [L] bool)."""

    original_rgb: np.ndarray
    rectified_rgb: np.ndarray
    chars: str
    boxes: np.ndarray
    steps: int
    peaks: dict[str, np.ndarray]
    rectified_peaks: dict[str, np.ndarray]
    hits: dict[str, np.ndarray]
    prediction: str


@torch.inference_mode()
def analyse_char_boxes(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, image: Image.Image,
                       entry: CharBoxes, device: torch.device) -> CharBoxView:
    """Trace one image (``model`` in eval mode) and locate its steps' peaks as ``char_attention`` scores them."""
    images = preprocess([image], config).to(device)
    peaks, texts = score_images(model, tokenizer, images, [entry], AttentionTally("view"), device)
    boxes, lengths = pad_boxes([entry], device)
    hits = {name: box_hits(points, boxes, lengths, peaks.steps, MAPS[name])[0].cpu().numpy()
            for name, points in peaks.original.items()}
    rectified, _ = model.transformation(images)
    return CharBoxView(np.asarray(image.convert("RGB")), to_display(rectified, config.normalize_images), entry.chars,
                       boxes[0].cpu().numpy(), int(peaks.steps[0]),
                       {name: points[0].cpu().numpy() for name, points in peaks.original.items()},
                       {name: points[0].cpu().numpy() for name, points in peaks.rectified.items()}, hits, texts[0])


def _draw_peaks(ax: Axes, peaks: dict[str, np.ndarray], steps: int, height: int, colormap: ListedColormap) -> None:
    """Each decoded step's peaks in its character's colour: 1-D as a dashed vertical line and a cross, glyph as
    a dot, glyph class probability as a square (marker edges black, to stand out on any background)."""
    for step in range(steps):
        color = colormap(step + 1)
        if "1d" in peaks:
            x, y = peaks["1d"][step]
            ax.plot([x, x], [-0.5, height - 0.5], color=color, linestyle="--", linewidth=1.0)
            ax.plot(x, y, marker="X", markersize=9, color=color, markeredgecolor="black")
        if "glyph" in peaks:
            x, y = peaks["glyph"][step]
            ax.plot(x, y, marker="o", markersize=8, color=color, markeredgecolor="black")
        if "glyph_class" in peaks:
            x, y = peaks["glyph_class"][step]
            ax.plot(x, y, marker="s", markersize=6, color=color, markeredgecolor="black")


def render_char_boxes(view: CharBoxView, title: str, path: Path) -> None:
    """Draw ``view`` (see the module docstring) and write it to ``path`` (PNG, Agg)."""
    colormap = slot_colormap(max(len(view.chars), view.steps) + 1)
    figure = Figure(figsize=(9, 7), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 2])
    top.imshow(view.original_rgb, interpolation="nearest")
    for index, (x, y, w, h) in enumerate(view.boxes[: len(view.chars)]):
        color = colormap(index + 1)
        top.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=color, linewidth=2.0))
        top.text(x - 0.5, y - 0.5, view.chars[index], color=color, ha="left", va="bottom", fontsize=11,
                 fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    _draw_peaks(top, view.peaks, view.steps, view.original_rgb.shape[0], colormap)
    top.set_xlim(-0.5, view.original_rgb.shape[1] - 0.5)
    top.set_ylim(view.original_rgb.shape[0] - 0.5, -0.5)
    top.set_title("original image: ground-truth box of character i and the peaks of decoding step i "
                  "(dashed + cross: 1-D attention; dot: glyph map; square: glyph class probability)", fontsize=9)
    bottom.imshow(view.rectified_rgb)
    _draw_peaks(bottom, view.rectified_peaks, view.steps, view.rectified_rgb.shape[0], colormap)
    bottom.set_xlim(-0.5, view.rectified_rgb.shape[1] - 0.5)
    bottom.set_ylim(view.rectified_rgb.shape[0] - 0.5, -0.5)
    bottom.set_title("the same peaks on the rectified model input", fontsize=9)
    for ax in (top, bottom):
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=100)


def char_box_title(name: str, view: CharBoxView) -> str:
    """Sample name, characters and prediction, and the hits per map."""
    hits = "    ".join(f"{name_}: {int(hit.sum())}/{len(view.chars)} hits" for name_, hit in view.hits.items())
    return f"{name}    characters {view.chars!r}, prediction {view.prediction!r}\n{hits}"


def read_lmdb_sample(path: str | Path, index: int) -> tuple[Image.Image, str]:
    """The decoded image and label of 1-based sample ``index`` of an LMDB (KeyError naming it when absent)."""
    env = open_lmdb(path)
    try:
        with env.begin(write=False) as txn:
            data, label = txn.get((IMAGE_KEY % index).encode()), txn.get((LABEL_KEY % index).encode())
    finally:
        env.close()
    if data is None or label is None:
        raise KeyError(f"{path}: no sample {index}")
    return decode_image(data), label.decode("utf-8")


def figure_title(name: str, view: GlyphView) -> str:
    """Image name, greedy prediction with confidence, and the transcript the maps were computed for."""
    if view.label is None:
        forced = "maps teacher-forced with the prediction"
    else:
        forced = f"label: {view.label!r}" + (f" (as {view.chars!r})" if view.chars != view.label else "")
    return f"{name}\nprediction: {view.prediction!r} (confidence {view.confidence:.3f})    {forced}"


def unique_output(out_dir: Path, stem: str, used: set[str]) -> Path:
    """``out_dir/<stem>.png``; a repeated stem (same file name in two folders) gets ``_2``, ``_3``, …"""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return out_dir / f"{name}.png"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m tools.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="SIGA_R checkpoint written by train.py, or the authors' one "
                                                           "(any model with --lmdb)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files, directories or glob patterns")
    source.add_argument("--lmdb", help="an LMDB whose --indices samples to draw with their --char_boxes")
    parser.add_argument("--char_boxes", metavar="JSON", help="ground-truth character boxes of the --lmdb samples")
    parser.add_argument("--indices", nargs="+", type=int, default=[1, 2, 3, 4],
                        help="1-based LMDB sample indices to draw (with --lmdb)")
    parser.add_argument("--out_dir", default="graph", help="folder for the PNGs (<image stem>.png)")
    parser.add_argument("--labels", nargs="+", help="one transcript per image, in order, for teacher forcing "
                                                    "(default: each image's own prediction)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kmeans_seed", type=int, default=0, help="seed of the K-means mask's restarts")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if (args.lmdb is None) != (args.char_boxes is None):
        parser.error("--lmdb and --char_boxes go together")
    try:
        model, tokenizer, config, device = load_for_inference(args.checkpoint, args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.lmdb is not None:
        return char_box_figures(parser, args, model, tokenizer, config, device)
    return glyph_figures(parser, args, model, tokenizer, config, device)


def char_box_figures(parser: argparse.ArgumentParser, args: argparse.Namespace, model: torch.nn.Module,
                     tokenizer: Tokenizer, config: Config, device: torch.device) -> int:
    """One character-box figure per ``--indices`` sample of ``--lmdb``."""
    try:
        boxes = load_char_boxes(args.char_boxes, tokenizer)
        absent = [index for index in args.indices if index not in boxes]
        if absent:
            raise ValueError(f"{args.char_boxes} has no boxes for sample(s) {absent}")
        chosen = {index: boxes[index] for index in args.indices}
        check_against_set(chosen, EvalSet(Path(args.lmdb).name, [Path(args.lmdb)]), args.char_boxes)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, entry in chosen.items():
        image, _ = read_lmdb_sample(args.lmdb, index)
        view = analyse_char_boxes(model, tokenizer, config, image, entry, device)
        output = out_dir / f"sample_{index:09d}.png"
        render_char_boxes(view, char_box_title(f"{Path(args.lmdb).name} #{index}", view), output)
        print(f"{index}\t{view.prediction}\t{output}", flush=True)
    return 0


def glyph_figures(parser: argparse.ArgumentParser, args: argparse.Namespace, model: torch.nn.Module,
                  tokenizer: Tokenizer, config: Config, device: torch.device) -> int:
    """One glyph-attention figure per ``--images`` file (SIGA models only)."""
    paths = image_paths_for_cli(args.images)
    if not paths:
        return 1
    if args.labels is not None and len(args.labels) != len(paths):
        parser.error(f"--labels gives {len(args.labels)} label(s) for {len(paths)} image(s)")
    if not isinstance(model, GlyphAttentionRecognizer):
        parser.error(f"{args.checkpoint} is a {config.model} checkpoint; visualize needs a SIGA model, whose "
                     f"segmentation and glyph attention maps it draws ({config.model} has none)")
    settings = config.siga
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    used: set[str] = set()
    written = 0
    labels = dict(zip(paths, args.labels)) if args.labels is not None else {}
    for path, image in readable_images(paths):
        label = labels.get(path)
        view = analyse(model, tokenizer, config, image, label, settings, args.kmeans_seed, device)
        if label is not None and view.chars != label:
            print(f"note: {path}: label {label!r} is {view.chars!r} for this model's charset", file=sys.stderr)
        output = unique_output(out_dir, Path(path).stem, used)
        render(view, figure_title(Path(path).name, view), output)
        written += 1
        print(f"{path}\t{view.prediction}\t{output}", flush=True)
    return unreadable_report(written, len(paths))


if __name__ == "__main__":
    sys.exit(main())
