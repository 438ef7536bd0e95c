"""Train a recognition model on LMDB data (SPEC §5).

With no data arguments it builds the built-in synthetic set under ``data/synth_demo`` (if absent)
and trains the ``demo`` preset, sized for a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler
from tqdm import tqdm

from dataset import (Batch, Collate, RatioBatchSampler, build_dataset_groups, find_lmdb_leaves, infinite_batches,
                     make_eval_loader)
from model import MODELS, ModelOutput, build_model, load_tps
from modules.augment import JointAugment
from modules.losses import SigaLossSettings, recognition_loss, siga_loss_terms
from utils import (Config, Tokenizer, atomic_save, evaluate, load_checkpoint, make_config, one_cycle_scheduler,
                   seed_everything, siga_loss_settings, weighted_total)

DEMO_ROOT = Path("data/synth_demo")


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
    run.add_argument("--resume", help="continue a run from its checkpoint (model, optimiser, scheduler, iteration)")
    run.add_argument("--finetune", help="start from a checkpoint's weights only (new optimiser and schedule)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.resume and args.finetune:
        parser.error("--resume and --finetune are mutually exclusive")
    if args.freeze_tps_bn and not args.tps_from:
        parser.error("--freeze_tps_bn needs --tps_from (a TPS that trains jointly keeps its BatchNorms live)")
    if args.tps_from and (args.resume or args.finetune):
        parser.error("--tps_from starts a new run; --resume/--finetune already carry the TPS weights")
    if (args.train_data is None) != (args.valid_data is None):
        parser.error("give both --train_data and --valid_data, or neither (built-in synthetic demo data)")
    return args


def build_config(args: argparse.Namespace) -> Config:
    if args.resume:
        return Config.from_dict(load_checkpoint(args.resume)["config"])
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


def ensure_demo_data() -> tuple[str, str, str]:
    """Build the synthetic demo LMDBs on first use; returns (train root, valid root, mask root)."""
    from tools.synth import build_demo_data

    build_demo_data(DEMO_ROOT)
    return str(DEMO_ROOT / "images" / "train"), str(DEMO_ROOT / "images" / "val"), str(DEMO_ROOT / "masks" / "train")


def make_train_loader(args: argparse.Namespace, config: Config, tokenizer: Tokenizer, need_masks: bool) -> DataLoader:
    selections = args.select_data.split("-")
    augmenter = None
    if config.augment:
        augmenter = JointAugment(config.aug_mode, np.random.default_rng(config.seed))
    groups = build_dataset_groups(args.train_data, selections, tokenizer, (config.img_h, config.img_w), "train",
                                  need_masks, args.mask_root, augmenter)
    for group, selection in zip(groups, selections):
        skipped = [s for d in group.datasets for s in d.scan_skipped]
        print(f"train data '{selection}': {len(group)} samples from {len(group.datasets)} LMDB(s)"
              + (f", {len(skipped)} unreadable labels skipped" if skipped else ""))
    dataset = ConcatDataset(groups)
    if len(dataset) < config.batch_size:
        raise ValueError(f"{args.train_data}: {len(dataset)} training samples, fewer than one batch of {config.batch_size}")
    common = dict(num_workers=config.workers, collate_fn=Collate(), pin_memory=torch.cuda.is_available(),
                  persistent_workers=config.workers > 0)
    if args.batch_ratio:
        ratios = [float(r) for r in args.batch_ratio.split("-")]
        sampler = RatioBatchSampler([len(g) for g in groups], ratios, config.batch_size, config.seed)
        return DataLoader(dataset, batch_sampler=sampler, **common)
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=RandomSampler(dataset, generator=generator),
                      drop_last=True, **common)


def make_eval_loaders(root: str, config: Config, tokenizer: Tokenizer) -> dict[str, DataLoader]:
    """One test-mode loader per leaf LMDB under ``root``, keyed by its path relative to ``root``."""
    return {str(leaf.relative_to(root)) if leaf != Path(root) else leaf.name:
            make_eval_loader(leaf, tokenizer, (config.img_h, config.img_w), config.eval_batch_size,
                             min(config.workers, 2)) for leaf in find_lmdb_leaves(root)}


def validate(model: torch.nn.Module, loaders: dict[str, DataLoader], tokenizer: Tokenizer, device: torch.device):
    """Per-dataset results and their sample-weighted total."""
    results = {name: evaluate(model, loader, tokenizer, device) for name, loader in loaders.items()}
    return results, weighted_total(results.values())


def training_loss(output: ModelOutput, targets: torch.Tensor, lengths: torch.Tensor, iteration: int,
                  settings: SigaLossSettings, num_steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and its named terms: a CE per recognition head and, for SIGA_R, the SIGA losses
    (SPEC §4.6). ``num_steps`` = S: the attention maps of a step-truncated batch are padded back to
    S columns for the glyph pseudo-labels (the padded steps are past every label and get no label)."""
    terms = {f"ce_{name}": recognition_loss(logits, targets, lengths) for name, logits in output.auxiliary_logits.items()}
    terms["ce_final"] = recognition_loss(output.logits, targets, lengths)
    total = torch.stack(list(terms.values())).sum()
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


def save_checkpoint(path: Path, model, optimizer, scheduler, iteration: int, config: Config, tokenizer: Tokenizer,
                    best_accuracy: float) -> None:
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "iteration": iteration, "config": config.to_dict(),
                 "charset": tokenizer.charset, "best_accuracy": best_accuracy}, path)


