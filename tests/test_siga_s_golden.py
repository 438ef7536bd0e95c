"""SIGA_S's architecture against the official model's outputs (../shared/data/golden_siga_s): the weight rule,
the official name map and parameter counts (SPEC_SIGA_S §3.11, §10), and the whole model in float64 and
float32 (eval greedy, eval-BN teacher-forced, train), intermediates included. The golden data run with
drop-path and dropout off, so the model is built with both at 0."""
from __future__ import annotations

import copy

import pytest
import torch

from checkpoint import convert_official_state_dict
from config import make_config
from golden import (CONSTANTS, assert_greedy_matches, assert_heads_match, assert_rule_matches_checksums, golden_eval,
                    golden_teacher_forced, load_golden, name_map_coverage, official_rule_state_dict, official_shapes,
                    relative_error, rule_and_checksums)
from model import build_siga_s
from tokenizer import CHARSET_36, Tokenizer

HEADS = {"P_1D": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid"}
#: golden README §6: float32 against *_f64 on logits, A, X, Q (tight) and on the maps (loose)
FLOAT32_TIGHT, FLOAT32_MAPS = 2e-4, 1e-3
count = lambda module: sum(p.numel() for p in module.parameters())


def paper_config(**overrides):
    return make_config("paper", model="SIGA_S", img_h=48, img_w=160, **overrides)


@pytest.fixture(scope="module")
def io_data():
    return load_golden("io.pt", "SIGA_S")


@pytest.fixture(scope="module")
def golden_model():
    """SIGA_S (36 chars, 48×160) with the rule weights loaded through the official-checkpoint map."""
    config = paper_config(drop_path_rate=0.0, dropout=0.0)
    model = build_siga_s(config, Tokenizer.from_config(config))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict("SIGA_S"), "SIGA_S"))
    return model.eval()


def test_weight_rule_matches_checksums():
    parameters, checksums = rule_and_checksums("SIGA_S")
    assert len(parameters) == 467
    assert_rule_matches_checksums(parameters, checksums)


def test_name_map_covers_the_official_state_dict_exactly(golden_model):
    ours, official, ignored = name_map_coverage(golden_model, "SIGA_S")
    assert len(official_shapes("SIGA_S")) == 518 and ours == official
    assert ignored == {"model_one.Transformation.GridGenerator.inv_delta_C", "model_one.Transformation.GridGenerator.P_hat",
                       "model_two.downsampler.weight", "model_two.downsampler.bias", *CONSTANTS}


def test_parameter_counts(golden_model):
    """SPEC_SIGA_S §3.11: 57,440,419 official parameters, of which we omit the unused downsampler (98,560)."""
    m = golden_model
    assert count(m) == 57_440_419 - 98_560
    assert count(m.transformation) == 1_693_544 and count(m.backbone) == 38_897_344
    assert count(m.glyph) == 4_025_464
    assert count(m.siga.alignment_sequence) == count(m.siga.sequence) == 2_630_144
    assert count(m.siga.position_decoder_low) == 807_717 and count(m.siga.fusion_decoder_mid) == 1_070_629
    assert count(m.siga.projection) == 98_688 and count(m.siga.final_decoder) == 1_599_909
    config = paper_config(charset="94", sensitive=True)
    assert count(build_siga_s(config, Tokenizer.from_config(config))) == 57_656_121 - 98_560


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32_TIGHT)])
def test_eval_greedy_matches_official(golden_model, io_data, dtype, tolerance):
    out = golden_eval(golden_model, io_data, dtype)
    expected = io_data["eval_f64"]
    assert_greedy_matches(out, expected, tolerance)
    texts, _ = Tokenizer(CHARSET_36).decode(out.logits, drop_last_without_eos=True)
    assert texts == expected["decoded"] == io_data["eval_f32"]["decoded"]


