"""Train a recognition model on LMDB data (SPEC §5), in one process or many (torchrun).

With no data arguments it builds the built-in synthetic set under ``data/synth_demo`` (if absent)
and trains the ``demo`` preset, sized for a 2-core CPU.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import (Batch, Collate, DataSourceError, RatioBatchSampler, ShuffledBatchSampler, SkipTally,
                     TrainingDraws, build_dataset_groups, find_lmdb_leaves, make_eval_loader)
from distributed import DistEnv, barrier, cleanup, gather_objects, gather_rows, setup, sum_across_ranks
from model import MEMORY_FORMATS, MODELS, ModelOutput, build_model, load_tps, use_channels_last
from modules.augment import JointAugment
from modules.losses import SigaLossSettings, recognition_loss, siga_loss_terms
from modules.sync_batchnorm import convert_sync_batchnorm
from utils import (Config, EvalResult, Tokenizer, atomic_save, capture_rng_state, evaluate, load_checkpoint,
                   make_config, one_cycle_scheduler, restore_rng_state, retain_freed_cpu_memory, seed_everything,
                   siga_loss_settings, weighted_total)

DEMO_ROOT = Path("data/synth_demo")
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train_data", help="root of the training LMDBs (every leaf directory is one LMDB)")
    data.add_argument("--select_data", default="/",
                      help="'-'-separated substrings selecting leaves under --train_data, e.g. MJ-ST ('/' = all)")
    data.add_argument("--batch_ratio", default=None,
                      help="'-'-separated share of each selection per batch, e.g. 0.5-0.5 (default: uniform "
                           "sampling over the concatenation, as the official SIGA_R)")
    data.add_argument("--valid_data", help="root of the validation LMDBs (each leaf scored, then the weighted total)")
    data.add_argument("--mask_root", help="root of the mask LMDBs mirroring --train_data (default: K-means on the fly)")
    data.add_argument("--no_aug", dest="augment", action="store_false", default=None, help="disable augmentation")
    data.add_argument("--aug_mode", choices=["sample", "fixed"], help="per-sample draws, or the official fixed draw")
    data.add_argument("--workers", type=int)
    data.add_argument("--charset", help="'36', '94' or a file with one character per line")
    data.add_argument("--sensitive", action="store_true", default=None, help="case-sensitive labels (charset 94)")
    model = parser.add_argument_group("model and optimisation")
    model.add_argument("--model", choices=sorted(MODELS), help="architecture (default TRBA)")
    model.add_argument("--tps_from", help="load the TPS of a TRBA/SIGA_R checkpoint of this repo and freeze it "
                                          "(the paper's two-stage recipe); without it the TPS trains jointly")
    model.add_argument("--freeze_tps_bn", action="store_true", default=None,
                       help="with --tps_from: also keep the TPS BatchNorm statistics fixed (official: they update)")
    model.add_argument("--siga_switch_iter", type=int,
                       help="iteration of the SIGA loss switch: hard-sample L_seg and λ 1.0 → 0.3 (default 20000)")
    model.add_argument("--preset", default=None, choices=["paper", "demo", "tiny"],
                       help="size/schedule preset (default: paper with data arguments, demo without)")
    model.add_argument("--batch_size", type=int, help="per-process batch size")
    model.add_argument("--num_iter", type=int, help="number of optimiser steps")
    model.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    model.add_argument("--grad_clip", type=float)
    model.add_argument("--max_label_length", type=int)
    model.add_argument("--seed", type=int)
    model.add_argument("--valid_interval", type=int, help="validate and checkpoint every N iterations")
    model.add_argument("--save_interval", type=int, help="keep a snapshot iter_<N>.pth every N iterations")
    run = parser.add_argument_group("run")
    run.add_argument("--exp_name", default=None, help="run name under --saved_dir (default: <model>-<preset>)")
    run.add_argument("--saved_dir", default="saved_models")
    run.add_argument("--resume", help="continue a run exactly from its checkpoint (weights, optimiser, schedule, "
                                       "RNG states, data position); 'auto': the run directory's last.pth if any")
    run.add_argument("--finetune", help="start from a checkpoint's weights only (new optimiser and schedule)")
    run.add_argument("--keep_last", type=int, default=5,
                     help="keep the newest K periodic snapshots iter_<N>.pth (0 = keep all)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--amp", choices=sorted(AMP_DTYPES), default="off",
                     help="mixed precision: autocast to bf16 (CPU or CUDA) or fp16 (with gradient scaling)")
    run.add_argument("--channels_last", choices=MEMORY_FORMATS, default="auto",
                     help="convolutions in channels_last: auto = on CPU when oneDNN trains the model correctly")
    run.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                     help="synchronise BatchNorm statistics across processes (the paper's setting)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels and no cuDNN autotuning (bit-exact resumption on CPU)")
    run.add_argument("--local_rank", "--local-rank", type=int, default=None,
                     help="set by the legacy torch.distributed.launch (LOCAL_RANK in the environment wins)")
    args = parser.parse_args(argv)
    if args.resume and args.finetune:
        parser.error("--resume and --finetune are mutually exclusive")
    if args.freeze_tps_bn and not args.tps_from:
        parser.error("--freeze_tps_bn needs --tps_from (a TPS that trains jointly keeps its BatchNorms live)")
    if args.tps_from and ((args.resume and args.resume != "auto") or args.finetune):
        parser.error("--tps_from starts a new run; --resume/--finetune already carry the TPS weights")
    if (args.train_data is None) != (args.valid_data is None):
        parser.error("give both --train_data and --valid_data, or neither (built-in synthetic demo data)")
    return args


def build_config(args: argparse.Namespace, checkpoint: dict | None = None) -> Config:
    """The resumed checkpoint's config, or the preset with the command line's overrides."""
    if checkpoint is not None:
        return Config.from_dict(checkpoint["config"])
    preset = args.preset or "paper"
    names = ["model", "batch_size", "num_iter", "lr", "grad_clip", "max_label_length", "seed", "valid_interval",
             "save_interval", "workers", "augment", "aug_mode", "charset", "sensitive", "freeze_tps_bn",
             "siga_switch_iter"]
    overrides = {name: getattr(args, name) for name in names}
    if args.tps_from:
        overrides["freeze_tps"] = True
    if args.sensitive and args.charset is None:
        overrides["charset"] = "94"
    return make_config(preset, **overrides)


def demo_data_paths() -> tuple[str, str, str]:
    """(train root, valid root, mask root) of the built-in synthetic demo data."""
    return str(DEMO_ROOT / "images" / "train"), str(DEMO_ROOT / "images" / "val"), str(DEMO_ROOT / "masks" / "train")


def ensure_demo_data() -> None:
    """Build the synthetic demo LMDBs on first use."""
    from tools.synth import build_demo_data

    build_demo_data(DEMO_ROOT)


def make_train_loader(args: argparse.Namespace, config: Config, tokenizer: Tokenizer, need_masks: bool, env: DistEnv,
                      start: int) -> tuple[DataLoader, SkipTally]:
    """This rank's endless training loader from global batch ``start`` on, and the labels skipped by
    the initial scan (counted on rank 0 only, every rank scans the same LMDBs)."""
    selections = args.select_data.split("-")
    augmenter = None
    if config.augment:
        augmenter = JointAugment(config.aug_mode, np.random.default_rng(config.seed))
    groups = build_dataset_groups(args.train_data, selections, tokenizer, (config.img_h, config.img_w), "train",
                                  need_masks, args.mask_root, augmenter)
    scan = SkipTally()
    for group, selection in zip(groups, selections):
        skipped = [s for d in group.datasets for s in d.scan_skipped]
        if env.is_main:
            scan.add((s.path, s.index, s.reason) for s in skipped)
        log(env, f"train data '{selection}': {len(group)} samples from {len(group.datasets)} LMDB(s)"
                 + (f", {len(skipped)} unreadable labels skipped" if skipped else ""))
    draws = TrainingDraws([leaf for group in groups for leaf in group.datasets], config.seed)
    global_batch = config.batch_size * env.world_size
    if len(draws) < global_batch:
        raise ValueError(f"{args.train_data}: {len(draws)} training samples, fewer than one global batch of "
                         f"{global_batch} ({config.batch_size} per process × {env.world_size})")
    if args.batch_ratio:
        ratios = [float(r) for r in args.batch_ratio.split("-")]
        sampler = RatioBatchSampler([len(g) for g in groups], ratios, config.batch_size, config.seed, env.rank,
                                    env.world_size, start)
    else:
        sampler = ShuffledBatchSampler(len(draws), config.batch_size, config.seed, env.rank, env.world_size, start)
    loader = DataLoader(draws, batch_sampler=sampler, num_workers=config.workers, collate_fn=Collate(),
                        pin_memory=env.device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed + env.rank))
    return loader, scan


def make_eval_loaders(root: str, config: Config, tokenizer: Tokenizer, env: DistEnv) -> dict[str, DataLoader]:
    """One test-mode loader per leaf LMDB under ``root`` (this rank's shard), keyed by its path relative to ``root``."""
    return {str(leaf.relative_to(root)) if leaf != Path(root) else leaf.name:
            make_eval_loader(leaf, tokenizer, (config.img_h, config.img_w), config.eval_batch_size,
                             min(config.workers, 2), env.rank, env.world_size) for leaf in find_lmdb_leaves(root)}


def validate(model: torch.nn.Module, loaders: dict[str, DataLoader], tokenizer: Tokenizer, env: DistEnv,
             amp_dtype: torch.dtype | None) -> tuple[dict[str, EvalResult], EvalResult]:
    """Per-dataset results over every rank's shard and their sample-weighted total (the same numbers
    as one process scoring the whole sets)."""
    local = [evaluate(model, loader, tokenizer, env.device, amp_dtype=amp_dtype) for loader in loaders.values()]
    sums = sum_across_ranks([value for r in local for value in (r.num_samples, r.num_correct, r.ned_sum,
                                                               r.confidence_sum)], env)
    results = {name: EvalResult(int(round(sums[4 * i])), int(round(sums[4 * i + 1])), sums[4 * i + 2], sums[4 * i + 3])
               for i, name in enumerate(loaders)}
    return results, weighted_total(results.values())


def log(env: DistEnv, message: str) -> None:
    """Print on rank 0 only (above the progress bar), flushed at once for launchers that pipe stdout."""
    if env.is_main:
        tqdm.write(message)
        sys.stdout.flush()


def configure_determinism(deterministic: bool) -> None:
    """``--deterministic``: deterministic kernels (warnings where CUDA has none, e.g. grid_sample's
    backward) and no cuDNN autotuning; otherwise cuDNN picks the fastest kernels for the fixed input size."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class StopSignal:
    """SIGTERM/SIGINT become a request to stop at the next step boundary, after a checkpoint; a second
    signal gets the previous handler (the default: terminate at once)."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])


def training_loss(output: ModelOutput, targets: torch.Tensor, lengths: torch.Tensor, iteration: int,
                  settings: SigaLossSettings, num_steps: int,
                  recognition_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and its named terms: a CE per recognition head and, for SIGA_R, the SIGA losses
    (SPEC §4.6). ``num_steps`` = S: the attention maps of a step-truncated batch are padded back to
    S columns for the glyph pseudo-labels (the padded steps are past every label and get no label).
    ``recognition_weight`` scales the CE terms in the total (under DDP: this rank's share of the global
    token count, so that the averaged gradient is that of the global token mean)."""
    terms = {f"ce_{name}": recognition_loss(logits, targets, lengths) for name, logits in output.auxiliary_logits.items()}
    terms["ce_final"] = recognition_loss(output.logits, targets, lengths)
    total = torch.stack(list(terms.values())).sum() * recognition_weight
    if output.seg_logits is None:
        return total, terms
    if output.rectified_mask is None:
        raise ValueError("SIGA_R's losses need the text masks: pass masks to the teacher-forced forward")
    attention = F.pad(output.attention, (0, num_steps - output.attention.shape[2]))
    siga = siga_loss_terms(output.rectified_mask, output.seg_logits, attention, output.glyph_logits_low,
                           output.glyph_logits_mid, lengths, iteration, settings)
    terms.update(seg=siga.seg, align=siga.align.total, align_ce=siga.align.cross_entropy,
                 align_orthogonality=siga.align.orthogonality, glyph_low=siga.low.total, glyph_low_ce=siga.low.cross_entropy,
                 glyph_low_dice=siga.low.dice, glyph_mid=siga.mid.total, glyph_mid_ce=siga.mid.cross_entropy,
                 glyph_mid_dice=siga.mid.dice)
    return total + siga.total, terms


class Checkpointer:
    """Writes the run's checkpoints from rank 0, atomically: model, optimiser, scheduler, gradient scaler,
    iteration, every rank's RNG state and the sampler position. :meth:`save` is collective."""

    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int, model: torch.nn.Module, optimizer, scheduler,
                 scaler: torch.amp.GradScaler, config: Config, tokenizer: Tokenizer):
        self.run_dir, self.env, self.keep_last = run_dir, env, keep_last
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config, self.tokenizer = config, tokenizer

    def save(self, names: list[str], iteration: int, best_accuracy: float) -> None:
        rng_states = gather_objects(capture_rng_state(self.env.device), self.env)
        if not self.env.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "iteration": iteration,
                 "config": self.config.to_dict(), "charset": self.tokenizer.charset, "best_accuracy": best_accuracy,
                 "rng": rng_states,
                 # one batch per iteration: the sampler resumes at global batch `iteration` of this layout
                 "sampler": {"batches": iteration, "world_size": self.env.world_size,
                             "batch_size": self.config.batch_size}}
        for name in names:
            atomic_save(state, self.run_dir / name)
        if self.keep_last > 0 and any(name.startswith("iter_") for name in names):
            self._prune()

    def _prune(self) -> None:
        """Keep the ``keep_last`` newest periodic snapshots ``iter_<N>.pth``."""
        snapshots = sorted(self.run_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for old in snapshots[: -self.keep_last]:
            old.unlink()


def restore_process_rng(checkpoint: dict | None, config: Config, env: DistEnv) -> None:
    """Each rank's generators: the checkpoint's when it holds this world size's states (exact resume),
    else seeded with seed + rank (distinct dropout per process; + the iteration when resuming)."""
    states = checkpoint.get("rng") if checkpoint else None
    if states is not None and len(states) == env.world_size:
        restore_rng_state(states[env.rank], env.device)
        return
    offset = 0
    if checkpoint is not None:
        saved = checkpoint.get("sampler", {})
        log(env, f"warning: the checkpoint was written by {saved.get('world_size', '?')} process(es) × batch "
                 f"{saved.get('batch_size', '?')}, this run has {env.world_size} × {config.batch_size}: it continues "
                 f"at the same iteration but not along the same trajectory")
        offset = checkpoint["iteration"]
    seed_everything(config.seed + env.rank + offset)


def resolve_run_dir(args: argparse.Namespace, config: Config) -> Path:
    """``--saved_dir/--exp_name``; a resumed run without a name continues in its checkpoint's directory."""
    if args.exp_name:
        return Path(args.saved_dir) / args.exp_name
    if args.resume:
        return Path(args.resume).parent
    return Path(args.saved_dir) / f"{config.model}-{args.preset}"


def next_batch(batches: Iterator[Batch], train_data: str) -> tuple[Batch | None, str | None]:
    """The next training batch, or the reason no batch can come (an unreadable LMDB, a crashed worker)."""
    try:
        return next(batches), None
    except Exception as error:  # reported, then a clean stop after a checkpoint
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[-1] if lines else error.__class__.__name__  # a worker's error ends with its original message
        if isinstance(error, DataSourceError):
            return None, detail
        traceback.print_exc()
        return None, f"data loading from {train_data} failed ({error.__class__.__name__}): {detail}"


def wrap_ddp(model: torch.nn.Module, env: DistEnv, sync_bn: bool) -> torch.nn.Module:
    """DistributedDataParallel without ``find_unused_parameters`` (every trainable parameter is used).
    Synchronised BatchNorms keep identical running statistics on every rank, so buffers need no
    broadcast before each forward (the keyword was renamed in torch 2.14)."""
    from torch.nn.parallel import DistributedDataParallel

    keyword = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **{keyword: not sync_bn})