def train(args: argparse.Namespace) -> dict:
    """Run the training loop; returns a summary (iterations, best/last accuracy, checkpoint paths)."""
    if args.preset is None and not args.resume:
        args.preset = "paper" if args.train_data else "demo"
    if args.train_data is None:
        args.train_data, args.valid_data, args.mask_root = ensure_demo_data()
    config = build_config(args)
    seed_everything(config.seed)
    device = torch.device(args.device)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    if args.tps_from:
        load_tps(model, args.tps_from)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    scheduler = one_cycle_scheduler(optimizer, config)
    start_iteration, best_accuracy = 0, -1.0
    if args.resume:
        checkpoint = load_checkpoint(args.resume, device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_iteration = checkpoint["iteration"]
        best_accuracy = checkpoint.get("best_accuracy", -1.0)
    elif args.finetune:
        checkpoint = load_checkpoint(args.finetune, device)
        if checkpoint["charset"] != tokenizer.charset:
            raise ValueError(f"{args.finetune}: charset differs from this run's ({len(checkpoint['charset'])} vs "
                             f"{len(tokenizer.charset)} characters)")
        model.load_state_dict(checkpoint["model"])

    exp_name = args.exp_name or f"{config.model}-{args.preset}"
    run_dir = Path(args.saved_dir) / exp_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    train_loader = make_train_loader(args, config, tokenizer, getattr(model, "needs_masks", False))
    valid_loaders = make_eval_loaders(args.valid_data, config, tokenizer)
    print(f"model {config.model}: {sum(p.numel() for p in model.parameters()):,} parameters "
          f"({sum(p.numel() for p in trainable):,} trainable); run dir {run_dir}")

    settings = siga_loss_settings(config)
    batches = infinite_batches(train_loader)
    skipped_total = 0
    last_accuracy = None
    model.train()
    progress = tqdm(range(start_iteration, config.num_iter), initial=start_iteration, total=config.num_iter,
                    dynamic_ncols=True, disable=None)
    window_start, window_images = time.perf_counter(), 0
    run_start, run_images = time.perf_counter(), 0
    for iteration in progress:
        batch: Batch = next(batches)
        if batch.skipped:
            skipped_total += len(batch.skipped)
            for path, index, reason in batch.skipped:
                tqdm.write(f"skipped {path} index {index}: {reason}")
        if len(batch) == 0:
            scheduler.step()
            continue
        ids, lengths = tokenizer.encode(batch.labels)
        # Steps after the longest label carry no loss and cannot change earlier steps: skip them.
        steps = int(lengths.max())
        ids, lengths = ids[:, : steps + 1].to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        images = batch.images.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True) if batch.masks is not None else None
        output = model(images, ids[:, :-1], masks)
        loss, terms = training_loss(output, ids[:, 1:], lengths, iteration, settings, config.num_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        window_images += len(batch)
        run_images += len(batch)
        step = iteration + 1
        if step % 10 == 0 or step == config.num_iter:
            elapsed = time.perf_counter() - window_start
            lr = scheduler.get_last_lr()[0]
            loss_value = loss.item()
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{window_images / elapsed:.0f}")
            writer.add_scalar("train/loss", loss_value, step)
            if len(terms) > 1:
                for name, value in terms.items():
                    writer.add_scalar(f"train/{name}", value.item(), step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/images_per_second", window_images / elapsed, step)
            window_start, window_images = time.perf_counter(), 0
        if step % config.save_interval == 0:
            save_checkpoint(run_dir / f"iter_{step}.pth", model, optimizer, scheduler, step, config, tokenizer,
                            best_accuracy)
        if step % config.valid_interval == 0 or step == config.num_iter:
            results, total = validate(model, valid_loaders, tokenizer, device)
            last_accuracy = total.accuracy
            for name, result in results.items():
                writer.add_scalar(f"valid/{name}/accuracy", result.accuracy, step)
            writer.add_scalar("valid/total_accuracy", total.accuracy, step)
            writer.add_scalar("valid/total_ned", total.ned, step)
            elapsed = time.perf_counter() - run_start
            line = (f"[{step}/{config.num_iter}] loss {loss.item():.4f} valid accuracy {total.accuracy:.2f}% "
                    f"NED {total.ned:.4f} (n={total.num_samples}) | {elapsed:.0f} s, {run_images / elapsed:.0f} img/s")
            if total.accuracy > best_accuracy:
                best_accuracy = total.accuracy
                save_checkpoint(run_dir / "best_accuracy.pth", model, optimizer, scheduler, step, config, tokenizer,
                                best_accuracy)
                line += " (best)"
            save_checkpoint(run_dir / "last.pth", model, optimizer, scheduler, step, config, tokenizer, best_accuracy)
            tqdm.write(line)
            with open(run_dir / "log.txt", "a") as log:
                log.write(line + "\n")
    progress.close()
    writer.close()
    summary = {"iterations": config.num_iter, "best_accuracy": best_accuracy, "last_accuracy": last_accuracy,
               "skipped_samples": skipped_total, "best_checkpoint": str(run_dir / "best_accuracy.pth"),
               "last_checkpoint": str(run_dir / "last.pth")}
    print(f"done: validation accuracy {last_accuracy if last_accuracy is not None else float('nan'):.2f}% "
          f"(best {best_accuracy:.2f}%), {skipped_total} corrupt samples skipped; "
          f"checkpoint {summary['best_checkpoint']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
