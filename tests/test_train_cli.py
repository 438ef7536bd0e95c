"""End-to-end runs of train.py: a few steps, resume, finetune, corrupt data and bad paths."""
from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from checkpoint import load_checkpoint
from config import make_config
from flops import forward_flops
from model import build_model
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def scalar_tags(log_dir: Path) -> set[str]:
    """Scalar tags of the TensorBoard event files under ``log_dir`` (TFRecord framing of Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for path in log_dir.rglob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = struct.unpack("<Q", data[offset: offset + 8])[0]
            event = Event.FromString(data[offset + 12: offset + 12 + length])
            tags.update(value.tag for value in event.summary.value)
            offset += 12 + length + 4
    return tags


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--device", "cpu", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def run_test_and_demo(checkpoint: Path, model: str, data: Path, tmp_path: Path) -> None:
    """test.py on the validation LMDB and demo.py on one image both run on ``checkpoint`` of ``model``."""
    tested = subprocess.run([sys.executable, str(ROOT / "test.py"), "--checkpoint", str(checkpoint), "--eval_data",
                             str(data / "val"), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert tested.returncode == 0 and model in tested.stdout, tested.stderr[-3000:]
    image = tmp_path / "word.png"
    Image.new("RGB", (100, 32), (230, 230, 230)).save(image)
    demo = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(checkpoint), "--images",
                           str(image), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0 and "word.png" in demo.stdout, demo.stderr[-3000:]


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


def test_the_run_tells_its_speed_time_to_the_end_and_compute(data, tmp_path, monkeypatch, capsys):
    import engine

    monkeypatch.setattr(engine, "ETA_AFTER_STEPS", 3)
    options = engine.RunOptions(str(data / "train"), str(data / "val"), preset="tiny", saved_dir=str(tmp_path),
                                exp_name="eta", overrides={"num_iter": 5, "valid_interval": 5})
    summary = engine.train(options)
    log = (tmp_path / "eta" / "log.txt").read_text()
    assert "speed over the first 3 steps: " in log and " img/s, " in log and " s/step; estimated " in log
    assert " min for the remaining 2 steps (validation not included)" in log
    # the training compute: the first step counted forward and backward, about 3× the forward alone
    per_image = float(re.search(r"; ([0-9.]+) GFLOP per image forward and backward, ([0-9.]+) TFLOP for the 5 "
                                r"steps", log).group(1)) * 1e9
    config = make_config("tiny")
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer).eval()
    ids, _ = tokenizer.encode(["abcde"] * 2)
    forward = forward_flops(model, lambda: model(torch.randn(2, 3, config.img_h, config.img_w), ids[:, :-1])) / 2
    assert 2.0 < per_image / forward < 4.0
    images = summary["training_tflop"] * 1e12 / per_image
    assert images == pytest.approx(5 * config.batch_size, rel=1e-3)
    assert f"training compute {summary['training_tflop']:.4g} TFLOP" in capsys.readouterr().out


def test_bad_paths_are_clear_errors(tmp_path):
    missing = run_train("--train_data", str(tmp_path / "nope"), "--valid_data", str(tmp_path), "--num_iter", "1",
                        cwd=tmp_path)
    assert missing.returncode != 0 and "nope" in missing.stderr and "does not exist" in missing.stderr
    half = run_train("--train_data", str(tmp_path), cwd=tmp_path)
    assert half.returncode != 0 and "--valid_data" in half.stderr


def test_siga_r_train_test_demo_and_tps_from(data, tmp_path):
    """SIGA_R end to end: masks from the mask LMDB, every loss term logged, then test.py and demo.py
    on its checkpoint, then the two-stage recipe (a TRBA's TPS, frozen) with an early loss switch."""
    trba = run_train(*common_args(data, tmp_path), "--num_iter", "2", "--valid_interval", "2", "--exp_name", "trba",
                     cwd=tmp_path)
    assert trba.returncode == 0, trba.stderr[-3000:]
    siga = run_train(*common_args(data, tmp_path), "--model", "SIGA_R", "--mask_root", str(data / "masks"),
                     "--num_iter", "4", "--valid_interval", "4", "--exp_name", "siga", "--siga_switch_iter", "2",
                     "--tps_from", str(tmp_path / "trba" / "last.pth"), "--freeze_tps_bn", cwd=tmp_path)
    assert siga.returncode == 0, siga.stderr[-3000:]
    assert "[4/4]" in siga.stdout and "K-means" not in siga.stderr  # the stored masks were found
    checkpoint = load_checkpoint(tmp_path / "siga" / "last.pth")
    assert checkpoint["config"]["model"] == "SIGA_R" and checkpoint["config"]["freeze_tps"]
    assert checkpoint["config"]["siga"]["switch_iter"] == 2
    trba_tps = load_checkpoint(tmp_path / "trba" / "last.pth")["model"]
    tps_keys = [k for k in trba_tps if k.startswith("transformation.localization.") and "num_batches" not in k]
    assert len(tps_keys) == 24 and all(torch.equal(trba_tps[k], checkpoint["model"][k]) for k in tps_keys)

    tags = scalar_tags(tmp_path / "siga" / "tensorboard")
    for name in ("ce_one_d", "ce_trba", "ce_position_low", "ce_position_mid", "ce_fusion_low", "ce_fusion_mid",
                 "ce_final", "seg", "align", "align_ce", "align_orthogonality", "glyph_low", "glyph_low_ce",
                 "glyph_low_dice", "glyph_mid", "glyph_mid_ce", "glyph_mid_dice"):
        assert f"train/{name}" in tags, name

    tested = subprocess.run([sys.executable, str(ROOT / "test.py"), "--checkpoint", str(tmp_path / "siga" / "last.pth"),
                             "--eval_data", str(data / "val"), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "SIGA_R" in tested.stdout and "12" in tested.stdout
    image = tmp_path / "word.png"
    Image.new("RGB", (100, 32), (230, 230, 230)).save(image)
    demo = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(tmp_path / "siga" / "last.pth"),
                           "--images", str(image), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "word.png" in demo.stdout


def tps_tensors(state: dict, statistics: bool) -> dict:
    """The TPS localisation tensors of a state_dict: its parameters, or its BatchNorm running statistics."""
    prefix = "transformation.localization."
    return {k: v for k, v in state.items() if k.startswith(prefix) and ("running" in k) == statistics
            and "num_batches" not in k}


@pytest.mark.parametrize("freeze_statistics", [False, True])
def test_tps_stage_trains_the_baseline_first_then_siga_r_with_its_tps_frozen(data, tmp_path, freeze_statistics):
    """One command, the paper's two stages: TRBA for --tps_stage steps into <run>/tps_stage, then SIGA_R with
    that TPS frozen; its BatchNorm statistics update (official) unless --freeze_tps_bn; the same command
    again reuses the finished stage."""
    args = [*common_args(data, tmp_path), "--model", "SIGA_R", "--mask_root", str(data / "masks"), "--tps_stage",
            "3", "--num_iter", "4", "--valid_interval", "4", "--exp_name", "two", "--seg_resolution", "half",
            *(["--freeze_tps_bn"] if freeze_statistics else [])]
    first = run_train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "TPS stage: TRBA for 3 iterations" in first.stdout and "[3/3]" in first.stdout and "[4/4]" in first.stdout
    stage = load_checkpoint(tmp_path / "two" / "tps_stage" / "last.pth")
    main = load_checkpoint(tmp_path / "two" / "last.pth")
    assert stage["config"]["model"] == "TRBA" and stage["iteration"] == 3 and not stage["config"]["freeze_tps"]
    assert main["config"]["model"] == "SIGA_R" and main["iteration"] == 4 and main["config"]["freeze_tps"]
    assert main["config"]["freeze_tps_bn"] == freeze_statistics and main["config"]["seg_resolution"] == "half"
    weights, statistics = tps_tensors(stage["model"], False), tps_tensors(stage["model"], True)
    assert len(weights) == 16 and len(statistics) == 8
    assert all(torch.equal(v, main["model"][k]) for k, v in weights.items())
    same_statistics = all(torch.equal(v, main["model"][k]) for k, v in statistics.items())
    assert same_statistics == freeze_statistics  # official: the frozen TPS's BatchNorms keep updating
    assert main["model"]["glyph.seg_merge.0.weight"].shape[1] == main["config"]["glyph_channels"]  # no F0 merge

    resumed = run_train(*args, "--resume", "auto", cwd=tmp_path)  # the main run's checkpoint carries the TPS
    assert resumed.returncode == 0 and "TPS stage" not in resumed.stdout, resumed.stderr[-3000:]
    (tmp_path / "two" / "last.pth").unlink()
    again = run_train(*args, cwd=tmp_path)  # a finished stage is reused, not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert "TPS stage: TRBA for 3 iterations" in again.stdout and "(finished, reused)" in again.stdout
    assert "[3/3]" not in again.stdout and "[4/4]" in again.stdout
    reused = load_checkpoint(tmp_path / "two" / "tps_stage" / "last.pth")["model"]
    assert all(torch.equal(reused[k], v) for k, v in stage["model"].items())


def test_a_stage_handover_continues_the_stages_schedule_with_its_every_tensor(data, tmp_path):
    """--stage_handover: TRBA trains the first 3 of the run's 6 steps, SIGA_R continues at step 3 with the
    schedule where the stage left it, the stage's tensors and its TPS frozen; resuming runs no stage again.
    SIGA_R's own options (here --glyph_context) stay out of the stage's baseline."""
    args = [*common_args(data, tmp_path), "--model", "SIGA_R", "--mask_root", str(data / "masks"), "--tps_stage",
            "3", "--stage_handover", "--num_iter", "6", "--valid_interval", "3", "--exp_name", "handover",
            "--glyph_context", "columns"]
    first = run_train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    stage = load_checkpoint(tmp_path / "handover" / "tps_stage" / "last.pth")
    main = load_checkpoint(tmp_path / "handover" / "last.pth")
    assert stage["config"]["model"] == "TRBA" and stage["iteration"] == 3 and stage["config"]["num_iter"] == 6
    assert main["config"]["model"] == "SIGA_R" and main["iteration"] == 6 and main["config"]["freeze_tps"]
    assert main["config"]["glyph_context"] == "columns" and stage["config"]["glyph_context"] == "none"
    assert "stage handover: " in first.stdout and "from iteration 3 on" in first.stdout
    assert "[3/6]" in first.stdout and "[6/6]" in first.stdout
    assert stage["scheduler"]["last_epoch"] == 3 and main["scheduler"]["last_epoch"] == 6
    weights = tps_tensors(stage["model"], False)
    assert weights and all(torch.equal(v, main["model"][k]) for k, v in weights.items())
    resumed = run_train(*args, "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0 and "TPS stage" not in resumed.stdout, resumed.stderr[-3000:]


def test_tps_stage_needs_a_model_with_a_baseline_and_no_other_tps(data, tmp_path):
    vitba = run_train(*common_args(data, tmp_path), "--model", "SIGA_T", "--tps_stage", "2", cwd=tmp_path)
    assert vitba.returncode != 0 and "--tps_stage trains the TPS of ['SIGA_R', 'SIGA_S']" in vitba.stderr
    both = run_train(*common_args(data, tmp_path), "--model", "SIGA_R", "--tps_stage", "2", "--tps_from", "x.pth",
                     cwd=tmp_path)
    assert both.returncode != 0 and "--tps_stage trains the TPS itself" in both.stderr


def test_siga_s_two_stage_train_resume_test_demo(data, tmp_path):
    """SIGA_S end to end at the tiny SVTR preset: TSBA first, then SIGA_S with TSBA's TPS frozen (the recipe's
    two stages), its AdamW/warm-up-cosine schedule, resumption from a snapshot, then test.py and demo.py."""
    tsba = run_train(*common_args(data, tmp_path), "--model", "TSBA", "--num_iter", "2", "--valid_interval", "2",
                     "--exp_name", "tsba", cwd=tmp_path)
    assert tsba.returncode == 0, tsba.stderr[-3000:]
    siga = run_train(*common_args(data, tmp_path), "--model", "SIGA_S", "--mask_root", str(data / "masks"),
                     "--num_iter", "4", "--valid_interval", "4", "--save_interval", "2", "--exp_name", "siga_s",
                     "--tps_from", str(tmp_path / "tsba" / "last.pth"), cwd=tmp_path)
    assert siga.returncode == 0, siga.stderr[-3000:]
    last = load_checkpoint(tmp_path / "siga_s" / "last.pth")
    config = last["config"]
    assert (config["model"], config["img_h"], config["img_w"], config["optimizer"]) == ("SIGA_S", 48, 160, "adamw")
    assert config["siga"]["sharpen_slope"] == 85.0 and not config["siga"]["warped_mask_target"]
    tsba_tps = load_checkpoint(tmp_path / "tsba" / "last.pth")["model"]
    parameters = [k for k in tsba_tps if k.startswith("transformation.localization.") and "running" not in k
                  and "num_batches" not in k]  # frozen weights; the BN statistics still follow the batches (§7 #7)
    assert len(parameters) == 16 and all(torch.equal(tsba_tps[k], last["model"][k]) for k in parameters)

    resumed = run_train("--resume", str(tmp_path / "siga_s" / "iter_2.pth"), *common_args(data, tmp_path),
                        "--exp_name", "siga_s_resumed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_checkpoint(tmp_path / "siga_s_resumed" / "last.pth")
    assert after["iteration"] == 4 and after["scheduler"]["last_epoch"] == last["scheduler"]["last_epoch"] == 4

    run_test_and_demo(tmp_path / "siga_s" / "last.pth", "SIGA_S", data, tmp_path)


def test_siga_t_train_resume_test_demo(data, tmp_path):
    """SIGA_T end to end at the tiny ViT preset with its own recipe (Adadelta + cosine, MGP token layout, [0, 1]
    images resized before masking and RandAugment), resumption from a snapshot, test.py and demo.py; VITBA,
    its baseline, trains too."""
    vitba = run_train(*common_args(data, tmp_path), "--model", "VITBA", "--num_iter", "2", "--valid_interval", "2",
                      "--exp_name", "vitba", cwd=tmp_path)
    assert vitba.returncode == 0, vitba.stderr[-3000:]
    siga = run_train(*common_args(data, tmp_path), "--model", "SIGA_T", "--num_iter", "4", "--valid_interval", "4",
                     "--save_interval", "2", "--exp_name", "siga_t", cwd=tmp_path)
    assert siga.returncode == 0, siga.stderr[-3000:]
    last = load_checkpoint(tmp_path / "siga_t" / "last.pth")
    config = last["config"]
    assert (config["model"], config["img_h"], config["img_w"], config["optimizer"]) == ("SIGA_T", 32, 128, "adadelta")
    assert (config["token_layout"], config["normalize_images"], config["data_pipeline"]) == ("mgp", False, "resized")
    assert config["siga"]["align_weight_early"] == config["siga"]["align_weight_late"] == 0.15
    assert last["charset"] == "0123456789abcdefghijklmnopqrstuvwxyz"

    resumed = run_train("--resume", str(tmp_path / "siga_t" / "iter_2.pth"), *common_args(data, tmp_path),
                        "--exp_name", "siga_t_resumed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = load_checkpoint(tmp_path / "siga_t_resumed" / "last.pth")
    assert after["iteration"] == 4 and after["scheduler"]["last_epoch"] == last["scheduler"]["last_epoch"] == 4
    assert all(torch.equal(after["model"][k], v) for k, v in last["model"].items())  # exact resume

    checkpoint = tmp_path / "siga_t" / "last.pth"
    run_test_and_demo(checkpoint, "SIGA_T", data, tmp_path)
    tps = run_train(*common_args(data, tmp_path), "--model", "SIGA_T", "--tps_from", str(checkpoint), cwd=tmp_path)
    assert tps.returncode != 0 and "has no TPS rectifier" in tps.stderr


def test_siga_r_on_the_fly_synth_with_identity_tps_and_warmup(data, tmp_path):
    """``--train_data synth:N`` renders crops (with their masks) on the fly; ``--freeze_tps`` without
    ``--tps_from`` keeps the identity warp; ``--siga_warmup`` is stored in the run's config."""
    run = run_train("--train_data", "synth:64", "--valid_data", str(data / "val"), "--saved_dir", str(tmp_path),
                    "--model", "SIGA_R", "--num_iter", "2", "--valid_interval", "2", "--exp_name", "fly",
                    "--freeze_tps", "--siga_warmup", "10", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train data 'synth:64': 64 samples rendered on the fly" in run.stdout
    assert "K-means" not in run.stderr  # the engine's own glyph masks were used
    checkpoint = load_checkpoint(tmp_path / "fly" / "last.pth")
    assert checkpoint["config"]["freeze_tps"] and checkpoint["config"]["siga"]["warmup_iters"] == 10
    fc2_bias = checkpoint["model"]["transformation.localization.localization_fc2.bias"].view(-1, 2)
    assert torch.allclose(fc2_bias[0], torch.tensor([-1.0, -1.0])) and torch.allclose(fc2_bias[-1], torch.ones(2))
    bad = run_train("--train_data", "synth:lots", "--valid_data", str(data / "val"), "--saved_dir", str(tmp_path),
                    cwd=tmp_path)
    assert bad.returncode != 0 and "expected synth:N" in bad.stderr


def test_curriculum_reads_plain_data_first_then_resumes_into_the_main_phase(data, tmp_path):
    """``--curriculum_data`` is read for ``--curriculum_iters`` iterations, then ``--train_data``; a run resumed
    after the curriculum starts directly in the main phase; half a curriculum is an error."""
    curriculum = ["--curriculum_data", str(data / "train"), "--curriculum_mask_root", str(data / "masks"),
                  "--curriculum_iters", "2"]
    run = run_train("--train_data", "synth:64", "--valid_data", str(data / "val"), "--saved_dir", str(tmp_path),
                    "--model", "SIGA_R", "--num_iter", "4", "--valid_interval", "2", "--save_interval", "2",
                    "--exp_name", "cur", *curriculum, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"curriculum: iterations 0–1 read {data / 'train'}, then synth:64" in run.stdout
    assert "K-means" not in run.stderr  # both phases used their stored or rendered glyph masks
    assert load_checkpoint(tmp_path / "cur" / "last.pth")["config"]["curriculum_iters"] == 2
    resumed = run_train("--resume", str(tmp_path / "cur" / "iter_2.pth"), "--train_data", "synth:64", "--valid_data",
                        str(data / "val"), "--saved_dir", str(tmp_path), "--exp_name", "cur2", *curriculum,
                        cwd=tmp_path)
    assert resumed.returncode == 0 and "[4/4]" in resumed.stdout, resumed.stderr[-3000:]
    assert "curriculum: iterations" not in resumed.stdout and str(data / "train") not in resumed.stdout
    half = run_train(*common_args(data, tmp_path), "--curriculum_iters", "2", "--num_iter", "2", cwd=tmp_path)
    assert half.returncode != 0 and "a curriculum needs both its data" in half.stderr


def test_a_presets_curriculum_is_off_with_your_own_data_and_pct_start_is_a_flag(data, tmp_path):
    run = run_train(*common_args(data, tmp_path), "--preset", "cpu", "--batch_size", "8", "--num_iter", "2",
                    "--valid_interval", "2", "--pct_start", "0.7", "--exp_name", "own", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    config = load_checkpoint(tmp_path / "own" / "last.pth")["config"]
    assert config["curriculum_iters"] == 0 and config["pct_start"] == 0.7 and config["hidden_size"] == 96
