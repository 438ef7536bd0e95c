"""The gradient norm of each training-loss term of a checkpoint, per part of the model (TPS, backbone, glyph
network, decoders), on the first batches of an LMDB: which term drives which part, and how often the summed
gradient exceeds the clipping threshold. It is the measurement behind README "Why SIGA_R with a jointly
trained TPS learns slower".

Usage, from the repository root::

    python -m tools.loss_gradients --checkpoint saved_models/RUN/iter_1000.pth --data LMDB [--mask_data MASKS]

The model runs in training mode (BatchNorm on batch statistics, dropout on, as in a training step) at the
checkpoint's iteration (which sets the SIGA loss switch); samples are read in order, without augmentation.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from checkpoint import load_checkpoint, load_model
from dataset import Collate, LmdbDataset
from modules.losses import SigaLossSettings, siga_summands, training_loss

#: top-level module name → the part of the model it belongs to (every other module: "decoders", i.e. the
#: sequence modelling and the decoders)
PARTS = {"transformation": "TPS", "backbone": "backbone", "glyph": "glyph network"}


def part_of(name: str) -> str:
    return PARTS.get(name.split(".")[0], "decoders")


def term_losses(terms: dict[str, torch.Tensor], iteration: int, settings: SigaLossSettings) -> dict[str, torch.Tensor]:
    """The total loss split into its summands as the optimiser sees them: the recognition CEs together, and
    for SIGA models the SIGA summands of :func:`modules.losses.siga_summands`."""
    grouped = {"CE (all heads)": torch.stack([v for k, v in terms.items() if k.startswith("ce_")]).sum()}
    if "seg" in terms:
        grouped.update(siga_summands(terms["seg"], terms["align"], terms["glyph_low"], terms["glyph_mid"],
                                     iteration, settings))
    return grouped


def gradient_norms(model: torch.nn.Module, losses: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{term: {part: L2 norm of d term / d part's parameters}} for every part with trainable parameters, and
    the same for the summed loss as ``total``."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    losses = dict(losses, total=torch.stack(list(losses.values())).sum())
    norms: dict[str, dict[str, float]] = {}
    for term, loss in losses.items():
        grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
        squares = {part_of(name): 0.0 for name, _ in named}
        for (name, _), grad in zip(named, grads):
            if grad is not None:
                squares[part_of(name)] += float(grad.float().pow(2).sum())
        squares["all"] = sum(squares.values())
        norms[term] = {part: value ** 0.5 for part, value in squares.items()}
    return norms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py")
    parser.add_argument("--data", required=True, help="one LMDB of labelled crops")
    parser.add_argument("--mask_data", help="its mask LMDB (SIGA models; default: K-means masks)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="average over this many consecutive batches")
    parser.add_argument("--seed", type=int, default=0, help="dropout and K-means seed")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model, tokenizer, config = load_model(args.checkpoint)
    iteration = int(load_checkpoint(args.checkpoint).get("iteration", 0))
    dataset = LmdbDataset(args.data, tokenizer, config.image_size, mode="train", need_masks=model.needs_masks,
                          mask_path=args.mask_data, kmeans_seed=args.seed,
                          resize_first=config.data_pipeline == "resized")
    if len(dataset) < args.batch_size * args.batches:
        parser.error(f"{args.data}: {len(dataset)} samples, fewer than --batch_size × --batches")
    collate = Collate(config.normalize_images)
    model.train()
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    over_clip = 0
    for index in range(args.batches):
        batch = collate([dataset[i] for i in range(index * args.batch_size, (index + 1) * args.batch_size)])
        ids, lengths = tokenizer.encode(batch.labels)
        ids = ids[:, : int(lengths.max()) + 1]
        output = model(batch.images, ids[:, :-1], batch.masks)
        result = training_loss(output, ids[:, 1:], lengths, iteration, config.siga, config.num_steps,
                               masks=batch.masks)
        norms = gradient_norms(model, term_losses(result.terms, iteration, config.siga))
        over_clip += config.grad_clip is not None and norms["total"]["all"] > config.grad_clip
        for term, by_part in norms.items():
            for part, value in by_part.items():
                sums[term][part] += value / args.batches
    parts = ["TPS", "backbone", "glyph network", "decoders", "all"]
    print(f"{args.checkpoint} (iteration {iteration}), {args.batches} × {args.batch_size} crops of {args.data}: "
          f"mean gradient L2 norm per loss term and part")
    print(f"{'term':<16}" + "".join(f"{part:>15}" for part in parts))
    for term, by_part in sums.items():
        print(f"{term:<16}" + "".join(f"{by_part[part]:>15.4f}" if part in by_part else f"{'—':>15}"
                                      for part in parts))
    if config.grad_clip is not None:
        print(f"total norm above the clipping threshold {config.grad_clip:g} in {over_clip} of {args.batches} batches")


if __name__ == "__main__":
    main()
