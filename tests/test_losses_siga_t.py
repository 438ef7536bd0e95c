"""SIGA_T's losses (SPEC_SIGA_T §4: the SIGA_R losses with a constant alignment weight 0.15 and the mask of the
resized image, there being no TPS): on the SIGA_R loss cases (``../golden/losses.pt``, which the official SIGA_T
loss code reproduces bit for bit, golden_siga_t/loss_check.json) and end to end from the whole model
(``golden_siga_t/io.pt``) at both stored iterations, float64 and float32."""
from __future__ import annotations

import copy

import pytest
import torch

from checkpoint import convert_official_state_dict
from config import make_config
from golden import assert_close, golden_rows, load_golden, official_rule_state_dict
from model import build_siga_t
from modules.losses import siga_loss_terms, training_loss
from tokenizer import Tokenizer

SETTINGS = make_config("paper", model="SIGA_T").siga
HEADS = {"P_our": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid", "P_final": "final"}
TERMS = (("L_seg", "seg"), ("L_align", "align"), ("L_low", "glyph_low"), ("L_mid", "glyph_mid"))


def test_siga_t_constants():
    assert SETTINGS.align_weight_early == SETTINGS.align_weight_late == 0.15
    assert (SETTINGS.sharpen_slope, SETTINGS.sharpen_offset, SETTINGS.switch_iter) == (70.0, 0.1, 20000)
    assert SETTINGS.glyph_class_weights is None


@pytest.mark.parametrize("batch", ["B3", "B4_spec"])
def test_siga_r_loss_cases_with_the_constant_weight(batch):
    """Every term as SIGA_R's; only the total changes, by λ = 0.15 in place of 1.0 / 0.3."""
    golden = load_golden("losses.pt")
    expected = golden[batch]["f64"]
    x = golden_rows(golden, golden[batch]["rows"], torch.float64)
    for it in ("100", "30000"):
        terms = siga_loss_terms(x["warped_mask"], x["seg_logits"], x["A"], x["G_low"], x["G_mid"], x["length"],
                                int(it), SETTINGS)
        assert terms.align_weight == 0.15
        assert_close(terms.align.total, expected["L_align"], 1e-10, "L_align")
        official_total = expected["SIGA_total"][it] + (0.15 - expected["lambda_align"][it]) * expected["L_align"]
        assert_close(terms.total, official_total, 1e-10, f"total@{it}")


@pytest.fixture(scope="module")
def io_golden() -> dict:
    return load_golden("io.pt", "SIGA_T")


@pytest.fixture(scope="module")
def golden_model():
    config = make_config("paper", model="SIGA_T", dropout=0.0)
    model = build_siga_t(config, Tokenizer.from_config(config))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict("SIGA_T"), "SIGA_T"))
    return model


@pytest.mark.parametrize("dtype, key, rtol", [(torch.float64, "losses_f64", 1e-8), (torch.float32, "losses_f64", 1e-4)])
@pytest.mark.parametrize("iteration", [100, 30000])
def test_loss_terms_end_to_end(io_golden, golden_model, dtype, key, rtol, iteration):
    """Model (train mode, dropout off) → every loss term and the total as the engine computes them."""
    inputs = io_golden["inputs"]
    model = copy.deepcopy(golden_model).to(dtype).train()
    with torch.no_grad():
        output = model(inputs["images"].to(dtype), inputs["text_ids"][:, :-1], inputs["masks"].to(dtype))
        loss = training_loss(output, inputs["text_ids"][:, 1:], inputs["length"].long(), iteration, SETTINGS, 26)
    expected = io_golden[key][str(iteration)]
    align_rtol = 1e-3 if dtype == torch.float32 else rtol  # golden README §6.4
    for name, head in HEADS.items():
        assert loss.terms[f"ce_{head}"].item() == pytest.approx(expected["CE"][name], rel=rtol), name
    for name, term in TERMS:
        tolerance = align_rtol if name == "L_align" else rtol
        assert loss.terms[term].item() == pytest.approx(expected[name], rel=tolerance), name
    assert expected["align_coef"] == 0.15
    assert loss.total.item() == pytest.approx(expected["total"], rel=rtol)


def test_eval_mode_teacher_forced_losses_float64(io_golden, golden_model):
    inputs = io_golden["inputs"]
    model = copy.deepcopy(golden_model).double().eval()
    with torch.no_grad():
        output = model(inputs["images"].double(), inputs["text_ids"][:, :-1], inputs["masks"].double())
        loss = training_loss(output, inputs["text_ids"][:, 1:], inputs["length"].long(), 100, SETTINGS, 26)
    expected = io_golden["losses_eval_teacher_forced_f64"]
    for name, term in TERMS:
        assert loss.terms[term].item() == pytest.approx(expected[name], rel=1e-8), name
    assert loss.total.item() == pytest.approx(expected["total"], rel=1e-8)
