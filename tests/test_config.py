"""Config, presets and their round trip through a checkpoint's dict."""
from __future__ import annotations

import pytest

from config import Config, make_config
from engine import RunOptions, tps_stage_options
from modules.losses import SigaLossSettings


def test_presets_and_config_round_trip():
    tiny = make_config("tiny", num_iter=7)
    assert tiny.num_iter == 7 and tiny.num_steps == 26
    assert Config.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")


def test_paper_preset_is_the_config_defaults_and_loss_constants_live_once():
    assert make_config("paper") == Config()
    assert Config().siga == SigaLossSettings()
    demo = make_config("demo", model="SIGA_R", siga={"sharpen_slope": 85.0})
    assert demo.siga.switch_iter == 500 and demo.siga.sharpen_slope == 85.0 and demo.siga.sharpen_offset == 0.1


def test_demo_and_cpu_presets_share_the_network_and_start_with_a_plain_curriculum():
    demo, cpu = make_config("demo"), make_config("cpu")
    network = ("tps_channels", "backbone_channels", "backbone_blocks", "hidden_size", "glyph_channels")
    assert all(getattr(cpu, name) == getattr(demo, name) for name in network)
    assert cpu.curriculum_iters == 3000 < cpu.num_iter and demo.curriculum_iters == 2400 < demo.num_iter
    # the demo's learning rate peaks where its curriculum ends (one-cycle peak at pct_start of the steps)
    assert abs(demo.pct_start * demo.num_iter - demo.curriculum_iters) < 5


def test_checkpoints_with_flat_loss_constants_keep_them():
    """Configs written before the loss constants moved into ``siga`` (flat names) keep their values."""
    old = {key: value for key, value in make_config("tiny").to_dict().items() if key != "siga"}
    old.update(siga_switch_iter=123, sharpen_slope=50.0)
    config = Config.from_dict(old)
    assert config.siga.switch_iter == 123 and config.siga.sharpen_slope == 50.0
    assert config.siga.sharpen_offset == SigaLossSettings().sharpen_offset


def test_siga_r_cpu_presets_train_two_stages_at_half_segmentation_resolution():
    """In the CPU presets SIGA_R trains a TRBA stage first, at TRBA's widths, with the glyph column context; the
    paper preset is untouched."""
    demo, cpu, paper = (make_config(preset, model="SIGA_R") for preset in ("demo", "cpu", "paper"))
    assert demo.tps_stage_iters > 0 and cpu.tps_stage_iters > 0 and paper.tps_stage_iters == 0
    assert demo.seg_resolution == cpu.seg_resolution == "half" and paper.seg_resolution == "full"
    assert demo.stage_handover and demo.tps_stage_iters == demo.curriculum_iters  # SIGA_R takes the varied crops
    assert not cpu.stage_handover and not paper.stage_handover
    assert demo.glyph_context == cpu.glyph_context == "columns" and paper.glyph_context == "none"
    assert demo.backbone_channels == make_config("demo").backbone_channels
    assert make_config("demo", model="TRBA") == make_config("demo")  # TRBA's demo is unchanged


def test_the_tps_stage_trains_the_baseline_at_the_main_runs_widths():
    options = RunOptions("train", "val", preset="cpu", overrides={"model": "SIGA_R", "seed": 5})
    stage = tps_stage_options(options)
    main = make_config("cpu", model="SIGA_R")
    config = make_config(stage.preset, **stage.overrides)
    assert config.model == "TRBA" and config.num_iter == main.tps_stage_iters and config.seed == 5
    assert (config.backbone_channels, config.hidden_size) == (main.backbone_channels, main.hidden_size)
    assert config.curriculum_iters == main.tps_stage_iters  # the whole stage reads the plain curriculum


def test_a_handover_stage_runs_the_first_steps_of_the_main_runs_own_schedule():
    """With --stage_handover the stage keeps the main run's schedule and curriculum and stops at its N steps."""
    options = RunOptions("train", "val", preset="demo",
                         overrides={"model": "SIGA_R", "tps_stage_iters": 2400, "stage_handover": True})
    stage = tps_stage_options(options)
    main = make_config("demo", **options.overrides)
    config = make_config(stage.preset, **stage.overrides)
    assert config.model == "TRBA" and not config.stage_handover and config.tps_stage_iters == 0
    assert (config.num_iter, config.pct_start, config.curriculum_iters) == (main.num_iter, main.pct_start,
                                                                            main.curriculum_iters)
    assert stage.stop_iter == 2400
    plain = tps_stage_options(RunOptions("train", "val", preset="cpu", overrides={"model": "SIGA_R"}))
    assert plain.stop_iter == make_config(plain.preset, **plain.overrides).num_iter  # its own, shorter schedule


@pytest.mark.parametrize("overrides", [{"tps_stage_iters": 3500}, {"tps_stage_iters": 0}])
def test_a_handover_needs_a_stage_that_ends_before_the_run(overrides):
    options = RunOptions("train", "val", preset="demo",
                         overrides={"model": "SIGA_R", "stage_handover": True, **overrides})
    with pytest.raises(SystemExit, match="handover"):
        tps_stage_options(options)
