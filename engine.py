"""The training engine: ``train(options, overrides)`` sets a run up (processes, config, model, data, run
directory) and ``Trainer`` owns it: the step, the loop (``fit``), validation cadence, SIGTERM/SIGINT handling,
logging (console, log.txt, TensorBoard) and checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from checkpoint import (atomic_save, check_finetune_source, load_checkpoint, load_handover, load_pretrained_vit,
                        load_tps, model_from_checkpoint, training_state)
from config import Config, make_config
from dataset import Batch, SkipTally
from distributed import DistEnv, barrier, cleanup, gather_objects, gather_rows, setup, sum_across_ranks
from evaluation import EvalResult, evaluate, weighted_total
from flops import FlopCount
from lmdb_io import DataSourceError
from loaders import curriculum_batches, make_eval_loaders, make_train_loader
from model import build_model
from modules.losses import LossResult, training_loss
from modules.outputs import to_float32
from modules.sync_batchnorm import convert_sync_batchnorm
from optimization import build_optimizer, build_scheduler
from tokenizer import Tokenizer
from utils import (AMP_DTYPES, autocast, bf16_emulation_reason, capture_rng_state, configure_determinism, resolve_amp,
                   restore_rng_state, seed_everything, use_channels_last)


@dataclass
class RunOptions:
    """What a training run needs besides its Config: data, run directory, resumption, devices."""

    train_data: str
    valid_data: str
    select_data: str = "/"
    batch_ratio: str | None = None
    mask_root: str | None = None
    curriculum_data: str | None = None  # read for the first Config.curriculum_iters iterations (all its leaves)
    curriculum_mask_root: str | None = None
    preset: str = "paper"
    saved_dir: str = "saved_models"
    exp_name: str | None = None
    resume: str | None = None  # a checkpoint, or "auto": the run directory's last.pth if any
    finetune: str | None = None
    tps_from: str | None = None
    pretrained_vit: str | None = None  # DeiT-style ImageNet weights for a ViT backbone (SPEC_SIGA_T §3.9)
    keep_last: int = 5
    device: str = "cpu"
    amp: str = "off"
    channels_last: str = "auto"
    sync_bn: bool = True
    deterministic: bool = False
    local_rank: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # Config fields set on the command line
    handover_from: str | None = None  # a TPS stage's baseline checkpoint whose every tensor starts the SIGA model
    start_iter: int = 0  # a new run's first iteration (a stage handover continues the stage's schedule)
    stop_iter: int | None = None  # stop here instead of at Config.num_iter (a handover's stage)

    def run_dir(self, config: Config) -> Path:
        """``saved_dir/exp_name``; a resumed run without a name continues in its checkpoint's directory."""
        if self.exp_name:
            return Path(self.saved_dir) / self.exp_name
        if self.resume and self.resume != "auto":
            return Path(self.resume).parent
        return Path(self.saved_dir) / f"{config.model}-{self.preset}"


def log(env: DistEnv, message: str) -> None:
    """Print on rank 0 only (above the progress bar), flushed at once for launchers that pipe stdout."""
    if env.is_main:
        tqdm.write(message)
        sys.stdout.flush()


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