class Trainer:
    """One process's share of a run: the model (DDP-wrapped when distributed), optimiser, schedule and the step."""

    def __init__(self, model: torch.nn.Module, config: Config, tokenizer: Tokenizer, env: DistEnv,
                 amp_dtype: torch.dtype | None, sync_bn: bool):
        self.model, self.config, self.tokenizer, self.env, self.amp_dtype = model, config, tokenizer, env, amp_dtype
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trainable, lr=config.lr, betas=(config.beta1, config.beta2),
                                          eps=config.eps)
        self.scheduler = one_cycle_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
        self.settings = siga_loss_settings(config)
        self.forward = model
        if env.is_distributed:
            self.forward = wrap_ddp(model, env, sync_bn)

    def load(self, checkpoint: dict) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])

    def step(self, batch: Batch, iteration: int, recognition_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimiser step on this rank's batch (gradients averaged over ranks by DDP)."""
        device = self.env.device
        ids, lengths = self.tokenizer.encode(batch.labels)
        # Steps after the longest label carry no loss and cannot change earlier steps: skip them.
        steps = int(lengths.max())
        ids, lengths = ids[:, : steps + 1].to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        images = batch.images.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True) if batch.masks is not None else None
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.forward(images, ids[:, :-1], masks)
        loss, terms = training_loss(output.to_float32(), ids[:, 1:], lengths, iteration, self.settings,
                                    self.config.num_steps, recognition_weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, terms


def train(args: argparse.Namespace) -> dict:
    """Run (this process's part of) training; returns a summary (iterations, accuracies, checkpoints,
    skipped samples, and the signal that stopped it, if any)."""
    env = setup(args.device, args.local_rank)
    try:
        summary = run_training(args, env)
        barrier(env)  # no rank tears the process groups down while another still uses them
        return summary
    finally:
        cleanup(env)


def build_training_model(args: argparse.Namespace, config: Config, tokenizer: Tokenizer, checkpoint: dict | None,
                         env: DistEnv) -> torch.nn.Module:
    """The model on this rank's device: the resumed or fine-tuned weights (or a TPS from ``--tps_from``),
    with synchronised BatchNorms when distributed."""
    model = build_model(config, tokenizer)
    if args.tps_from:
        load_tps(model, args.tps_from)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    elif args.finetune:
        tuned = load_checkpoint(args.finetune)
        if tuned["charset"] != tokenizer.charset:
            raise ValueError(f"{args.finetune}: charset differs from this run's ({len(tuned['charset'])} vs "
                             f"{len(tokenizer.charset)} characters)")
        model.load_state_dict(tuned["model"])
    model.to(env.device)
    if env.is_distributed and args.sync_bn:
        model = convert_sync_batchnorm(model, env.device, env.batchnorm_group)
    return model


class RunLog:
    """Rank 0's outputs: console lines (above the progress bar), ``log.txt`` and TensorBoard scalars;
    no-ops on the other ranks."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.env, self.path, self.writer = env, run_dir / "log.txt", None
        if env.is_main:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def line(self, text: str) -> None:
        if self.env.is_main:
            log(self.env, text)
            with open(self.path, "a") as log_file:
                log_file.write(text + "\n")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_training(args: argparse.Namespace, env: DistEnv) -> dict:
    if args.preset is None and args.resume in (None, "auto"):
        args.preset = "paper" if args.train_data else "demo"
    if args.train_data is None:
        if env.is_main:
            ensure_demo_data()
        barrier(env)
        args.train_data, args.valid_data, args.mask_root = demo_data_paths()
    if args.resume == "auto":
        candidate = resolve_run_dir(args, make_config(args.preset, model=args.model)) / "last.pth"
        args.resume = str(candidate) if candidate.is_file() else None
        log(env, f"--resume auto: {'continuing from ' + str(candidate) if args.resume else 'no checkpoint, new run'}")
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    config = build_config(args, checkpoint)
    configure_determinism(args.deterministic)
    seed_everything(config.seed)  # identical initial weights on every rank
    device = env.device
    tokenizer = Tokenizer.from_config(config)
    model = build_training_model(args, config, tokenizer, checkpoint, env)
    try:
        channels_last = use_channels_last(model, args.channels_last, device, training=True)
    except ValueError as error:
        raise SystemExit(f"error: --channels_last on: {error}") from None
    amp_dtype = AMP_DTYPES[args.amp]
    trainer = Trainer(model, config, tokenizer, env, amp_dtype, args.sync_bn)
    start_iteration, best_accuracy = 0, -1.0
    if checkpoint is not None:
        trainer.load(checkpoint)
        start_iteration, best_accuracy = checkpoint["iteration"], checkpoint.get("best_accuracy", -1.0)
    restore_process_rng(checkpoint, config, env)

    run_dir = resolve_run_dir(args, config)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    run_log = RunLog(run_dir, env)
    checkpointer = Checkpointer(run_dir, env, args.keep_last, model, trainer.optimizer, trainer.scheduler,
                                trainer.scaler, config, tokenizer)
    train_loader, scan_skipped = make_train_loader(args, config, tokenizer, getattr(model, "needs_masks", False), env,
                                                   start_iteration)
    valid_loaders = make_eval_loaders(args.valid_data, config, tokenizer, env)
    log(env, f"model {config.model}: {sum(p.numel() for p in model.parameters()):,} parameters "
             f"({sum(p.numel() for p in trainer.trainable):,} trainable); {env.world_size} process(es) × batch "
             f"{config.batch_size} on {device}, amp {args.amp}, {'channels_last' if channels_last else 'NCHW'}; "
             f"run dir {run_dir}")

    skipped = SkipTally()
    last_accuracy, stopped_by = None, 0
    batches = iter(train_loader)
    progress = tqdm(range(start_iteration, config.num_iter), initial=start_iteration, total=config.num_iter,
                    dynamic_ncols=True, disable=None if env.is_main else True)
    window_start, window_images = time.perf_counter(), 0
    run_start, run_images = time.perf_counter(), 0
    with StopSignal() as stop:
        for iteration in progress:
            batch, failure = next_batch(batches, args.train_data)
            tokens = 0
            if batch is not None:
                skipped.add(batch.skipped)
                tokens = sum(len(label) + 1 for label in batch.labels)
            status = gather_step_status([tokens, batch is not None and len(batch) == 0, failure is not None,
                                         stop.signum], env)
            if status["signal"] or status["failure"]:
                checkpointer.save(["last.pth"], iteration, best_accuracy)
                progress.close()
                if status["signal"]:
                    stopped_by = stop.signum or int(status["signal"])
                    message = (f"stopped by {signal.Signals(stopped_by).name} at iteration {iteration}; "
                               f"continue with --resume {run_dir / 'last.pth'}")
                    run_log.line(message)
                    break
                reason = failure or "another process could not load its training data (see its error)"
                run_log.line(f"stopped at iteration {iteration}: {reason}")
                raise SystemExit(f"training stopped at iteration {iteration}: {reason}\n"
                                 f"checkpoint saved: {run_dir / 'last.pth'}")
            if status["empty"]:  # some rank's batch was all corrupt samples: every rank skips the step
                trainer.scheduler.step()
                continue
            weight = tokens * env.world_size / status["tokens"] if env.is_distributed else 1.0
            loss, terms = trainer.step(batch, iteration, weight)
            window_images += len(batch)
            run_images += len(batch)
            step = iteration + 1
            validating = step % config.valid_interval == 0 or step == config.num_iter
            if step % 10 == 0 or validating:
                values = sum_across_ranks([loss.item(), *[t.item() for t in terms.values()], window_images], env)
                elapsed = time.perf_counter() - window_start
                loss_value, images_per_second = values[0] / env.world_size, values[-1] / elapsed
                lr = trainer.scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_second:.0f}")
                scalars = {"train/loss": loss_value, "train/lr": lr, "train/images_per_second": images_per_second}
                if len(terms) > 1:
                    scalars.update({f"train/{name}": value / env.world_size for name, value in zip(terms, values[1:-1])})
                run_log.scalars(step, scalars)
                window_start, window_images = time.perf_counter(), 0
            if step % config.save_interval == 0:
                checkpointer.save([f"iter_{step}.pth"], step, best_accuracy)
            if validating:
                results, total = validate(model, valid_loaders, tokenizer, env, amp_dtype)
                last_accuracy = total.accuracy
                elapsed = time.perf_counter() - run_start
                images = sum_across_ranks([run_images], env)[0]
                all_skipped = SkipTally.merged(gather_objects(skipped, env) + [scan_skipped])
                line = (f"[{step}/{config.num_iter}] loss {loss_value:.4f} valid accuracy {total.accuracy:.2f}% "
                        f"NED {total.ned:.4f} (n={total.num_samples}) | {elapsed:.0f} s, {images / elapsed:.0f} img/s"
                        + (f", {all_skipped.total()} corrupt samples skipped" if all_skipped.total() else ""))
                names = ["last.pth"]
                if total.accuracy > best_accuracy:
                    best_accuracy = total.accuracy
                    names.append("best_accuracy.pth")
                    line += " (best)"
                checkpointer.save(names, step, best_accuracy)
                run_log.scalars(step, {**{f"valid/{name}/accuracy": r.accuracy for name, r in results.items()},
                                       "valid/total_accuracy": total.accuracy, "valid/total_ned": total.ned})
                run_log.line(line)
    progress.close()
    all_skipped = SkipTally.merged(gather_objects(skipped, env) + [scan_skipped])
    summary = {"iterations": config.num_iter, "best_accuracy": best_accuracy, "last_accuracy": last_accuracy,
               "skipped_samples": all_skipped.total(), "skipped_per_lmdb": all_skipped.per_lmdb(),
               "best_checkpoint": str(run_dir / "best_accuracy.pth"), "last_checkpoint": str(run_dir / "last.pth"),
               "stopped_by_signal": stopped_by}
    if all_skipped.total():
        run_log.line(f"corrupt samples skipped per LMDB:\n{all_skipped.report()}")
    run_log.close()
    if not stopped_by:
        log(env, f"done: validation accuracy {last_accuracy if last_accuracy is not None else float('nan'):.2f}% "
                 f"(best {best_accuracy:.2f}%), {all_skipped.total()} corrupt samples skipped; "
                 f"checkpoint {summary['best_checkpoint']}")
    return summary


def gather_step_status(values: list[float], env: DistEnv) -> dict[str, float]:
    """Every rank's (tokens, empty batch, data failure, signal) combined: tokens summed, the rest the
    maximum over ranks, so that all ranks take the same branch at this step."""
    rows = gather_rows(values, env)
    combined = [rows[:, 0].sum().item(), *rows[:, 1:].max(0).values.tolist()]
    return dict(zip(("tokens", "empty", "failure", "signal"), combined))


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when finished, 128 + signal number when stopped by SIGTERM/SIGINT (checkpoint saved)."""
    args = parse_args(argv)
    retain_freed_cpu_memory()
    summary = train(args)
    return 128 + summary["stopped_by_signal"] if summary["stopped_by_signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
