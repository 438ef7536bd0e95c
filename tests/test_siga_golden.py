"""SIGA_R against the official model's outputs (golden data): the weight rule, the official-checkpoint
loader, the whole-model eval/teacher-forced/train forwards and the end-to-end loss terms.

Tolerances are the golden README's (§7.3/§7.4), relative to max|expected|: float64 against ``*_f64`` 1e-8
(measured ≤ 1.8e-11); float32 against ``*_f64`` 5e-4, valid for a TPS grid computed accurately (measured
≤ 7.5e-5; the official float32 run, whose grid is not, is off by up to 6.2e-3, README §6)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from checkpoint import convert_official_state_dict
from config import make_config
from golden import (GOLDEN, assert_rule_matches_checksums, load_golden, official_rule_state_dict, relative_error, require,
                    rule_parameters)
from model import build_model
from modules.losses import training_loss
from tokenizer import CHARSET_36, Tokenizer

F64_RTOL = 1e-8
F32_RTOL = 5e-4
HEADS = {"P_1D": "one_d", "P_TRBA": "trba", "P_2D1": "position_low", "P_2D2": "position_mid",
         "P_F1": "fusion_low", "P_F2": "fusion_mid"}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str) -> None:
    error = relative_error(actual, expected)
    assert error <= rtol, f"{name}: relative error {error:.2e} > {rtol:.0e}"


@pytest.fixture(scope="module")
def io_data():
    return load_golden("io.pt")


@pytest.fixture(scope="module")
def golden_model():
    """SIGA_R (36 chars, 32×128) with the rule weights loaded through the official-checkpoint map."""
    model = build_model(make_config("paper", model="SIGA_R"))
    model.load_state_dict(convert_official_state_dict(model, official_rule_state_dict()))
    model.siga.dropout.p = 0.0
    return model.eval()


@pytest.fixture(scope="module")
def forward(golden_model, io_data):
    """``forward(mode, dtype)``: the model's output on the golden inputs, computed once per mode and dtype.
    Modes as in golden README §3.2: "eval" (greedy), "eval_teacher_forced" (BN running statistics) and
    "train" (every BN, TPS included, on batch statistics; a copy, so the stored model is never touched)."""
    inputs, outputs = io_data["inputs"], {}

    def run(mode: str, dtype: torch.dtype):
        if (mode, dtype) not in outputs:
            model = copy.deepcopy(golden_model).to(dtype).train(mode == "train")
            images = inputs["images"].to(dtype)
            with torch.no_grad():
                if mode == "eval":
                    outputs[mode, dtype] = model(images, early_stop=False)
                else:
                    outputs[mode, dtype] = model(images, inputs["text_ids"][:, :-1], inputs["masks"].to(dtype))
        return outputs[mode, dtype]

    return run


def test_weight_rule_matches_checksums():
    checksums = json.loads(require(GOLDEN / "weight_rule_checksums.json").read_text())
    parameters = rule_parameters()
    assert_rule_matches_checksums(parameters, checksums)


def decode(logits: torch.Tensor) -> list[str]:
    """Greedy strings with the official quirk (the 26th character dropped without EOS, SPEC §2)."""
    return Tokenizer(CHARSET_36).decode(logits, drop_last_without_eos=True)[0]


# ------------------------------------------------------------------------------------------------ float64


def test_eval_greedy_float64_matches_official(forward, io_data):
    out, expected = forward("eval", torch.float64), io_data["eval_f64"]
    assert_close(out.logits, expected["P_final"], F64_RTOL, "P_final")
    assert_close(out.auxiliary_logits["fusion_low"], expected["P_F1"], F64_RTOL, "P_F1")
    assert_close(out.auxiliary_logits["fusion_mid"], expected["P_F2"], F64_RTOL, "P_F2")
    assert decode(out.logits) == expected["decoded"]


def test_eval_intermediates_float64(golden_model, io_data):
    """Locate a mismatch: TPS fiducials, rectified image, X, H2 and the glyph sequences."""
    model = copy.deepcopy(golden_model).double().eval()
    images = io_data["inputs"]["images"].double()
    with torch.no_grad():
        fiducials = model.transformation.localization(images)
        rectified, _ = model.transformation(images)
        features = model.backbone(rectified)
        glyph = model.glyph(features.levels, segmentation=False)
        actual = {"C_prime": fiducials, "rectified_image": rectified, "X": features.sequence,
                  "H2": model.siga.sequence(features.sequence), "Q_low": glyph.sequence_low,
                  "Q_mid": glyph.sequence_mid}
    for name, value in actual.items():
        assert_close(value, io_data["eval_f64"][name], F64_RTOL, name)


def test_train_mode_fiducials_float64(golden_model, io_data):
    """C' of the train forward: the TPS localisation network's BNs on the statistics of these 4 images."""
    model = copy.deepcopy(golden_model).double().train()
    with torch.no_grad():
        fiducials = model.transformation.localization(io_data["inputs"]["images"].double())
    assert_close(fiducials, io_data["train_f64"]["C_prime"], F64_RTOL, "C_prime")


def _check_teacher_forced(out, expected: dict, rtol: float, with_maps: bool) -> None:
    assert_close(out.logits, expected["P_final"], rtol, "P_final")
    for name, head in HEADS.items():
        assert_close(out.auxiliary_logits[head], expected[name], rtol, name)
    assert_close(out.attention, expected["A"], rtol, "A")
    if with_maps:
        for name, value in (("warped_mask", out.rectified_mask), ("Z_seg", out.seg_logits),
                            ("G_mid", out.glyph_logits_mid), ("G_low", out.glyph_logits_low)):
            assert_close(value, expected[name], rtol, name)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, F64_RTOL), (torch.float32, F32_RTOL)])
def test_eval_mode_teacher_forced_matches_official(forward, io_data, dtype, rtol):
    _check_teacher_forced(forward("eval_teacher_forced", dtype), io_data["eval_teacher_forced_f64"], rtol,
                          with_maps=False)


def test_train_mode_forward_float64_matches_official(forward, io_data):
    _check_teacher_forced(forward("train", torch.float64), io_data["train_f64"], F64_RTOL, with_maps=True)


# ------------------------------------------------------------------------------------------------ float32


def _check_float32(actual: torch.Tensor, io_data, group: str, name: str) -> None:
    """Our float32 output against the float64 golden at README §7.4's 5e-4, and closer to it than the
    official float32 run (golden ``{group}_f32``), whose float32 TPS grid costs up to ~3e-3 (README §6)."""
    expected = io_data[f"{group}_f64"][name]
    error = relative_error(actual, expected)
    official = relative_error(io_data[f"{group}_f32"][name], expected)
    assert error <= F32_RTOL and error < official, f"{name}: {error:.2e} (official float32: {official:.2e})"


def test_eval_final_logits_float32_match_float64(forward, io_data):
    out = forward("eval", torch.float32)
    _check_float32(out.logits, io_data, "eval", "P_final")
    assert decode(out.logits) == io_data["eval_f32"]["decoded"]  # top-2 margins ≥ 0.011 ≫ the error


def test_eval_fusion_logits_float32_match_float64(forward, io_data):
    out = forward("eval", torch.float32)
    _check_float32(out.auxiliary_logits["fusion_low"], io_data, "eval", "P_F1")
    _check_float32(out.auxiliary_logits["fusion_mid"], io_data, "eval", "P_F2")


def test_train_logits_float32_match_float64(forward, io_data):
    out = forward("train", torch.float32)
    _check_float32(out.logits, io_data, "train", "P_final")
    for name, head in HEADS.items():
        _check_float32(out.auxiliary_logits[head], io_data, "train", name)


def test_train_maps_float32_match_float64(forward, io_data):
    out = forward("train", torch.float32)
    for name, value in (("A", out.attention), ("warped_mask", out.rectified_mask), ("Z_seg", out.seg_logits),
                        ("G_mid", out.glyph_logits_mid), ("G_low", out.glyph_logits_low)):
        _check_float32(value, io_data, "train", name)


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("dtype, rtol, align_rtol", [(torch.float64, F64_RTOL, F64_RTOL), (torch.float32, 1e-4, 1e-3)])
@pytest.mark.parametrize("iteration", [100, 30000])
def test_train_mode_loss_terms_match_official(forward, io_data, dtype, rtol, align_rtol, iteration):
    """Whole model → every loss term, as training computes them, at it = 100 and 30000 (λ 1.0 / 0.3), against
    ``losses_f64``. End to end, so README §7.3/§7.4's model tolerances apply, not §7.5's fixed-tensor ones:
    float64 1e-8 (measured ≤ 4.4e-12); float32 1e-4 and 1e-3 for L_align, whose ψ (slope 17.5 at a = 0.1)
    amplifies the attention's float32 error (measured: L_align 6.0e-5, the rest ≤ 4.9e-6)."""
    inputs = io_data["inputs"]
    expected = io_data["losses_f64"][str(iteration)]
    result = training_loss(forward("train", dtype), inputs["text_ids"][:, 1:], inputs["length"].long(), iteration,
                           make_config("paper", model="SIGA_R").siga, 26)
    terms = result.terms
    for name, head in {**HEADS, "P_final": "final"}.items():
        assert terms[f"ce_{head}"].item() == pytest.approx(expected["CE"][name], rel=rtol), name
    assert terms["seg"].item() == pytest.approx(expected["L_seg"], rel=rtol)
    assert terms["align"].item() == pytest.approx(expected["L_align"], rel=align_rtol)
    assert terms["glyph_low"].item() == pytest.approx(expected["L_low"], rel=rtol)
    assert terms["glyph_mid"].item() == pytest.approx(expected["L_mid"], rel=rtol)
    assert result.total.item() == pytest.approx(expected["total"], rel=rtol)