@pytest.mark.parametrize("dtype, tight, maps", [(torch.float64, 1e-8, 1e-8), (torch.float32, FLOAT32_TIGHT, FLOAT32_MAPS)])
def test_eval_intermediates(golden_model, io_data, dtype, tight, maps):
    """Locate a mismatch: fiducials, rectified image, backbone slices, X, H2 and the glyph sequences."""
    model = copy.deepcopy(golden_model).to(dtype).eval()
    images = io_data["inputs"]["images"].to(dtype)
    expected = io_data["eval_f64"]
    with torch.no_grad():
        fiducials = model.transformation.localization(images)
        rectified, _ = model.transformation(images)
        features = model.backbone(rectified)
        glyph = model.glyph(features.levels, segmentation=False)
        contextual = model.siga.sequence(features.sequence)
    f0, f1, f2 = features.levels
    assert relative_error(fiducials, expected["C_prime"]) <= tight
    assert relative_error(features.sequence, expected["X"]) <= tight
    assert relative_error(contextual, expected["H2"]) <= tight
    assert relative_error(glyph.sequence_low, expected["Q_low"]) <= tight
    assert relative_error(glyph.sequence_mid, expected["Q_mid"]) <= tight
    assert relative_error(rectified[0], expected["rectified_image_s0"]) <= maps
    assert relative_error(f0[0, :8], expected["F0_s0c8"]) <= maps
    assert relative_error(f1[0, :16], expected["F1_s0c16"]) <= maps
    assert relative_error(f2[0, :16], expected["F2_s0c16"]) <= maps


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32_TIGHT)])
def test_eval_mode_teacher_forced_matches_official(golden_model, io_data, dtype, tolerance):
    out = golden_teacher_forced(golden_model, io_data, dtype, train_mode=False)
    assert_heads_match(out, io_data["eval_teacher_forced_f64"], HEADS, tolerance)


@pytest.mark.parametrize("dtype, tight, maps", [(torch.float64, 1e-8, 1e-8), (torch.float32, FLOAT32_TIGHT, FLOAT32_MAPS)])
def test_train_mode_forward_matches_official(golden_model, io_data, dtype, tight, maps):
    """Train mode: every BatchNorm (the frozen-in-the-recipe TPS included) uses batch statistics."""
    out = golden_teacher_forced(golden_model, io_data, dtype, train_mode=True)
    expected = io_data["train_f64"]
    assert_heads_match(out, expected, HEADS, tight)
    assert relative_error(out.rectified_mask, expected["warped_mask"]) <= maps
    assert relative_error(out.seg_logits, expected["Z_seg"]) <= maps
    assert relative_error(out.glyph_logits_mid, expected["G_mid"]) <= maps
    assert relative_error(out.glyph_logits_low, expected["G_low"]) <= maps


def test_train_mode_fiducials_float64(golden_model, io_data):
    model = copy.deepcopy(golden_model).double().train()
    with torch.no_grad():
        fiducials = model.transformation.localization(io_data["inputs"]["images"].double())
    assert relative_error(fiducials, io_data["train_f64"]["C_prime"]) <= 1e-8


def test_official_checkpoint_file_loads_in_test_and_demo(tmp_path, io_data):
    """The released format ({'net': DataParallel state_dict with the loss buffer, ...}) is recognised as
    SIGA_S by its keys and read by demo.py with no other input."""
    from PIL import Image

    from checkpoint import atomic_save, load_model
    from conftest import run_entry_point
    from model import GlyphAttentionRecognizer

    state = dict(official_rule_state_dict("SIGA_S"))
    state["module." + CONSTANTS[0]] = torch.ones(27)
    path = tmp_path / "SIGA_S.pth"
    atomic_save({"net": state, "optimizer": {}, "iteration": 20000}, path)
    model, tokenizer, config = load_model(path)
    assert isinstance(model, GlyphAttentionRecognizer) and config.model == "SIGA_S"
    assert config.image_size == (48, 160) and tokenizer.charset == CHARSET_36 and not model.training
    image = tmp_path / "word.png"
    Image.fromarray(io_data["inputs"]["images_uint8"][0].permute(1, 2, 0).numpy()).save(image)
    code, out, err = run_entry_point("demo.py", "--checkpoint", path, "--images", image, "--device", "cpu")
    assert code == 0, err
    text, official = out.split("\t")[1], io_data["eval_f64"]["decoded"][0]
    # no EOS within 26 steps: the official decoder drops the 26th character, ours keeps it (README differences)
    assert len(text) == 26 and text[:25] == official
