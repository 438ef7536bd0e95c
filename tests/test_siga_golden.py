"""SIGA_R against the official model's outputs (golden data): the weight rule, the official-checkpoint
loader, the whole-model eval/teacher-forced/train forwards and the end-to-end loss terms."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from golden import GOLDEN, load_golden, official_rule_state_dict, rule_parameters
from model import build_model, convert_official_state_dict, visual_sequence
from utils import Tokenizer, make_config

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="needs ../shared/data/golden")

HEADS = {"P_1D": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid"}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


@pytest.fixture(scope="module")
def io_data():
    return load_golden("io.pt")


@pytest.fixture(scope="module")
def golden_model():
    """SIGA_R (36 chars, 32×128) with the rule weights loaded through the official-checkpoint map."""
    model = build_model(make_config("paper", model="SIGA_R"))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict()))
    model.dropout.p = 0.0
    return model.eval()


def test_weight_rule_matches_checksums():
    checksums = json.loads((GOLDEN / "weight_rule_checksums.json").read_text())
    parameters = rule_parameters()
    assert set(parameters) == set(checksums)
    for key, expected in checksums.items():
        value = parameters[key].double()
        assert list(value.shape) == expected["shape"], key
        assert value.sum().item() == pytest.approx(expected["sum"], rel=1e-9, abs=1e-9), key
        assert value.abs().sum().item() == pytest.approx(expected["sum_abs"], rel=1e-9), key
        assert value.flatten()[:3].tolist() == pytest.approx(expected["first"], rel=1e-7), key
        assert value.flatten()[-1].item() == pytest.approx(expected["last"], rel=1e-7), key


def _eval(model: torch.nn.Module, io_data, dtype: torch.dtype):
    model = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        return model(io_data["inputs"]["images"].to(dtype), early_stop=False)


def _train_forward(model: torch.nn.Module, io_data, dtype: torch.dtype, train_mode: bool):
    model = copy.deepcopy(model).to(dtype).train(train_mode)
    inputs = io_data["inputs"]
    with torch.no_grad():
        return model(inputs["images"].to(dtype), inputs["text_ids"][:, :-1], inputs["masks"].to(dtype))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, 5e-4)])
def test_eval_greedy_matches_official(golden_model, io_data, dtype, tolerance):
    out = _eval(golden_model, io_data, dtype)
    expected = io_data["eval_f64"]
    assert relative_error(out.logits, expected["P_final"]) <= tolerance
    assert relative_error(out.auxiliary_logits["fusion_low"], expected["P_F1"]) <= tolerance
    assert relative_error(out.auxiliary_logits["fusion_mid"], expected["P_F2"]) <= tolerance
    texts, _ = Tokenizer("abcdefghijklmnopqrstuvwxyz1234567890").decode(out.logits, drop_last_without_eos=True)
    assert texts == expected["decoded"] == io_data["eval_f32"]["decoded"]


def test_eval_intermediates_float64(golden_model, io_data):
    """Locate a mismatch: TPS fiducials, rectified image, X, H2 and the glyph sequences."""
    model = copy.deepcopy(golden_model).double().eval()
    images = io_data["inputs"]["images"].double()
    expected = io_data["eval_f64"]
    with torch.no_grad():
        fiducials = model.transformation.localization(images)
        rectified, _ = model.transformation(images)
        features = model.backbone(rectified)
        x = visual_sequence(features.v)
        glyph = model.glyph(features.f0, features.f1, features.f2, segmentation=False)
        actual = {"C_prime": fiducials, "rectified_image": rectified, "X": x, "H2": model.sequence(x),
                  "Q_low": glyph.sequence_low, "Q_mid": glyph.sequence_mid}
    for name, value in actual.items():
        assert relative_error(value, expected[name]) <= 1e-8, name


def _check_teacher_forced(out, expected, tolerance: float, with_maps: bool):
    assert relative_error(out.logits, expected["P_final"]) <= tolerance
    for name, head in HEADS.items():
        assert relative_error(out.auxiliary_logits[head], expected[name]) <= tolerance, name
    assert relative_error(out.attention, expected["A"]) <= tolerance
    if with_maps:
        assert relative_error(out.rectified_mask, expected["warped_mask"]) <= tolerance
        assert relative_error(out.seg_logits, expected["Z_seg"]) <= tolerance
        assert relative_error(out.glyph_logits_mid, expected["G_mid"]) <= tolerance
        assert relative_error(out.glyph_logits_low, expected["G_low"]) <= tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, 5e-4)])
def test_eval_mode_teacher_forced_matches_official(golden_model, io_data, dtype, tolerance):
    out = _train_forward(golden_model, io_data, dtype, train_mode=False)
    _check_teacher_forced(out, io_data["eval_teacher_forced_f64"], tolerance, with_maps=False)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-8), (torch.float32, 5e-4)])
def test_train_mode_forward_matches_official(golden_model, io_data, dtype, tolerance):
    out = _train_forward(golden_model, io_data, dtype, train_mode=True)
    _check_teacher_forced(out, io_data["train_f64"], tolerance, with_maps=True)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_train_mode_loss_terms_match_official(golden_model, io_data, dtype, rtol):
    """Whole model → every loss term, as train.py computes them, at it = 100 and 30000 (λ 1.0 / 0.3)."""
    from train import training_loss
    from utils import siga_loss_settings

    out = _train_forward(golden_model, io_data, dtype, train_mode=True)
    inputs = io_data["inputs"]
    targets, lengths = inputs["text_ids"][:, 1:], inputs["length"].long()
    settings = siga_loss_settings(make_config("paper", model="SIGA_R"))
    for iteration in ("100", "30000"):
        expected = io_data["losses_f64"][iteration]
        total, terms = training_loss(out, targets, lengths, int(iteration), settings, 26)
        for name, head in {**HEADS, "P_final": "final"}.items():
            assert terms[f"ce_{head}"].item() == pytest.approx(expected["CE"][name], rel=rtol), name
        assert terms["seg"].item() == pytest.approx(expected["L_seg"], rel=rtol)
        assert terms["align"].item() == pytest.approx(expected["L_align"], rel=rtol if dtype == torch.float64 else 1e-3)
        assert terms["glyph_low"].item() == pytest.approx(expected["L_low"], rel=rtol)
        assert terms["glyph_mid"].item() == pytest.approx(expected["L_mid"], rel=rtol)
        assert total.item() == pytest.approx(expected["total"], rel=rtol)
