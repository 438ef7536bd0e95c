"""Where a training step's time goes: forward and backward per part of the model (TPS, backbone, glyph network
and its full-resolution segmentation branch, each BiLSTM stack and decoder), the losses and the optimiser, on a
synthetic batch at a preset's widths. The measurement behind README "SIGA_R's training cost at small widths".

Usage, from the repository root::

    python -m tools.profile_step --model SIGA_R --preset demo --batch_size 64 [--amp bf16] [--steps 10]

Forward time per part is taken between forward hooks; backward time between the part's backward hooks (the
autograd engine runs a CPU backward on the calling thread, so nothing else runs in between, but a part whose
backward interleaves with another's, e.g. two decoders reading one sequence, may be charged some of it).
"Other" is the step's remainder: glue between parts, loss bookkeeping, autograd overhead. Medians over
``--steps`` steps after two warm-up steps.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.nn as nn

from benchmarking import synthetic_batch
from flops import forward_flops
from config import SEG_RESOLUTIONS, make_config
from dataset import Batch
from distributed import DistEnv
from engine import Trainer
from model import MODELS, build_model
from tokenizer import Tokenizer
from utils import AMP_DTYPES, retain_freed_cpu_memory, use_channels_last

#: submodules timed as parts (those a model has), outermost first; a part's time excludes the listed parts inside it
PARTS = ("transformation", "backbone", "glyph", "glyph.reduce_mid", "glyph.mid_block", "glyph.up_low", "glyph.low_merge",
         "glyph.low_block", "glyph.features_low", "glyph.features_mid", "glyph.sequence_low", "glyph.sequence_mid",
         "glyph.up_seg", "glyph.seg_merge", "glyph.seg_head", "sequence",
         "decoder", "siga.alignment_sequence", "siga.alignment_decoder", "siga.sequence", "siga.trba_decoder",
         "siga.position_decoder_low", "siga.position_decoder_mid", "siga.fusion_decoder_low",
         "siga.fusion_decoder_mid", "siga.fusion", "siga.projection", "siga.final_decoder")
SEGMENTATION = ("glyph.up_seg", "glyph.seg_merge", "glyph.seg_head")


class PartTimer:
    """Forward seconds per part (between its forward hooks, less the timed parts nested inside it) and backward
    seconds per part, attributed by gradient arrival: the CPU autograd engine runs one node at a time, so the
    time between two parameters' gradients being accumulated is charged to the part owning the later one; from
    the end of the model's forward to the first gradient: the losses, forward and backward."""

    def __init__(self, model: nn.Module):
        modules = dict(model.named_modules())
        self.parts = {name: modules[name] for name in PARTS if name in modules}
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.stack: list[list] = []  # [name, start, nested seconds]
        self.backward_mark, self.awaiting_first_gradient = 0.0, False
        for name, module in self.parts.items():
            module.register_forward_pre_hook(self._enter(name))
            module.register_forward_hook(self._leave(name))
        model.register_forward_hook(self._forward_done)
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.register_post_accumulate_grad_hook(self._gradient(self.part_of(name)))

    def part_of(self, parameter_name: str) -> str:
        """The innermost timed part holding a parameter (``other`` for none)."""
        owners = [name for name in self.parts if parameter_name.startswith(name + ".")]
        return max(owners, key=len) if owners else "other"

    def _enter(self, name: str) -> Callable:
        def hook(*_):
            self.stack.append([name, time.perf_counter(), 0.0])
        return hook

    def _leave(self, name: str) -> Callable:
        def hook(*_):
            _, start, nested = self.stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[(name, "forward")] += elapsed - nested
            if self.stack:
                self.stack[-1][2] += elapsed
        return hook

    def _gradient(self, part: str) -> Callable:
        def hook(_):
            now = time.perf_counter()
            key = ("losses", "forward and backward") if self.awaiting_first_gradient else (part, "backward")
            self.seconds[key] += now - self.backward_mark
            self.awaiting_first_gradient = False
            self.backward_mark = now
        return hook

    def _forward_done(self, *_) -> None:
        self.backward_mark, self.awaiting_first_gradient = time.perf_counter(), True

    def reset(self) -> None:
        self.seconds.clear()
        self.stack.clear()


def profile(model_name: str, preset: str, batch_size: int, amp: str, steps: int, label_length: int,
            overrides: dict[str, Any] | None = None) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per part and phase for each of ``steps`` training steps, and each step's total; ``overrides``
    are Config fields set over the preset."""
    config = make_config(preset, model=model_name, batch_size=batch_size, **(overrides or {}))
    tokenizer = Tokenizer.from_config(config)
    torch.manual_seed(config.seed)
    device = torch.device("cpu")
    model = build_model(config, tokenizer)
    use_channels_last(model, "auto", device, training=True)
    images, masks, labels = synthetic_batch(config, tokenizer, batch_size, label_length, device)
    batch = Batch(images, masks if getattr(model, "needs_masks", False) else None, labels, [])
    trainer = Trainer(model, config, tokenizer, DistEnv(device=device), AMP_DTYPES[amp], sync_bn=False)
    model.train()
    ids, _ = tokenizer.encode(labels)
    flops = forward_flops(model, lambda: model(batch.images, ids[:, :label_length + 1], batch.masks))
    timer = PartTimer(model)
    per_part: dict[str, list[float]] = defaultdict(list)
    totals = []
    for step in range(steps + 2):
        timer.reset()
        start = time.perf_counter()
        trainer.step(batch, step, 1.0)
        total = time.perf_counter() - start
        if step >= 2:
            totals.append(total)
            for (name, phase), seconds in timer.seconds.items():
                per_part[f"{name} {phase}"].append(seconds)
            per_part["optimiser and glue"].append(total - sum(timer.seconds.values()))
    return per_part, totals, flops / batch_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SIGA_R", choices=sorted(MODELS))
    parser.add_argument("--preset", default="demo", choices=["paper", "demo", "cpu", "tiny"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--label_length", type=int, default=7, help="characters per synthetic label")
    parser.add_argument("--freeze_tps", action="store_true", help="a frozen TPS, as after the TPS stage")
    parser.add_argument("--seg_resolution", choices=SEG_RESOLUTIONS, help="SIGA_R's segmentation resolution")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    retain_freed_cpu_memory()
    overrides = {"freeze_tps": args.freeze_tps or None, "seg_resolution": args.seg_resolution}
    per_part, totals, flops = profile(args.model, args.preset, args.batch_size, args.amp, args.steps, args.label_length,
                               {key: value for key, value in overrides.items() if value is not None})
    step = statistics.median(totals)
    print(f"{args.model} {args.preset}, batch {args.batch_size}, {args.amp}, {torch.get_num_threads()} threads: "
          f"{1e3 * step:.1f} ms per step ({args.batch_size / step:.1f} img/s), median of {args.steps}; training "
          f"forward {flops / 1e9:.3f} GFLOP per image (forward and backward ≈ 3× that)")
    medians = {name: statistics.median(values) for name, values in per_part.items()}
    for name, seconds in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"  {name:45} {1e3 * seconds:8.1f} ms  {seconds / step:6.1%}")
    segmentation = sum(v for k, v in medians.items() if k.split()[0] in SEGMENTATION)
    if segmentation:
        print(f"  segmentation branch (unpooling, merge, head), forward + backward: {1e3 * segmentation:.1f} ms "
              f"({segmentation / step:.1%})")


if __name__ == "__main__":
    main()
