"""SIGA_T's architecture against the official model's outputs (../shared/data/golden_siga_t): the weight rule,
the official name map and parameter counts (SPEC_SIGA_T §3.8, §8), and the whole model in float64 and float32
(eval greedy, eval-BN teacher-forced, train), intermediates included. The golden data run with every dropout
off, so the model is built with dropout 0 (the ViT has none)."""
from __future__ import annotations

import copy

import pytest
import torch

from checkpoint import convert_official_state_dict
from config import make_config
from golden import (assert_greedy_matches, assert_heads_match, assert_rule_matches_checksums, golden_eval,
                    golden_teacher_forced, load_golden, name_map_coverage, official_rule_state_dict, official_shapes,
                    relative_error, rule_and_checksums)
from model import build_siga_t
from tokenizer import Tokenizer

HEADS = {"P_our": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid"}
#: golden README §6.4: float32 against *_f64
FLOAT32 = 1e-4
count = lambda module: sum(p.numel() for p in module.parameters())


def paper_config(**overrides):
    return make_config("paper", model="SIGA_T", **overrides)


@pytest.fixture(scope="module")
def io_data():
    return load_golden("io.pt", "SIGA_T")


@pytest.fixture(scope="module")
def golden_model():
    """SIGA_T (36 chars, 32×128) with the rule weights loaded through the official-checkpoint map."""
    config = paper_config(dropout=0.0)
    model = build_siga_t(config, Tokenizer.from_config(config))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict("SIGA_T"), "SIGA_T"))
    return model.eval()


def test_weight_rule_matches_checksums():
    parameters, checksums = rule_and_checksums("SIGA_T")
    assert len(parameters) == 373 and sum(p.numel() for p in parameters.values()) == 124_583_784
    assert_rule_matches_checksums(parameters, checksums)


def test_name_map_covers_the_official_state_dict_exactly(golden_model):
    ours, official, ignored = name_map_coverage(golden_model, "SIGA_T")
    assert len(official_shapes("SIGA_T")) == 433 and ours == official
    assert ignored == {f"mgp_str.{name}.{leaf}" for name in ("head", "norm", "segmentation.token_norm_2")
                       for leaf in ("weight", "bias")}


def test_parameter_counts(golden_model):
    """SPEC_SIGA_T §3.8: 124,583,784 official parameters, of which we omit the unused head, final norm and
    token_norm_2 (32,294)."""
    m = golden_model
    assert count(m) == 124_583_784 - 32_294
    assert count(m.backbone.vit) == 85_291_776 - 1_536 and count(m.backbone.norm_seg) == 6_144
    assert count(m.backbone.tail) + count(m.backbone.token_norm) == 15_739_904
    assert count(m.glyph) == 24_915_768 - 15_739_904 - 1_536
    assert count(m.siga.alignment_sequence) == count(m.siga.sequence) == 2_892_288
    assert count(m.siga.alignment_decoder) == count(m.siga.trba_decoder) == 939_814
    assert count(m.siga.position_decoder_low) == 808_230 and count(m.siga.fusion_decoder_mid) == 1_071_142
    assert count(m.siga.fusion) == 131_328 and count(m.siga.projection) == 131_584
    assert count(m.siga.final_decoder) == 2_655_014


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32)])
def test_eval_greedy_matches_official(golden_model, io_data, dtype, tolerance):
    out = golden_eval(golden_model, io_data, dtype)
    expected = io_data["eval_f64"]
    assert_greedy_matches(out, expected, tolerance)


def test_eval_decoded_strings_match_official(golden_model, io_data):
    """P_final decoded with the official string quirk (SPEC_SIGA_T T-2) equals the official "final" entry."""
    out = golden_eval(golden_model, io_data, torch.float32)
    tokenizer = Tokenizer.from_config(paper_config())
    texts, confidences, raws = tokenizer.decode_official(out.logits)
    expected = io_data["eval_f32"]["decoded"]["final"]
    assert raws == expected["raw"] and texts == expected["pred"]
    assert confidences == pytest.approx(expected["confidence"], rel=1e-4)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32)])
