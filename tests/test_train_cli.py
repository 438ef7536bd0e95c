"""End-to-end runs of train.py: a few steps, resume, finetune, corrupt data and bad paths."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from dataset import LmdbWriter
from tools.synth import write_synth_lmdb
from utils import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synth_lmdb(root / "train" / "synth", root / "masks" / "synth", 48, seed=5, workers=1, progress=False)
    write_synth_lmdb(root / "val" / "synth_val", root / "val_masks", 12, seed=6, workers=1, progress=False)
    return root


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--device", "cpu", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def common_args(data: Path, saved: Path) -> list[str]:
    return ["--train_data", str(data / "train"), "--valid_data", str(data / "val"), "--saved_dir", str(saved)]


def test_train_then_resume_then_finetune(data, tmp_path):
    first = run_train(*common_args(data, tmp_path), "--num_iter", "8", "--valid_interval", "4", "--save_interval", "4",
                      "--exp_name", "run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[4/8]" in first.stdout and "done: validation accuracy" in first.stdout
    run_dir = tmp_path / "run"
    last = load_checkpoint(run_dir / "last.pth")
    assert last["iteration"] == 8
    assert set(last) >= {"model", "optimizer", "scheduler", "iteration", "config", "charset"}
    assert (run_dir / "best_accuracy.pth").is_file() and (run_dir / "iter_4.pth").is_file()
    assert list((run_dir / "tensorboard").iterdir())

    resumed = run_train("--resume", str(run_dir / "iter_4.pth"), *common_args(data, tmp_path), "--exp_name", "resumed",
                        cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[4/8]" not in resumed.stdout and "[8/8]" in resumed.stdout  # continued, not restarted
    after = load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert after["iteration"] == 8
    assert after["scheduler"]["last_epoch"] == last["scheduler"]["last_epoch"] == 8
    assert after["optimizer"]["param_groups"][0]["lr"] == pytest.approx(last["optimizer"]["param_groups"][0]["lr"])

    fine = run_train("--finetune", str(run_dir / "last.pth"), *common_args(data, tmp_path), "--num_iter", "3",
                     "--valid_interval", "3", "--exp_name", "fine", cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr[-3000:]
    tuned = load_checkpoint(tmp_path / "fine" / "last.pth")
    assert tuned["iteration"] == 3 and tuned["scheduler"]["last_epoch"] == 3


def test_corrupt_training_sample_is_skipped_and_reported(data, tmp_path):
    source = lmdb.open(str(data / "train" / "synth"), readonly=True, lock=False)
    with source.begin() as txn, LmdbWriter(tmp_path / "corrupt" / "db") as writer:
        for index in range(1, 17):
            image = b"broken" if index == 5 else txn.get(b"image-%09d" % index)
            writer.add_sample(image, txn.get(b"label-%09d" % index).decode())
    source.close()
    result = run_train("--train_data", str(tmp_path / "corrupt"), "--valid_data", str(data / "val"),
                       "--saved_dir", str(tmp_path), "--num_iter", "2", "--batch_size", "16", "--exp_name", "c",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipped {tmp_path / 'corrupt' / 'db'} index 5: undecodable image" in result.stdout + result.stderr
    assert "2 corrupt samples skipped" in result.stdout  # seen once per epoch, two epochs of one batch


def test_bad_paths_are_clear_errors(tmp_path):
    missing = run_train("--train_data", str(tmp_path / "nope"), "--valid_data", str(tmp_path), "--num_iter", "1",
                        cwd=tmp_path)
    assert missing.returncode != 0 and "nope" in missing.stderr and "does not exist" in missing.stderr
    half = run_train("--train_data", str(tmp_path), cwd=tmp_path)
    assert half.returncode != 0 and "--valid_data" in half.stderr
