"""Multi-process training (gloo on CPU), exact resumption after SIGTERM, data faults and bf16 autocast."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from checkpoint import atomic_save, load_checkpoint
from config import make_config
from distributed import DistEnv
from engine import RunOptions, train
from loaders import make_train_loader
from model import build_model
from modules.sync_batchnorm import CpuSyncBatchNorm, convert_sync_batchnorm
from tokenizer import Tokenizer
from utils import bf16_emulation_reason, seed_everything

ROOT = Path(__file__).resolve().parents[1]
# One thread per process: the 2-process and 1-process runs then do their arithmetic the same way.
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def data_args(data: Path, saved: Path) -> list[str]:
    return ["--preset", "tiny", "--device", "cpu", "--train_data", str(data / "train"), "--valid_data",
            str(data / "val"), "--saved_dir", str(saved)]


def run(command: list[str], cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=dict(ENV, **environment))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def torchrun_command(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            str(ROOT / "train.py"), *args]


def result_lines(stdout: str) -> list[str]:
    """The validation lines without their timing part."""
    return [line.split(" | ")[0] for line in stdout.splitlines() if line.startswith("[")]


def max_difference(first: dict, second: dict) -> tuple[float, str]:
    return max(((first[k].double() - second[k].double()).abs().max().item(), k) for k in first)


# --------------------------------------------------------------------------------------------------
# synchronised BatchNorm on CPU
def _sync_batchnorm_worker(rank: int, init_file: str, x: torch.Tensor, upstream: torch.Tensor, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    part = x.chunk(2)[rank].clone().requires_grad_()
    out = layer(part)
    (out * upstream.chunk(2)[rank]).sum().backward()
    dist.all_reduce(layer.weight.grad)
    dist.all_reduce(layer.bias.grad)
    # numpy arrays travel by value; tensors would go by file descriptor, which the parent cannot fetch
    # once this process has exited
    tensors = (out.detach(), part.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
    queue.put((rank, *(t.numpy() for t in tensors), type(layer).__name__))
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_over_two_processes_equals_batchnorm_over_the_whole_batch():
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64).float() * 3 + 1
    upstream = torch.randn(6, 3, 4, 5)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        reference.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    full = x.clone().requires_grad_()
    expected = reference(full)
    (expected * upstream).sum().backward()

    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        processes = [context.Process(target=_sync_batchnorm_worker, args=(rank, str(Path(tmp) / "init"), x, upstream,
                                                                           queue)) for rank in range(2)]
        for process in processes:
            process.start()
        results = dict((item[0], item[1:]) for item in (queue.get(timeout=120) for _ in processes))
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
    results = {rank: [torch.from_numpy(a) for a in items[:-1]] + [items[-1]] for rank, items in results.items()}
    out = torch.cat([results[0][0], results[1][0]])
    grad = torch.cat([results[0][1], results[1][1]])
    assert results[0][6] == "CpuSyncBatchNorm"
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, full.grad, atol=1e-5, rtol=1e-5)
    for rank in range(2):
        torch.testing.assert_close(results[rank][2], reference.weight.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(results[rank][3], reference.bias.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(results[rank][4], reference.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(results[rank][5], reference.running_var, atol=1e-5, rtol=1e-6)


def test_convert_keeps_parameters_and_frozen_flags():
    model = build_model(make_config("tiny", freeze_tps=True))
    tps_weight = model.transformation.localization.conv[1].weight
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted.transformation.localization.conv[1], CpuSyncBatchNorm)
    assert converted.transformation.localization.conv[1].weight is tps_weight and not tps_weight.requires_grad
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


# --------------------------------------------------------------------------------------------------
# the same training batches for any world size
def test_ranks_share_out_exactly_the_single_process_batches_with_identical_augmentation(data):
    config = make_config("tiny", batch_size=16)
    assert config.augment
    tokenizer = Tokenizer.from_config(config)

    def loader(config, env):
        return make_train_loader(str(data / "train"), "/", None, None, config, tokenizer, True, env, 2,
                                 log=lambda message: None)[0]

    single = loader(config, DistEnv())
    ranks = [loader(config.replace(batch_size=8), DistEnv(rank=rank, world_size=2)) for rank in range(2)]
    # from global batch 2 on (resumption), across the epoch boundary at 3 batches of 16
    for whole, first, second in itertools.islice(zip(single, *ranks), 3):
        shared = torch.cat([first.images, second.images])
        shared_masks = torch.cat([first.masks, second.masks])
        assert sorted(whole.labels) == sorted(first.labels + second.labels)
        for image, mask in zip(whole.images, whole.masks):
            match = [i for i in range(16) if torch.equal(shared[i], image)]
            assert len(match) == 1 and torch.equal(shared_masks[match[0]], mask)


# --------------------------------------------------------------------------------------------------
# 2-process DDP against 1 process with the same global batch
def test_two_process_ddp_matches_single_process_with_the_same_global_batch(data, tmp_path):
    """TRBA, 3 steps. The TPS is frozen: its grid_sample gradient jumps where a sampling point crosses a
    pixel boundary, so rounding-level differences grow by orders of magnitude there; two single-process
    runs that differ only in the order of the samples within a batch diverge the same way."""
    tps = tmp_path / "tps.pth"
    config = make_config("tiny")
    atomic_save({"model": build_model(config).state_dict(), "config": config.to_dict()}, tps)
    # full precision whatever the default: bf16 autocast (--amp auto on CPUs with bf16 units) rounds per batch split
    common = data_args(data, tmp_path) + ["--num_iter", "3", "--valid_interval", "3", "--no_aug", "--tps_from",
                                          str(tps), "--deterministic", "--amp", "off"]
    single = run(train_command(*common, "--batch_size", "16", "--exp_name", "single"), tmp_path)
    ddp = run(torchrun_command(*common, "--batch_size", "8", "--exp_name", "ddp"), tmp_path)
    assert "2 process(es) × batch 8" in ddp.stdout
    assert ddp.stdout.count("[3/3]") == 1  # logged by rank 0 only
    # global-token loss and sharded validation: the same numbers as one process
    assert result_lines(ddp.stdout) == result_lines(single.stdout) != []
    first = load_checkpoint(tmp_path / "single" / "last.pth")
    second = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert len(second["rng"]) == 2 and second["sampler"] == {"batches": 3, "world_size": 2, "batch_size": 8}
    assert not any(key.startswith("module.") for key in second["model"])
    keys = [k for k in first["model"] if first["model"][k].is_floating_point()]
    difference = torch.cat([(first["model"][k] - second["model"][k]).abs().flatten() for k in keys])
    # Rounding differences can flip the sign of Adam's first steps where a gradient is pure rounding
    # noise, so a few weights may differ by up to a step; the bulk must agree to rounding. (Unsynchronised
    # BatchNorm, --no-sync_bn, gives a median of 9e-5 and 80 % of the weights beyond 1e-5 here.)
    assert difference.median() < 1e-6 and difference.quantile(0.99) < 1e-5, difference.max()
    assert difference.max() < 2e-3


def test_legacy_launcher_trains_siga_r_on_two_processes(data, tmp_path):
    """``python -m torch.distributed.launch`` passes --local-rank; SIGA_R under DDP uses every parameter."""
    command = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", str(ROOT / "train.py"),
               *data_args(data, tmp_path), "--model", "SIGA_R", "--mask_root", str(data / "masks"), "--num_iter", "2",
               "--valid_interval", "2", "--exp_name", "siga"]
    result = run(command, tmp_path)
    assert "2 process(es)" in result.stdout and "[2/2]" in result.stdout
    assert load_checkpoint(tmp_path / "siga" / "last.pth")["iteration"] == 2


# --------------------------------------------------------------------------------------------------
# exact resumption
def test_sigterm_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    """SIGA_R (dropout, K-means masks computed on the fly, augmentation): stopped by SIGTERM between two
    validations, resumed with --resume auto, it ends with bit-identical weights. The uninterrupted run uses
    a DataLoader worker, the interrupted one none: the data do not depend on the worker count."""
    common = data_args(data, tmp_path) + ["--model", "SIGA_R", "--num_iter", "40", "--valid_interval", "10",
                                          "--save_interval", "10", "--keep_last", "2", "--deterministic"]
    run(train_command(*common, "--exp_name", "whole", "--workers", "1"), tmp_path)
    whole_dir = tmp_path / "whole"
    assert sorted(p.name for p in whole_dir.glob("iter_*.pth")) == ["iter_30.pth", "iter_40.pth"]  # --keep_last 2

    process = subprocess.Popen(train_command(*common, "--exp_name", "cut", "--workers", "0"), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in process.stdout:
        if line.startswith("[10/40]"):
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM at iteration" in stdout and "Traceback" not in stderr
    cut = load_checkpoint(tmp_path / "cut" / "last.pth")
    assert 10 <= cut["iteration"] < 40 and len(cut["rng"]) == 1

    resumed = run(train_command(*common, "--exp_name", "cut", "--workers", "0", "--resume", "auto"), tmp_path)
    assert f"continuing from {tmp_path / 'cut' / 'last.pth'}" in resumed.stdout and "[40/40]" in resumed.stdout
    final = load_checkpoint(tmp_path / "cut" / "last.pth")
    expected = load_checkpoint(whole_dir / "last.pth")
    assert final["iteration"] == 40
    assert all(torch.equal(expected["model"][k], final["model"][k]) for k in expected["model"])
    assert result_lines(resumed.stdout)[-1] == result_lines((whole_dir / "log.txt").read_text())[-1]


# --------------------------------------------------------------------------------------------------
# data faults
def test_corrupt_images_labels_and_masks_are_skipped_and_counted_per_lmdb(data, tmp_path):
    import lmdb

    from lmdb_io import LmdbWriter

    source = lmdb.open(str(data / "train" / "synth"), readonly=True, lock=False)
    masks = lmdb.open(str(data / "masks" / "synth"), readonly=True, lock=False)
    images_db, masks_db = tmp_path / "train" / "bad", tmp_path / "masks" / "bad"
    with source.begin() as txn, masks.begin() as mask_txn, LmdbWriter(images_db) as writer, \
            LmdbWriter(masks_db) as mask_writer:
        for index in range(1, 33):
            writer.put("image-%09d" % index, b"broken" if index == 5 else txn.get(b"image-%09d" % index))
            writer.put("label-%09d" % index, b"\xff\xfe" if index == 7 else txn.get(b"label-%09d" % index))
            mask_writer.put("mask-%09d" % index, b"garbage" if index == 9 else mask_txn.get(b"mask-%09d" % index))
        writer.num_samples = mask_writer.num_samples = 32
    source.close()
    masks.close()
    result = run(train_command("--preset", "tiny", "--device", "cpu", "--train_data", str(tmp_path / "train"),
                               "--valid_data", str(data / "val"), "--mask_root", str(tmp_path / "masks"), "--model",
                               "SIGA_R", "--saved_dir", str(tmp_path), "--num_iter", "2", "--batch_size", "31",
                               "--exp_name", "c"), tmp_path)
    # 31 readable labels = one batch of 31 per epoch: 2 steps = 2 epochs, each drawing every sample
    report = result.stdout[result.stdout.index("corrupt samples skipped per LMDB:"):]
    image_line = next(line for line in report.splitlines() if line.strip().startswith(f"{images_db}:"))
    mask_line = next(line for line in report.splitlines() if line.strip().startswith(f"{masks_db}:"))
    assert "3 skipped (1 label is not UTF-8, 2 undecodable image (UnidentifiedImageError))" in image_line
    assert "2 skipped (2 undecodable mask (UnidentifiedImageError))" in mask_line
    assert "(n=12)" in result.stdout and "(best)" in result.stdout  # training went on to the end
    assert "label is not UTF-8" in (tmp_path / "c" / "log.txt").read_text()


def test_an_lmdb_failing_mid_run_stops_training_after_a_checkpoint_naming_the_path(data, tmp_path, monkeypatch):
    from dataset import LmdbDataset
    from lmdb_io import DataSourceError

    calls = {"count": 0}
    original = LmdbDataset.load

    def failing_load(self, item, rng):
        calls["count"] += 1
        if calls["count"] > 8 * 3:  # the fourth batch
            raise DataSourceError(f"{self.path}: LMDB cannot be read (Error: simulated)")
        return original(self, item, rng)

    monkeypatch.setattr(LmdbDataset, "load", failing_load)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    options = RunOptions(str(data / "train"), str(data / "val"), preset="tiny", saved_dir=str(tmp_path),
                         exp_name="failing", overrides={"num_iter": 10})
    with pytest.raises(SystemExit) as stopped:
        train(options)
    message = str(stopped.value)
    assert "training stopped at iteration 3" in message and str(data / "train" / "synth") in message
    assert load_checkpoint(tmp_path / "failing" / "last.pth")["iteration"] == 3


# --------------------------------------------------------------------------------------------------
# mixed precision
@pytest.mark.parametrize("model, isa_cap", [("TRBA", None), ("SIGA_R", None), ("SIGA_R", "AVX2")])
def test_bf16_autocast_on_cpu_trains_without_nans(data, tmp_path, model, isa_cap):
    """Natively where the CPU has bf16 units; oneDNN capped at AVX2 stands for a CPU without them (no bf16
    LSTM: the run must neither crash nor go silent about the emulation)."""
    environment = {"ONEDNN_MAX_CPU_ISA": isa_cap} if isa_cap else {}
    result = run(train_command(*data_args(data, tmp_path), "--model", model, "--mask_root", str(data / "masks"),
                               "--amp", "bf16", "--num_iter", "10", "--exp_name", "bf16"), tmp_path, **environment)
    assert "amp bf16" in result.stdout and "nan" not in result.stdout.lower()
    emulated = isa_cap is not None or bf16_emulation_reason(torch.device("cpu")) is not None
    assert ("warning: --amp bf16: this CPU has no bf16 units" in result.stdout) == emulated
    assert ") scored in bf16 | " in result.stdout  # the validation line names its precision
    checkpoint = load_checkpoint(tmp_path / "bf16" / "last.pth")
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    config = make_config("tiny", model=model)
    seed_everything(config.seed)  # the initial weights train.py starts from
    initial = build_model(config).state_dict()
    assert max_difference(initial, checkpoint["model"])[0] > 0  # it trained
    assert all(value.dtype == initial[key].dtype for key, value in checkpoint["model"].items())  # fp32 master weights
