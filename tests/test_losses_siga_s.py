"""SIGA_S's losses (SPEC_SIGA_S §4: ψ σ(85(a − 0.08)), the class-weighted glyph CE, λ 0.1 throughout, the
input mask in L_seg) against the official values: on fixed tensors (``losses.pt``) and end to end from the
whole model (``io.pt``), with the faithful un-warped mask and the warped one (bug S1)."""
from __future__ import annotations

import copy

import pytest
import torch

from checkpoint import convert_official_state_dict
from config import make_config
from golden import assert_close, assert_terms_match, golden_rows, load_golden, official_rule_state_dict
from model import build_siga_s
from modules.losses import glyph_pseudo_labels, predicted_foreground, segmentation_loss, siga_loss_terms, training_loss
from tokenizer import Tokenizer

DTYPES = {"f32": torch.float32, "f64": torch.float64}
RTOL = {"f32": 1e-5, "f64": 1e-10}  # golden_siga_s README §6.4: loss terms on fixed tensors
SETTINGS = make_config("paper", model="SIGA_S").siga
HEADS = {"P_1D": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid", "P_final": "final"}


@pytest.fixture(scope="module")
def losses_golden() -> dict:
    return load_golden("losses.pt", "SIGA_S")


def test_siga_s_constants():
    assert (SETTINGS.sharpen_slope, SETTINGS.sharpen_offset) == (85.0, 0.08)
    assert SETTINGS.align_weight_early == SETTINGS.align_weight_late == 0.1
    assert len(SETTINGS.glyph_class_weights) == 27 and max(SETTINGS.glyph_class_weights) == 2.859
    assert not SETTINGS.warped_mask_target and make_config("paper", model="SIGA_R").siga.warped_mask_target


@pytest.mark.parametrize("precision", ["f32", "f64"])
@pytest.mark.parametrize("batch", ["B3", "B4_spec"])
def test_terms_match_golden(losses_golden, batch, precision):
    golden = losses_golden[batch]
    expected, rtol = golden[precision], RTOL[precision]
    x = golden_rows(losses_golden, golden["rows"], DTYPES[precision])
    terms = {it: siga_loss_terms(x["masks"], x["seg_logits"], x["A"], x["G_low"], x["G_mid"], x["length"], it, SETTINGS)
             for it in (100, 30000)}
    early = terms[100]
    _, per_sample = segmentation_loss(x["seg_logits"], x["masks"], 100, SETTINGS)
    assert_terms_match(early, per_sample, expected, rtol)
    for it, result in terms.items():
        assert_close(result.seg, expected["L_seg"][str(it)], rtol, f"L_seg@{it}")
        assert_close(result.total, expected["SIGA_total"][str(it)], rtol, f"SIGA_total@{it}")
        assert result.align_weight == expected["align_coefficient"]


@pytest.mark.parametrize("batch", ["B3", "B4_spec"])
def test_binary_maps_match_golden_exactly(losses_golden, batch):
    golden = losses_golden[batch]
    expected = golden["f32"]
    x = golden_rows(losses_golden, golden["rows"], torch.float32)
    foreground = predicted_foreground(x["seg_logits"], SETTINGS.foreground_threshold)
    assert torch.equal(foreground.to(torch.uint8), expected["pred_fg"])
    for scale, size in (("low", (12, 40)), ("mid", (6, 40))):
        labels, hard = glyph_pseudo_labels(x["A"], foreground, x["length"], size, SETTINGS)
        assert torch.equal(labels.to(torch.uint8), expected[f"Y_glyph_{scale}"]), scale
        assert torch.equal(hard, expected[f"hard_{scale}"]), scale


def test_unweighted_glyph_ce_would_differ(losses_golden):
    """The class weights matter on these inputs (so the weighted-CE comparison above can fail)."""
    x = golden_rows(losses_golden, losses_golden["B3"]["rows"], torch.float64)
    args = (x["masks"], x["seg_logits"], x["A"], x["G_low"], x["G_mid"], x["length"], 100)
    weighted = siga_loss_terms(*args, SETTINGS).low.cross_entropy
    unweighted = siga_loss_terms(*args, SETTINGS.__class__(**{**SETTINGS.__dict__, "glyph_class_weights": None}))
    assert abs(weighted.item() - unweighted.low.cross_entropy.item()) > 1e-3


@pytest.fixture(scope="module")
def io_golden() -> dict:
    return load_golden("io.pt", "SIGA_S")


@pytest.fixture(scope="module")
def train_output_f64(io_golden):
    """The whole model's train-mode forward in float64 (drop-path and dropout off, as the golden data)."""
    config = make_config("paper", model="SIGA_S", drop_path_rate=0.0, dropout=0.0)
    model = build_siga_s(config, Tokenizer.from_config(config))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict("SIGA_S"), "SIGA_S"))
    model = copy.deepcopy(model).double().train()
    inputs = io_golden["inputs"]
    with torch.no_grad():
        return model(inputs["images"].double(), inputs["text_ids"][:, :-1], inputs["masks"].double())


@pytest.mark.parametrize("warped, key", [(False, "losses_f64"), (True, "losses_warped_mask_f64")])
@pytest.mark.parametrize("iteration", [100, 30000])
def test_loss_terms_end_to_end_float64(io_golden, train_output_f64, warped, key, iteration):
    """Model → every loss term as the engine computes them; the faithful input mask or, with
    ``warped_mask_target``, the TPS-warped one (bug S1 fixed)."""
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "warped_mask_target": warped})
    inputs = io_golden["inputs"]
    loss = training_loss(train_output_f64, inputs["text_ids"][:, 1:], inputs["length"].long(), iteration, settings, 26,
                         masks=inputs["masks"].double())
    expected = io_golden[key][str(iteration)]
    for name, head in HEADS.items():  # the CEs do not depend on the mask: stored once, with losses_f64
        ce = io_golden["losses_f64"][str(iteration)]["CE"][name]
        assert loss.terms[f"ce_{head}"].item() == pytest.approx(ce, rel=1e-8), name
    for name, term in (("L_seg", "seg"), ("L_align", "align"), ("L_low", "glyph_low"), ("L_mid", "glyph_mid")):
        assert loss.terms[term].item() == pytest.approx(expected[name], rel=1e-8), name
    assert loss.total.item() == pytest.approx(expected["total"], rel=1e-8)