class RunLog:
    """Rank 0's outputs: console lines (above the progress bar), ``log.txt`` and TensorBoard scalars;
    no-ops on the other ranks."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.env, self.path, self.writer = env, run_dir / "log.txt", None
        if env.is_main:
            from tensorboardX import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)

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


def wrap_ddp(model: torch.nn.Module, env: DistEnv, sync_bn: bool) -> torch.nn.Module:
    """DistributedDataParallel without ``find_unused_parameters`` (every trainable parameter is used).
    Synchronised BatchNorms keep identical running statistics on every rank, so buffers need no
    broadcast before each forward (the keyword was renamed in torch 2.14)."""
    from torch.nn.parallel import DistributedDataParallel

    keyword = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **{keyword: not sync_bn})


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


def gather_step_status(values: list[float], env: DistEnv) -> dict[str, float]:
    """Every rank's (tokens, empty batch, data failure, signal) combined: tokens summed, the rest the
    maximum over ranks, so that all ranks take the same branch at this step."""
    rows = gather_rows(values, env)
    combined = [rows[:, 0].sum().item(), *rows[:, 1:].max(0).values.tolist()]
    return dict(zip(("tokens", "empty", "failure", "signal"), combined))


#: after this many steps a run logs its measured speed and the estimated time to its end
ETA_AFTER_STEPS = 50


@dataclass
class FitState:
    """The loop's running numbers: best/last validation accuracy, skipped samples, throughput windows."""

    best_accuracy: float = -1.0
    scan_skipped: SkipTally = field(default_factory=SkipTally)
    last_accuracy: float | None = None
    loss: float = float("nan")
    stopped_by: int = 0
    skipped: SkipTally = field(default_factory=SkipTally)
    window_start: float = field(default_factory=time.perf_counter)
    window_images: int = 0
    run_start: float = field(default_factory=time.perf_counter)
    run_images: int = 0
    first_step: int = 0  # the iteration this process started (or resumed) at
    end: int = 0  # the iteration it stops at: Config.num_iter, or earlier for a handover's stage
    counted_flops: int = 0  # FLOPs of this process's first step, forward and backward (flops.FlopCount)
    counted_images: int = 0  # the images of that step


