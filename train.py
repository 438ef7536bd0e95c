"""Train a recognition model on LMDB data, in one process or many (torchrun); README "Training".

With no data arguments it builds the built-in synthetic sets (if absent): plain crops under ``data/synth_plain``
and the engine's full variety under ``data/synth_varied``, and trains the ``demo`` preset, sized for a 2-core CPU,
on the plain crops first (a curriculum, on which the attention decoder aligns), then on the varied ones; with
``--model SIGA_R`` TRBA trains the plain-crop steps and hands all of its tensors (its TPS frozen) to SIGA_R for
the varied ones (``--tps_stage`` with ``--stage_handover``).
``--preset cpu`` does the same longer, on ``data/synth_cpu_plain`` and ``data/synth_cpu``.
"""
from __future__ import annotations

import argparse
import sys

import torch

from config import GLYPH_CONTEXTS, SEG_RESOLUTIONS, make_config
from dataset import SYNTH_PREFIX, synth_size
from engine import RunOptions, train
from model import MODELS
from tools.synth import build_builtin_data, builtin_data
from utils import AMP_DTYPES, MEMORY_FORMATS, retain_freed_cpu_memory

#: command-line flags that set Config fields of the same name
CONFIG_FLAGS = ("model", "batch_size", "num_iter", "lr", "grad_clip", "max_label_length", "seed", "valid_interval",
                "save_interval", "workers", "augment", "aug_mode", "charset", "sensitive", "freeze_tps_bn",
                "freeze_tps", "curriculum_iters", "pct_start", "seg_resolution", "stage_handover",
                "glyph_context")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--train_data", help="root of the training LMDBs (every leaf directory is one LMDB), or "
                                           "synth:N for N synthetic crops rendered on the fly")
    data.add_argument("--select_data", default="/",
                      help="'-'-separated substrings selecting leaves under --train_data, e.g. MJ-ST ('/' = all)")
    data.add_argument("--batch_ratio", default=None,
                      help="'-'-separated share of each selection per batch, e.g. 0.5-0.5 (default: uniform "
                           "sampling over the concatenation, as the official SIGA_R)")
    data.add_argument("--valid_data", help="root of the validation LMDBs (each leaf scored, then the weighted total)")
    data.add_argument("--mask_root", help="root of the mask LMDBs mirroring --train_data (default: K-means on the fly)")
    data.add_argument("--curriculum_data", help="easier training data (LMDB root or synth:N) read for the first "
                                                "--curriculum_iters iterations, e.g. plain crops the decoder aligns on")
    data.add_argument("--curriculum_mask_root", help="mask LMDBs mirroring --curriculum_data")
    data.add_argument("--curriculum_iters", type=int, help="length of the curriculum phase (default 0: none)")
    data.add_argument("--no_aug", dest="augment", action="store_false", default=None, help="disable augmentation")
    data.add_argument("--aug_mode", choices=["sample", "fixed"], help="per-sample draws, or the official fixed draw")
    data.add_argument("--workers", type=int)
    data.add_argument("--charset", help="'36', '94' or a file with one character per line")
    data.add_argument("--sensitive", action="store_true", default=None, help="case-sensitive labels (charset 94)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and optimisation")
    model.add_argument("--model", choices=sorted(MODELS),
                       help="architecture (default TRBA, SIGA_R's glyph-free baseline); SIGA_S, SIGA_T and their "
                            "baselines bring their own recipe (README)")
    model.add_argument("--tps_from", help="load the TPS of a TRBA/SIGA_R checkpoint of this repo and freeze it "
                                          "(the paper's two-stage recipe); without it the TPS trains jointly")
    model.add_argument("--pretrained_vit", help="SIGA_T/VITBA: DeiT-style ImageNet weights (a local file) for the "
                       "class token and transformer blocks")
    model.add_argument("--tps_stage", type=int, metavar="N",
                       help="SIGA_R/SIGA_S: the paper's two-stage recipe in one command: train the glyph-free "
                            "baseline (TRBA/TSBA) for N iterations into <run dir>/tps_stage, then this model with "
                            "that TPS frozen (0: none)")
    model.add_argument("--stage_handover", action=argparse.BooleanOptionalAction, default=None,
                       help="with --tps_stage N: the stage trains the first N steps of this run's schedule, and the "
                            "SIGA model continues it from step N with the stage's every tensor, not only its TPS "
                            "(ours, for CPU budgets: docs/siga_r_demo.md)")
    model.add_argument("--seg_resolution", choices=SEG_RESOLUTIONS,
                       help="SIGA_R's segmentation branch: full (the paper) or half resolution (cheaper on a CPU; "
                            "README \"Differences from the official code\")")
    model.add_argument("--glyph_context", choices=GLYPH_CONTEXTS,
                       help="SIGA models: none (the paper) or columns: a BiLSTM across the glyph network's columns "
                            "tells each pixel how far along the word it is (ours: docs/siga_r_demo.md)")
    model.add_argument("--freeze_tps_bn", action="store_true", default=None,
                       help="with --tps_from or --tps_stage: also keep the TPS BatchNorm statistics fixed "
                            "(official: they update)")
    model.add_argument("--freeze_tps", action="store_true", default=None,
                       help="keep the TPS fixed: at --tps_from's weights, or without it at the identity warp")
    model.add_argument("--siga_warmup", type=int,
                       help="ramp the SIGA loss terms linearly from 0 over this many iterations (default 0: none)")
    model.add_argument("--siga_switch_iter", type=int,
                       help="iteration of the SIGA loss switch: hard-sample L_seg and λ 1.0 → 0.3 (default 20000)")
    model.add_argument("--preset", default=None, choices=["paper", "demo", "cpu", "tiny"],
                       help="size/schedule preset (default: paper with data arguments, demo without); without "
                            "data arguments, demo and cpu train on plain built-in crops, then on varied ones")
    model.add_argument("--batch_size", type=int, help="per-process batch size")
    model.add_argument("--num_iter", type=int, help="number of optimiser steps")
    model.add_argument("--lr", type=float, help="(peak) learning rate of the schedule")
    model.add_argument("--pct_start", type=float, help="one-cycle schedule: share of the steps rising to the peak lr")
    model.add_argument("--grad_clip", type=float)
    model.add_argument("--max_label_length", type=int)
    model.add_argument("--seed", type=int)
    model.add_argument("--valid_interval", type=int, help="validate and checkpoint every N iterations")
    model.add_argument("--save_interval", type=int, help="keep a snapshot iter_<N>.pth every N iterations")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--exp_name", default=None, help="run name under --saved_dir (default: <model>-<preset>)")
    run.add_argument("--saved_dir", default="saved_models")
    run.add_argument("--resume", help="continue a run exactly from its checkpoint (weights, optimiser, schedule, "
                                       "RNG states, data position); 'auto': the run directory's last.pth if any")
    run.add_argument("--finetune", help="start from a checkpoint's weights only (new optimiser and schedule)")
    run.add_argument("--keep_last", type=int, default=5,
                     help="keep the newest K periodic snapshots iter_<N>.pth (0 = keep all)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="auto",
                     help="mixed precision: autocast to bf16 (CPU or CUDA) or fp16 (with gradient scaling); auto = "
                          "bf16 on CPUs with bf16 units (AVX512-BF16/AMX) and bf16-capable GPUs, off elsewhere (default)")
    run.add_argument("--channels_last", choices=MEMORY_FORMATS, default="auto",
                     help="convolutions in channels_last: auto = on CPU when oneDNN trains the model correctly")
    run.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                     help="synchronise BatchNorm statistics across processes (the paper's setting)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels and no cuDNN autotuning (bit-exact resumption on CPU)")
    run.add_argument("--local_rank", "--local-rank", type=int, default=None,
                     help="set by the legacy torch.distributed.launch (LOCAL_RANK in the environment wins)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    add_model_arguments(parser)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.resume and args.finetune:
        parser.error("--resume and --finetune are mutually exclusive")
    if args.freeze_tps_bn and not (args.tps_from or args.tps_stage):
        parser.error("--freeze_tps_bn needs --tps_from or --tps_stage (a TPS that trains jointly keeps its "
                     "BatchNorms live)")
    if args.tps_from and ((args.resume and args.resume != "auto") or args.finetune):
        parser.error("--tps_from starts a new run; --resume/--finetune already carry the TPS weights")
    if args.tps_stage and (args.tps_from or args.finetune):
        parser.error("--tps_stage trains the TPS itself; --tps_from/--finetune bring one")
    if args.tps_stage is not None and args.tps_stage < 0:
        parser.error(f"--tps_stage must be 0 or more iterations, got {args.tps_stage}")
    if args.train_data and args.train_data.startswith(SYNTH_PREFIX):
        try:
            synth_size(args.train_data)
        except ValueError as error:
            parser.error(str(error))
    if (args.train_data is None) != (args.valid_data is None):
        parser.error("give both --train_data and --valid_data, or neither (built-in synthetic demo data)")
    return args


def run_options(args: argparse.Namespace) -> RunOptions:
    """The engine's options from the command line: data paths (the built-in data without any), the preset
    (paper with data, demo without) and the Config fields the flags set."""
    overrides = {name: getattr(args, name) for name in CONFIG_FLAGS}
    overrides["tps_stage_iters"] = args.tps_stage
    siga = {"switch_iter": args.siga_switch_iter, "warmup_iters": args.siga_warmup}
    overrides["siga"] = {name: value for name, value in siga.items() if value is not None}
    if args.tps_from:
        overrides["freeze_tps"] = True
    if args.sensitive and args.charset is None:
        overrides["charset"] = "94"
    preset = args.preset or ("paper" if args.train_data else "demo")
    data = {name: getattr(args, name) for name in ("train_data", "valid_data", "mask_root", "curriculum_data",
                                                    "curriculum_mask_root")}
    if args.train_data is not None and args.curriculum_data is None and args.curriculum_iters is None:
        overrides["curriculum_iters"] = 0  # your own data: no curriculum unless asked for (a preset's needs its data)
    if args.train_data is None:
        data = builtin_data(preset, curriculum=make_config(preset, **overrides).curriculum_iters > 0)
        if args.curriculum_data:  # your own curriculum before the built-in data
            data.update(curriculum_data=args.curriculum_data, curriculum_mask_root=args.curriculum_mask_root)
    return RunOptions(data["train_data"], data["valid_data"], args.select_data, args.batch_ratio, data["mask_root"],
                      data["curriculum_data"], data["curriculum_mask_root"], preset, args.saved_dir,
                      args.exp_name, args.resume, args.finetune, args.tps_from, args.pretrained_vit, args.keep_last,
                      args.device, args.amp, args.channels_last, args.sync_bn, args.deterministic, args.local_rank,
                      overrides)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when finished, 128 + signal number when stopped by SIGTERM/SIGINT (checkpoint saved)."""
    args = parse_args(argv)
    retain_freed_cpu_memory()
    options = run_options(args)
    prepare = ((lambda: build_builtin_data(options.train_data, options.curriculum_data))
               if args.train_data is None else None)
    summary = train(options, prepare)
    return 128 + summary["stopped_by_signal"] if summary["stopped_by_signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