def test_eval_intermediates(golden_model, io_data, dtype, tolerance):
    """Locate a mismatch: patch tokens, the four taps, the final tokens, X, H1, H2 and the glyph sequences."""
    model = copy.deepcopy(golden_model).to(dtype).eval()
    images = io_data["inputs"]["images"].to(dtype)
    expected = io_data["eval_f64"]
    with torch.no_grad():
        patches = model.backbone.vit.patch_embed(images)
        features = model.backbone(images)
        glyph = model.glyph(features.levels, segmentation=False)
        h1 = model.siga.alignment_sequence(features.sequence)
        h2 = model.siga.sequence(features.sequence)
    assert relative_error(patches.mean(1), expected["patch_tokens_mean"]) <= tolerance
    for i, level in enumerate(features.levels[:4]):
        assert relative_error(level.flatten(2).mean(2), expected[f"seg{i}_mean"]) <= tolerance, i
    assert relative_error(features.levels[4].flatten(2).mean(2), expected["tokens_mean"]) <= tolerance
    assert relative_error(features.sequence, expected["X"]) <= tolerance
    assert relative_error(h1, expected["H1"]) <= tolerance and relative_error(h2, expected["H2"]) <= tolerance
    assert relative_error(glyph.sequence_mid, expected["Q_mid"]) <= tolerance
    assert relative_error(glyph.sequence_low, expected["Q_low"]) <= tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32)])
def test_eval_mode_teacher_forced_matches_official(golden_model, io_data, dtype, tolerance):
    out = golden_teacher_forced(golden_model, io_data, dtype, train_mode=False)
    assert_heads_match(out, io_data["eval_teacher_forced_f64"], HEADS, tolerance)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, FLOAT32)])
def test_train_mode_forward_matches_official(golden_model, io_data, dtype, tolerance):
    """Train mode: every BatchNorm uses the batch statistics of the four images; the mask is passed through."""
    out = golden_teacher_forced(golden_model, io_data, dtype, train_mode=True)
    expected = io_data["train_f64"]
    assert_heads_match(out, expected, HEADS, tolerance)
    assert torch.equal(out.rectified_mask, io_data["inputs"]["masks"].to(dtype))
    assert relative_error(out.seg_logits, expected["Z_seg"]) <= tolerance
    assert relative_error(out.glyph_logits_mid, expected["G_mid"]) <= tolerance
    assert relative_error(out.glyph_logits_low, expected["G_low"]) <= tolerance


def test_official_checkpoint_file_loads_in_test_and_demo(tmp_path, io_data):
    """The released format ({'net': DDP state_dict with the unused head/norm keys, ...}) is recognised as SIGA_T
    by its keys and read by demo.py with no other input; its prediction is P_final, decoded cleanly."""
    from PIL import Image

    from checkpoint import atomic_save, load_model
    from conftest import run_entry_point
    from model import GlyphAttentionRecognizer

    path = tmp_path / "SIGA_T.pth"
    atomic_save({"net": official_rule_state_dict("SIGA_T"), "optimizer": {}, "iteration": 100000}, path)
    model, tokenizer, config = load_model(path)
    assert isinstance(model, GlyphAttentionRecognizer) and config.model == "SIGA_T" and not model.training
    assert config.image_size == (32, 128) and tokenizer.charset == "0123456789abcdefghijklmnopqrstuvwxyz"
    image = tmp_path / "word.png"
    Image.fromarray(io_data["inputs"]["images_uint8"][2].permute(1, 2, 0).numpy()).save(image)
    code, out, err = run_entry_point("demo.py", "--checkpoint", path, "--images", image, "--device", "cpu")
    assert code == 0, err
    expected, _ = tokenizer.decode(io_data["eval_f32"]["P_final"][2:3])
    assert out.split("\t")[1] == expected[0]