class Trainer:
    """One process's share of a run: the model (DDP-wrapped when distributed), optimiser, schedule and
    gradient scaler; ``step`` is one optimiser step, ``fit`` the whole loop, which logs to and checkpoints
    into ``run_dir`` (keeping the ``keep_last`` newest periodic snapshots)."""

    def __init__(self, model: torch.nn.Module, config: Config, tokenizer: Tokenizer, env: DistEnv,
                 amp_dtype: torch.dtype | None, sync_bn: bool = True, run_dir: Path | None = None,
                 keep_last: int = 5):
        self.model, self.config, self.tokenizer, self.env, self.amp_dtype = model, config, tokenizer, env, amp_dtype
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16)
        self.forward = wrap_ddp(model, env, sync_bn) if env.is_distributed else model
        self.run_dir, self.keep_last = run_dir, keep_last
        self.run_log = RunLog(run_dir, env) if run_dir is not None else None
        self.valid_loaders: dict[str, DataLoader] = {}  # the current fit's

    def load_state(self, checkpoint: dict) -> None:
        """Optimiser, schedule and scaler of a checkpoint being resumed."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])

    def skip_schedule(self, steps: int) -> None:
        """Advance the learning-rate schedule by ``steps`` without training: a new run that starts at iteration
        ``steps`` (a stage handover) continues the schedule where its stage stopped."""
        with warnings.catch_warnings():  # the schedule is stepped before any optimiser step, on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()

    def step(self, batch: Batch, iteration: int, recognition_weight: float = 1.0) -> LossResult:
        """One optimiser step on this rank's batch (gradients averaged over ranks by DDP)."""
        device = self.env.device
        ids, lengths = self.tokenizer.encode(batch.labels)
        # Steps after the longest label carry no loss and cannot change earlier steps: skip them.
        steps = int(lengths.max())
        ids, lengths = ids[:, : steps + 1].to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        images = batch.images.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True) if batch.masks is not None else None
        with autocast(device, self.amp_dtype):
            output = self.forward(images, ids[:, :-1], masks)
        loss = training_loss(to_float32(output), ids[:, 1:], lengths, iteration, self.config.siga,
                             self.config.num_steps, recognition_weight, masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss

    def validate(self, loaders: dict[str, DataLoader]) -> tuple[dict[str, EvalResult], EvalResult]:
        """Per-dataset results over every rank's shard and their sample-weighted total (the same numbers
        as one process scoring the whole sets)."""
        local = [evaluate(self.model, loader, self.tokenizer, self.env.device, amp_dtype=self.amp_dtype)
                 for loader in loaders.values()]
        fields = 5  # the numeric fields of EvalResult, in order
        sums = sum_across_ranks([value for r in local for value in (r.num_samples, r.num_correct, r.ned_sum,
                                                                   r.confidence_sum, r.num_unreadable)], self.env)
        results = {name: EvalResult(int(round(sums[fields * i])), int(round(sums[fields * i + 1])),
                                    sums[fields * i + 2], sums[fields * i + 3], int(round(sums[fields * i + 4])))
                   for i, name in enumerate(loaders)}
        return results, weighted_total(results.values())

    def save(self, names: list[str], iteration: int, best_accuracy: float) -> None:
        """Write the run's checkpoint under ``names`` from rank 0, atomically (collective: every rank's RNG
        states are gathered), and keep the ``keep_last`` newest periodic snapshots ``iter_<N>.pth``."""
        rng_states = gather_objects(capture_rng_state(self.env.device), self.env)
        if not self.env.is_main:
            return
        # one batch per iteration: the sampler resumes at global batch `iteration` of this layout
        sampler = {"batches": iteration, "world_size": self.env.world_size, "batch_size": self.config.batch_size}
        state = training_state(self.model, self.config, self.tokenizer, optimizer=self.optimizer.state_dict(),
                               scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                               iteration=iteration, best_accuracy=best_accuracy, rng=rng_states, sampler=sampler)
        for name in names:
            atomic_save(state, self.run_dir / name)
        if self.keep_last > 0 and any(name.startswith("iter_") for name in names):
            snapshots = sorted(self.run_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in snapshots[: -self.keep_last]:
                old.unlink()

    def fit(self, batches: Iterator[Batch], valid_loaders: dict[str, DataLoader], start: int, best_accuracy: float,
            train_data: str, scan_skipped: SkipTally, stop: int | None = None) -> FitState:
        """Train from iteration ``start`` to ``config.num_iter`` (or ``stop``), validating on ``valid_loaders`` and
        checkpointing on the config's cadence; a signal or a data failure (reported with ``train_data``)
        checkpoints and stops (a failure raises SystemExit). ``scan_skipped``: labels the data scan left out."""
        if self.run_dir is None:
            raise ValueError("Trainer.fit needs a run_dir for its logs and checkpoints")
        self.valid_loaders = valid_loaders
        end = self.config.num_iter if stop is None else min(stop, self.config.num_iter)
        state = FitState(best_accuracy=best_accuracy, scan_skipped=scan_skipped, first_step=start, end=end)
        progress = tqdm(range(start, end), initial=start, total=end,
                        dynamic_ncols=True, disable=None if self.env.is_main else True)
        with StopSignal() as stop:
            for iteration in progress:
                batch, failure = next_batch(batches, train_data)
                tokens = sum(len(label) + 1 for label in batch.labels) if batch is not None else 0
                if batch is not None:
                    state.skipped.add(batch.skipped)
                status = gather_step_status([tokens, batch is not None and len(batch) == 0, failure is not None,
                                             stop.signum], self.env)
                if status["signal"] or status["failure"]:
                    progress.close()
                    self._stop(iteration, state, stop.signum or int(status["signal"]), failure)
                    break
                if status["empty"]:  # some rank's batch was all corrupt samples: every rank skips the step
                    self.scheduler.step()
                    continue
                weight = tokens * self.env.world_size / status["tokens"] if self.env.is_distributed else 1.0
                if state.counted_images:
                    loss = self.step(batch, iteration, weight)
                else:  # the first step is counted: the run reports its training compute
                    with FlopCount(self.model, backward=True) as count:
                        loss = self.step(batch, iteration, weight)
                    state.counted_flops, state.counted_images = count.total, len(batch)
                state.window_images += len(batch)
                state.run_images += len(batch)
                self._after_step(iteration + 1, loss, state, progress)
        progress.close()
        return state

    def _stop(self, iteration: int, state: FitState, signum: int, failure: str | None) -> None:
        """Checkpoint ``last.pth`` on every rank's behalf, then stop: by a signal (returning), or by a data
        failure here or on another rank (SystemExit with the reason)."""
        self.save(["last.pth"], iteration, state.best_accuracy)
        if signum:
            state.stopped_by = signum
            self.run_log.line(f"stopped by {signal.Signals(signum).name} at iteration {iteration}; "
                              f"continue with --resume {self.run_dir / 'last.pth'}")
            return
        reason = failure or "another process could not load its training data (see its error)"
        self.run_log.line(f"stopped at iteration {iteration}: {reason}")
        raise SystemExit(f"training stopped at iteration {iteration}: {reason}\n"
                         f"checkpoint saved: {self.run_dir / 'last.pth'}")

    def _after_step(self, step: int, loss: LossResult, state: FitState, progress: tqdm) -> None:
        """Logging every 10 steps, snapshots every ``save_interval``, validation every ``valid_interval``."""
        validating = step % self.config.valid_interval == 0 or step == state.end
        if step % 10 == 0 or validating:
            self._log_losses(step, loss, state, progress)
        if step == state.first_step + ETA_AFTER_STEPS and step < state.end:
            self._log_eta(step, state)
        if step % self.config.save_interval == 0:
            self.save([f"iter_{step}.pth"], step, state.best_accuracy)
        if validating:
            self._validate_and_save(step, state)

    def _log_losses(self, step: int, loss: LossResult, state: FitState, progress: tqdm) -> None:
        """Loss terms (averaged over ranks), learning rate and throughput to the progress bar and TensorBoard."""
        names = ["loss", *loss.terms, "images"]
        values = [loss.total.item(), *(term.item() for term in loss.terms.values()), state.window_images]
        reduced = dict(zip(names, sum_across_ranks(values, self.env)))
        images_per_second = reduced.pop("images") / (time.perf_counter() - state.window_start)
        state.loss = reduced.pop("loss") / self.env.world_size
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{state.loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_second:.0f}")
        scalars = {"train/loss": state.loss, "train/lr": lr, "train/images_per_second": images_per_second}
        if len(reduced) > 1:
            scalars.update({f"train/{name}": value / self.env.world_size for name, value in reduced.items()})
        self.run_log.scalars(step, scalars)
        state.window_start, state.window_images = time.perf_counter(), 0

    def flops_per_image(self, state: FitState) -> float:
        """Training FLOPs per image (forward and backward) of the first step every rank counted (collective)."""
        flops, images = sum_across_ranks([state.counted_flops, state.counted_images], self.env)
        return flops / max(images, 1)

    def _log_eta(self, step: int, state: FitState) -> None:
        """The measured speed of this run's first steps, the time its remaining steps will take at that speed
        (validation not included) and the training compute of all its steps."""
        elapsed = time.perf_counter() - state.run_start
        images = sum_across_ranks([state.run_images], self.env)[0]
        per_image = self.flops_per_image(state)
        seconds_per_step = elapsed / (step - state.first_step)
        remaining = seconds_per_step * (state.end - step)
        planned = images / (step - state.first_step) * (state.end - state.first_step)
        self.run_log.line(f"speed over the first {step - state.first_step} steps: {images / elapsed:.1f} img/s, "
                          f"{seconds_per_step:.2f} s/step; estimated {remaining / 60:.1f} min for the remaining "
                          f"{state.end - step} steps (validation not included); {per_image / 1e9:.4g} GFLOP per "
                          f"image forward and backward, {per_image * planned / 1e12:.4g} TFLOP for the "
                          f"{state.end - state.first_step} steps")

    def _scored_in(self) -> str:
        """" scored in bf16" (or fp16) when validation runs under autocast: its accuracy can differ slightly
        from test.py's full-precision scoring."""
        names = {dtype: name for name, dtype in AMP_DTYPES.items()}
        return "" if self.amp_dtype is None else f" scored in {names[self.amp_dtype]}"

    def _validate_and_save(self, step: int, state: FitState) -> None:
        results, total = self.validate(self.valid_loaders)
        state.last_accuracy = total.accuracy
        elapsed = time.perf_counter() - state.run_start
        images = sum_across_ranks([state.run_images], self.env)[0]
        skipped = self.all_skipped(state)
        line = (f"[{step}/{self.config.num_iter}] loss {state.loss:.4f} valid accuracy {total.accuracy:.2f}% "
                f"NED {total.ned:.4f} (n={total.num_samples}){self._scored_in()} | {elapsed:.0f} s, "
                f"{images / elapsed:.0f} img/s"
                + (f", {skipped.total()} corrupt samples skipped" if skipped.total() else ""))
        if len(results) > 1:
            line += " | " + ", ".join(f"{name} {result.accuracy:.2f}%" for name, result in results.items())
        names = ["last.pth"]
        if total.accuracy > state.best_accuracy:
            state.best_accuracy = total.accuracy
            names.append("best_accuracy.pth")
            line += " (best)"
        self.save(names, step, state.best_accuracy)
        self.run_log.scalars(step, {**{f"valid/{name}/accuracy": r.accuracy for name, r in results.items()},
                                    "valid/total_accuracy": total.accuracy, "valid/total_ned": total.ned})
        self.run_log.line(line)

    def all_skipped(self, state: FitState) -> SkipTally:
        """Samples skipped on every rank during the run, plus those of the initial label scan (collective)."""
        return SkipTally.merged(gather_objects(state.skipped, self.env) + [state.scan_skipped])


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


def resolve_checkpoint(options: RunOptions, env: DistEnv) -> tuple[Config, dict | None]:
    """The run's config and the checkpoint it resumes (None for a new run): ``--resume auto`` picks the run
    directory's ``last.pth`` when there is one."""
    if options.resume == "auto":
        candidate = options.run_dir(make_config(options.preset, model=options.overrides.get("model"))) / "last.pth"
        options.resume = str(candidate) if candidate.is_file() else None
        log(env, f"--resume auto: {'continuing from ' + str(candidate) if options.resume else 'no checkpoint, new run'}")
    if options.resume:
        checkpoint = load_checkpoint(options.resume)
        return Config.from_dict(checkpoint["config"]), checkpoint
    return make_config(options.preset, **options.overrides), None


def build_training_model(options: RunOptions, config: Config, tokenizer: Tokenizer, checkpoint: dict | None,
                         env: DistEnv) -> torch.nn.Module:
    """The model on this rank's device: the resumed or fine-tuned weights (or a TPS from ``tps_from``, a ViT
    from ``pretrained_vit``), with synchronised BatchNorms when distributed."""
    model = build_model(config, tokenizer)
    if options.tps_from:
        load_tps(model, options.tps_from)
    if options.handover_from and checkpoint is None:
        log(env, f"stage handover: {load_handover(model, options.handover_from)} tensors from "
                 f"{options.handover_from}, from iteration {options.start_iter} on")
    if options.pretrained_vit and checkpoint is None:
        log(env, f"{load_pretrained_vit(model, options.pretrained_vit)} ViT tensors from {options.pretrained_vit}")
    if checkpoint is not None:
        model_from_checkpoint(checkpoint, model, options.resume)
    elif options.finetune:
        tuned = load_checkpoint(options.finetune)
        check_finetune_source(tuned, config, tokenizer, options.finetune)
        model_from_checkpoint(tuned, model, options.finetune)
    model.to(env.device)
    if env.is_distributed and options.sync_bn:
        model = convert_sync_batchnorm(model, env.device, env.batchnorm_group)
    return model


def prepare_trainer(options: RunOptions, env: DistEnv) -> tuple[Trainer, dict | None]:
    """Config, seeded model, Trainer with its run directory and log (and the checkpoint being resumed)."""
    config, checkpoint = resolve_checkpoint(options, env)
    configure_determinism(options.deterministic)
    seed_everything(config.seed)  # identical initial weights on every rank
    tokenizer = Tokenizer.from_config(config)
    model = build_training_model(options, config, tokenizer, checkpoint, env)
    try:
        channels_last = use_channels_last(model, options.channels_last, env.device, training=True)
    except ValueError as error:
        raise SystemExit(f"error: --channels_last on: {error}") from None
    amp = resolve_amp(options.amp, env.device)
    emulated = bf16_emulation_reason(env.device) if amp == "bf16" else None
    if emulated:
        log(env, f"warning: --amp bf16: {emulated}; --amp auto picks fp32 here")
    trainer = Trainer(model, config, tokenizer, env, AMP_DTYPES[amp], options.sync_bn, options.run_dir(config),
                      options.keep_last)
    if checkpoint is not None:
        trainer.load_state(checkpoint)
    else:
        trainer.skip_schedule(options.start_iter)
    restore_process_rng(checkpoint, config, env)
    if env.is_main:
        (trainer.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    parameters = sum(p.numel() for p in model.parameters())
    log(env, f"model {config.model}: {parameters:,} parameters ({sum(p.numel() for p in trainer.trainable):,} "
             f"trainable); {env.world_size} process(es) × batch {config.batch_size} on {env.device}, amp "
             f"{amp}{' (auto)' if options.amp == 'auto' else ''}, {'channels_last' if channels_last else 'NCHW'}; "
             f"run dir {trainer.run_dir}")
    return trainer, checkpoint


def make_training_batches(options: RunOptions, config: Config, trainer: Trainer, env: DistEnv,
                          start: int) -> tuple[Iterator[Batch], SkipTally]:
    """This rank's training batches from iteration ``start`` on: the curriculum data (every leaf) for the first
    ``config.curriculum_iters`` iterations, then the training data; and the labels their scans skipped."""
    until = config.curriculum_iters
    if bool(until) != bool(options.curriculum_data):
        raise SystemExit(f"error: a curriculum needs both its data (--curriculum_data, given: "
                         f"{options.curriculum_data}) and its length (--curriculum_iters, {until}; 0 turns a "
                         f"preset's curriculum off)")
    logger = functools.partial(log, env)
    loader, scan_skipped = make_train_loader(
        options.train_data, options.select_data, options.batch_ratio, options.mask_root, config, trainer.tokenizer,
        trainer.model.needs_masks, env, max(0, start - until), logger)
    first = None
    if start < until:
        first, first_skipped = make_train_loader(options.curriculum_data, "/", None, options.curriculum_mask_root,
                                                 config, trainer.tokenizer, trainer.model.needs_masks, env, start,
                                                 logger)
        scan_skipped = SkipTally.merged([first_skipped, scan_skipped])
        log(env, f"curriculum: iterations {start}–{until - 1} read {options.curriculum_data}, "
                 f"then {options.train_data}")
    return curriculum_batches(first, until, loader, start), scan_skipped


def run(options: RunOptions, env: DistEnv) -> dict:
    """This process's part of a run; returns its summary (see ``train``)."""
    trainer, checkpoint = prepare_trainer(options, env)
    config = trainer.config
    start = checkpoint["iteration"] if checkpoint else options.start_iter
    batches, scan_skipped = make_training_batches(options, config, trainer, env, start)
    valid_loaders = make_eval_loaders(options.valid_data, config, trainer.tokenizer, env)
    data_name = (f"{options.curriculum_data} then {options.train_data}" if config.curriculum_iters
                 else options.train_data)
    state = trainer.fit(batches, valid_loaders, start,
                        checkpoint.get("best_accuracy", -1.0) if checkpoint else -1.0, data_name, scan_skipped,
                        options.stop_iter)
    skipped = trainer.all_skipped(state)
    compute = trainer.flops_per_image(state) * sum_across_ranks([state.run_images], env)[0] / 1e12
    if skipped.total():
        trainer.run_log.line(f"corrupt samples skipped per LMDB:\n{skipped.report()}")
    trainer.run_log.close()
    summary = {"iterations": state.end, "best_accuracy": state.best_accuracy,
               "last_accuracy": state.last_accuracy, "skipped_samples": skipped.total(),
               "skipped_per_lmdb": skipped.per_lmdb(), "best_checkpoint": str(trainer.run_dir / "best_accuracy.pth"),
               "last_checkpoint": str(trainer.run_dir / "last.pth"), "stopped_by_signal": state.stopped_by,
               "training_tflop": compute}
    if not state.stopped_by:
        last = state.last_accuracy if state.last_accuracy is not None else float("nan")
        log(env, f"done: validation accuracy {last:.2f}% (best {state.best_accuracy:.2f}%), {skipped.total()} "
                 f"corrupt samples skipped; training compute {compute:.4g} TFLOP; checkpoint "
                 f"{summary['best_checkpoint']}")
    return summary


#: the glyph-free model whose run trains a SIGA model's TPS in the one-command two-stage recipe (--tps_stage)
TPS_STAGE_BASELINES = {"SIGA_R": "TRBA", "SIGA_S": "TSBA"}
TPS_STAGE_DIR = "tps_stage"
#: what the stage's baseline takes from the main run's config besides the command line: its widths (its model's
#: preset layer applies to the main model only)
TPS_STAGE_SHARED_FIELDS = ("tps_channels", "tps_fc", "backbone_channels", "backbone_blocks", "hidden_size")


def tps_stage_options(options: RunOptions) -> RunOptions | None:
    """The options of the run that trains this run's TPS first (``Config.tps_stage_iters`` steps of the
    glyph-free baseline, in ``<run dir>/tps_stage``, continued there if interrupted), or None: no stage is
    configured, or the TPS comes from elsewhere (``tps_from``, a fine-tuned or resumed checkpoint). A handover's
    stage (``Config.stage_handover``) runs the first ``tps_stage_iters`` steps of the main run's own schedule and
    curriculum; otherwise the stage has a schedule of its own over its steps."""
    config = make_config(options.preset, **options.overrides)
    if config.tps_stage_iters <= 0 or options.tps_from or options.finetune:
        if config.stage_handover:
            raise SystemExit("error: --stage_handover hands a TPS stage over to the main model: it needs "
                             "--tps_stage N > 0, and no --tps_from or --finetune")
        return None
    run_dir = options.run_dir(config)
    if options.resume and (options.resume != "auto" or (run_dir / "last.pth").is_file()):
        return None
    if config.model not in TPS_STAGE_BASELINES:
        raise SystemExit(f"error: --tps_stage trains the TPS of {sorted(TPS_STAGE_BASELINES)}; "
                         f"{config.model} has no such baseline")
    stage = {name: getattr(config, name) for name in TPS_STAGE_SHARED_FIELDS}
    stage |= {"model": TPS_STAGE_BASELINES[config.model], "tps_stage_iters": 0, "stage_handover": False,
              "freeze_tps": False, "freeze_tps_bn": False, "seg_resolution": "full",
              "glyph_context": "none"}
    if config.stage_handover:
        if config.tps_stage_iters >= config.num_iter:
            raise SystemExit(f"error: a stage handover needs the stage ({config.tps_stage_iters} iterations) to end "
                             f"before the run ({config.num_iter})")
        stage |= {"num_iter": config.num_iter, "curriculum_iters": config.curriculum_iters}
    else:
        stage |= {"num_iter": config.tps_stage_iters,
                  "curriculum_iters": min(config.curriculum_iters, config.tps_stage_iters)}
    return dataclasses.replace(options, saved_dir=str(run_dir), exp_name=TPS_STAGE_DIR, resume="auto",
                               stop_iter=config.tps_stage_iters, overrides={**options.overrides, **stage})


def run_tps_stage(options: RunOptions, env: DistEnv) -> tuple[RunOptions, dict | None]:
    """Train the TPS stage of ``options`` if it has one and it has not finished yet; returns the main run's
    options (the stage's TPS, frozen; at a handover also every other tensor of the stage's baseline and the
    iteration to continue from) and the stage's summary when it was stopped by a signal (else None)."""
    stage = tps_stage_options(options)
    if stage is None:
        return options, None
    config = make_config(stage.preset, **stage.overrides)
    last = Path(stage.saved_dir) / TPS_STAGE_DIR / "last.pth"
    finished = last.is_file() and load_checkpoint(last)["iteration"] >= stage.stop_iter
    log(env, f"TPS stage: {config.model} for {stage.stop_iter} iterations in {last.parent}"
             + (" (finished, reused)" if finished else ""))
    if not finished:
        summary = run(stage, env)
        if summary["stopped_by_signal"]:
            log(env, "the TPS stage was stopped: the same command continues it, then trains the main model")
            return options, summary
    overrides = {**options.overrides, "freeze_tps": True}
    if make_config(options.preset, **options.overrides).stage_handover:
        return dataclasses.replace(options, handover_from=str(last), start_iter=stage.stop_iter,
                                   overrides=overrides), None
    return dataclasses.replace(options, tps_from=str(last), overrides=overrides), None


def train(options: RunOptions, prepare_data: Callable[[], None] | None = None) -> dict:
    """Run (this process's part of) training under the launcher's process group, if any; ``prepare_data``
    runs on rank 0 before anyone reads the data (e.g. building the synthetic demo set). A configured TPS
    stage (``Config.tps_stage_iters``) runs first. Returns a summary: iterations, accuracies, checkpoints,
    skipped samples and the signal that stopped the run (0 if none)."""
    env = setup(options.device, options.local_rank)
    try:
        if prepare_data is not None and env.is_main:
            prepare_data()
        barrier(env)
        options, stopped_stage = run_tps_stage(options, env)
        summary = stopped_stage or run(options, env)
        barrier(env)  # no rank tears the process groups down while another still uses them
        return summary
    finally:
        cleanup(env)
