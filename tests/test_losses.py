"""SIGA losses (SPEC §4) against the official values (golden ``losses.pt`` and ``io.pt``) and on small
hand-made inputs with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from golden import assert_close, assert_terms_match, golden_rows, load_golden
from modules.losses import (SigaLossSettings, alignment_loss, alignment_weight, glyph_loss, glyph_pseudo_labels,
                            predicted_foreground, segmentation_loss, siga_loss_terms, warmup_factor)

DTYPES = {"f32": torch.float32, "f64": torch.float64}
RTOL = {"f32": 1e-5, "f64": 1e-10}  # golden README §7.5: loss terms on fixed tensors
DEFAULTS = SigaLossSettings()


@pytest.fixture(scope="module")
def losses_golden() -> dict:
    return load_golden("losses.pt")


@pytest.fixture(scope="module")
def io_golden() -> dict:
    return load_golden("io.pt")


def _terms(x: dict, iteration: int, settings: SigaLossSettings = DEFAULTS):
    return siga_loss_terms(x["warped_mask"], x["seg_logits"], x["A"], x["G_low"], x["G_mid"], x["length"], iteration,
                           settings)


# ----------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("precision", ["f32", "f64"])
@pytest.mark.parametrize("batch", ["B3", "B4_spec"])
def test_terms_match_golden(losses_golden, batch, precision):
    golden = losses_golden[batch]
    expected, rtol = golden[precision], RTOL[precision]
    x = golden_rows(losses_golden, golden["rows"], DTYPES[precision])
    early, late = _terms(x, 100), _terms(x, 30000)
    _, per_sample = segmentation_loss(x["seg_logits"], x["warped_mask"], 100)
    assert early.total.dtype == DTYPES[precision] and early.align.coverage.dtype == DTYPES[precision]
    assert_terms_match(early, per_sample, expected, rtol)
    for it, terms in (("100", early), ("30000", late)):
        assert_close(terms.seg, expected["L_seg"][it], rtol, f"L_seg@{it}")
        assert_close(terms.total, expected["SIGA_total"][it], rtol, f"SIGA_total@{it}")
        assert terms.align_weight == expected["lambda_align"][it]
    # The hard sample (row 1, m_b = 1.283) is left out after 20k iterations, so L_seg changes.
    assert abs(late.seg.item() - early.seg.item()) > 0.1


@pytest.mark.parametrize("precision", ["f32", "f64"])
@pytest.mark.parametrize("batch", ["B3", "B4_spec"])
def test_binary_maps_match_golden_exactly(losses_golden, batch, precision):
    golden = losses_golden[batch]
    expected = golden["f32"]  # the binary maps are the same in float64
    x = golden_rows(losses_golden, golden["rows"], DTYPES[precision])
    foreground = predicted_foreground(x["seg_logits"], DEFAULTS.foreground_threshold)
    assert torch.equal(foreground.to(torch.uint8), expected["pred_fg"])
    for scale, size in (("low", (16, 64)), ("mid", (8, 32))):
        labels, hard = glyph_pseudo_labels(x["A"], foreground, x["length"], size)
        assert labels.shape == expected[f"Y_glyph_{scale}"].shape and hard.dtype == torch.int64
        assert torch.equal(labels.to(torch.uint8), expected[f"Y_glyph_{scale}"]), scale
        assert torch.equal(hard, expected[f"hard_{scale}"]), scale


def test_all_hard_samples_fall_back_to_zero(losses_golden):
    """SPEC bug #12: the official L_seg is NaN when every m_b ≥ 1 after 20k iterations; ours is a 0 in the graph."""
    golden = losses_golden["seg_all_hard"]
    x = golden_rows(losses_golden, golden["rows"], torch.float32)
    assert math.isnan(golden["L_seg"]["30000"])
    logits = x["seg_logits"].requires_grad_()
    early, _ = segmentation_loss(logits, x["warped_mask"], 100)
    assert_close(early, golden["L_seg"]["100"], RTOL["f32"], "L_seg@100")
    late, per_sample = segmentation_loss(logits, x["warped_mask"], 30000)
    assert (per_sample >= DEFAULTS.hard_sample_threshold).all()
    assert late.item() == 0.0 and late.requires_grad
    late.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("precision", ["f32", "f64"])
@pytest.mark.parametrize("iteration", [100, 30000])
def test_network_outputs_match_golden_losses(io_golden, precision, iteration):
    """The official STR_Loss inputs of the model's train forward (golden README §3.2) give its loss values.
    These are fixed tensors, so README §7.5's tolerances apply (measured: ≤ 8.6e-8 in float32, 0 in float64)."""
    train, expected = io_golden[f"train_{precision}"], io_golden[f"losses_{precision}"][str(iteration)]
    terms = siga_loss_terms(train["warped_mask"], train["Z_seg"], train["A"], train["G_low"], train["G_mid"],
                            io_golden["inputs"]["length"], iteration)
    rtol = RTOL[precision]
    assert_close(terms.seg, expected["L_seg"], rtol, "L_seg")
    assert_close(terms.align.total, expected["L_align"], rtol, "L_align")
    assert_close(terms.low.total, expected["L_low"], rtol, "L_low")
    assert_close(terms.mid.total, expected["L_mid"], rtol, "L_mid")
    assert terms.align_weight == expected["lambda_align"]


def test_single_samples_recombine_to_the_batch(losses_golden):
    """B = 1 works (squeeze(1), bug #14), and no term mixes samples: the pixel/sample means of the rows
    average to the batch value, the orthogonality term sums (bug #10)."""
    x = golden_rows(losses_golden, [0, 1, 2, 3], torch.float64)
    batch = _terms(x, 100)
    singles = [_terms({k: v[b:b + 1] for k, v in x.items()}, 100) for b in range(4)]
    assert singles[0].align.coverage.shape == (1, 32, 128)
    stack = lambda get: torch.stack([get(t) for t in singles])
    assert_close(stack(lambda t: t.seg).mean(), batch.seg, 1e-12, "seg")
    assert_close(stack(lambda t: t.align.cross_entropy).mean(), batch.align.cross_entropy, 1e-12, "align CE")
    assert_close(stack(lambda t: t.align.orthogonality).sum(), batch.align.orthogonality, 1e-12, "orth")
    assert_close(torch.cat([t.align.coverage for t in singles]), batch.align.coverage, 1e-12, "coverage")
    for scale in ("low", "mid"):
        for term in ("cross_entropy", "dice"):
            mean = stack(lambda t: getattr(getattr(t, scale), term)).mean()
            assert_close(mean, getattr(getattr(batch, scale), term), 1e-12, f"{scale} {term}")
    assert singles[3].align.orthogonality.item() == 0.0 and singles[3].low.dice.item() == 0.0  # empty label


# ------------------------------------------------------------------------------------------ hand-made


def test_double_softmax_per_pixel_range():
    """ℓ = log(1 + exp(1 − 2 p_Y)): 0.3133 when the prediction is certain and right, 1.3133 when wrong."""
    mask = torch.zeros(2, 1, 4, 8)
    mask[:, :, :, 4:] = 1.0
    confident = torch.stack([1.0 - mask[:, 0], mask[:, 0]], dim=1) * 60.0 - 30.0  # logit 30 on the true class
    low, per_sample = segmentation_loss(confident, mask, 100)
    high, _ = segmentation_loss(-confident, mask, 100)
    even, _ = segmentation_loss(torch.zeros_like(confident), mask, 100)
    assert low.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)  # 0.3133
    assert high.item() == pytest.approx(math.log1p(math.exp(1.0)), abs=1e-6)  # 1.3133
    assert even.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert per_sample.shape == (2,)


def test_segmentation_mask_threshold_is_strict_and_switch_uses_greater():
    mask = torch.full((1, 1, 2, 2), 0.5)
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 30.0  # certain background
    loss, _ = segmentation_loss(logits, mask, 100)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)  # 0.5 is not > 0.5: background
    hard = -logits  # m_b = 1.3133 ≥ 1
    assert segmentation_loss(hard, mask, DEFAULTS.switch_iter)[0].item() > 1.0  # "it ≤ 20000": plain mean
    assert segmentation_loss(hard, mask, DEFAULTS.switch_iter + 1)[0].item() == 0.0


def test_hard_sample_threshold_is_a_strict_setting(losses_golden):
    x = golden_rows(losses_golden, [0, 1, 2], torch.float64)
    plain, per_sample = segmentation_loss(x["seg_logits"], x["warped_mask"], 100)
    lenient = SigaLossSettings(hard_sample_threshold=2.0)
    assert_close(segmentation_loss(x["seg_logits"], x["warped_mask"], 30000, lenient)[0], plain, 1e-12, "all kept")
    strict = SigaLossSettings(hard_sample_threshold=per_sample[0].item())  # m_0 itself is not < m_0
    assert_close(segmentation_loss(x["seg_logits"], x["warped_mask"], 30000, strict)[0], per_sample[2], 1e-12, "m_2")


def test_alignment_weight_switch():
    assert alignment_weight(DEFAULTS.switch_iter - 1) == 1.0
    assert alignment_weight(DEFAULTS.switch_iter) == 0.3  # "<" for λ, against ">" for L_seg
    custom = SigaLossSettings(switch_iter=10, align_weight_early=2.0, align_weight_late=0.5)
    assert (alignment_weight(9, custom), alignment_weight(10, custom)) == (2.0, 0.5)


def test_siga_warmup_ramps_the_siga_terms_only(losses_golden):
    assert warmup_factor(0, DEFAULTS) == warmup_factor(10**6, DEFAULTS) == 1.0  # the paper: no warm-up
    ramp = SigaLossSettings(warmup_iters=4)
    assert [warmup_factor(i, ramp) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    golden = losses_golden["B3"]
    x = golden_rows(losses_golden, golden["rows"], torch.float64)
    full, ramped = _terms(x, 1), _terms(x, 1, ramp)
    assert torch.allclose(ramped.total, full.total * 0.5) and torch.equal(ramped.seg, full.seg)


def test_settings_defaults():
    assert DEFAULTS == SigaLossSettings(0.5, 0.5, 0.4, 0.05, 70.0, 0.1, 1.0, 20000, 1.0, 0.3)


def test_sharpening_is_one_half_at_the_offset():
    """ψ(0.1) = 0.5: a constant attention of 0.1 covers every foreground pixel with 0.5, background with 0."""
    attention = torch.full((1, 32, 3), 0.1, dtype=torch.float64)
    foreground = torch.zeros(1, 1, 4, 128, dtype=torch.float64)
    foreground[..., :64] = 1.0
    terms = alignment_loss(attention, foreground, torch.tensor([2]))  # one character: only step 0 counts
    assert torch.allclose(terms.coverage[..., :64], torch.full((1, 4, 64), 0.5, dtype=torch.float64))
    assert torch.equal(terms.coverage[..., 64:], torch.zeros(1, 4, 64, dtype=torch.float64))
    # per pixel: foreground log(1 + exp(1 − 2S)) = log 2, background log(1 + e^−1); no pairs, no orthogonality
    expected = 0.5 * math.log(2.0) + 0.5 * math.log1p(math.exp(-1.0))
    assert terms.cross_entropy.item() == pytest.approx(expected, rel=1e-12)
    assert terms.orthogonality.item() == 0.0
    two = alignment_loss(attention, foreground, torch.tensor([3]))  # two characters: 2 · 0.5 = 1 (clamped)
    assert torch.allclose(two.coverage[..., :64], torch.ones(1, 4, 64, dtype=torch.float64))


def _one_hot_attention(positions: list[int], steps: int = 4, length: int = 32) -> torch.Tensor:
    attention = torch.zeros(1, length, steps, dtype=torch.float64)
    for step, position in enumerate(positions):
        attention[0, position, step] = 1.0
    return attention


def test_orthogonality_of_disjoint_and_identical_attention():
    foreground = torch.ones(1, 1, 2, 128, dtype=torch.float64)
    disjoint = alignment_loss(_one_hot_attention([3, 20]), foreground, torch.tensor([3]))
    assert disjoint.orthogonality.item() == 0.0
    same = _one_hot_attention([5, 5])
    terms = alignment_loss(same, foreground, torch.tensor([3]))
    a = torch.nn.functional.interpolate(same.transpose(1, 2)[:, None], size=(4, 128), mode="bilinear",
                                        align_corners=False)[0, 0, 0]
    assert terms.orthogonality.item() == pytest.approx((a ** 4).sum().item() / 2, rel=1e-12)  # one pair, L_b = 2
    ignored = alignment_loss(same, foreground, torch.tensor([2]))  # step 1 is the EOS step: not a character
    assert ignored.orthogonality.item() == 0.0


def test_orthogonality_matches_pairwise_definition():
    """Closed form against O_b = (1/L_b) Σ_{i<j<L_b} Σ_x (a_i a_j)², summed over b (L_b = 0 → 0)."""
    generator = torch.Generator().manual_seed(0)
    attention = torch.randn(4, 32, 6, generator=generator, dtype=torch.float64).softmax(dim=1)
    lengths = torch.tensor([7, 3, 1, 2], dtype=torch.int32)
    terms = alignment_loss(attention, torch.ones(4, 1, 2, 128, dtype=torch.float64), lengths)
    a = torch.nn.functional.interpolate(attention.transpose(1, 2)[:, None], size=(6, 128), mode="bilinear",
                                        align_corners=False)[:, 0]
    expected = 0.0
    for b, length in enumerate(lengths.tolist()):
        chars = length - 1
        pairs = sum(((a[b, i] * a[b, j]) ** 2).sum().item() for i in range(chars) for j in range(i + 1, chars))
        expected += pairs / chars if chars else 0.0
    assert terms.orthogonality.item() == pytest.approx(expected, rel=1e-12)


def test_gradients_reach_attention_and_seg_logits(losses_golden):
    x = golden_rows(losses_golden, [0, 1, 2], torch.float64)
    attention = x["A"].clone().requires_grad_()
    foreground = predicted_foreground(x["seg_logits"])
    alignment_loss(attention, foreground, x["length"]).total.backward()
    assert attention.grad is not None and torch.isfinite(attention.grad).all() and attention.grad.abs().sum() > 0
    logits = x["seg_logits"].clone().requires_grad_()
    segmentation_loss(logits, x["warped_mask"], 30000)[0].backward()
    per_sample_grad = logits.grad.abs().flatten(1).sum(dim=1)
    assert per_sample_grad[0] > 0 and per_sample_grad[2] > 0
    assert per_sample_grad[1] == 0  # the hard sample is ignored after 20k iterations


def test_pseudo_labels_and_foreground_carry_no_gradient(losses_golden):
    x = golden_rows(losses_golden, [0, 1, 2], torch.float32)
    logits = x["seg_logits"].clone().requires_grad_()
    attention = x["A"].clone().requires_grad_()
    foreground = predicted_foreground(logits)
    assert not foreground.requires_grad
    labels, hard = glyph_pseudo_labels(attention, foreground, x["length"], (16, 64))
    assert not labels.requires_grad and labels.grad_fn is None and not hard.requires_grad
    glyph = x["G_low"].clone().requires_grad_()
    glyph_loss(glyph, labels, hard, x["length"]).total.backward()
    assert attention.grad is None and glyph.grad.abs().sum() > 0


def test_step_count_is_taken_from_the_attention():
    """SPEC bug #2: S = 30 steps gives 31 glyph channels; steps ≥ L_b are cleared; first maximum wins."""
    attention = _one_hot_attention([0, 8, 8, 20, 31], steps=30)
    foreground = torch.ones(1, 1, 8, 32, dtype=torch.float64)
    foreground[..., 16:] = 0.0
    labels, hard = glyph_pseudo_labels(attention, foreground, torch.tensor([4]), (8, 32))
    assert labels.shape == (1, 31, 8, 32) and hard.shape == (1, 8, 32)
    assert labels[0, 1:, :, 0].sum(dim=1).tolist()[:3] == [8.0, 0.0, 0.0] and labels[0, 1, :, 0].sum() == 8
    assert labels[0, 2].equal(labels[0, 3]) and labels[0, 2, :, 8].sum() == 8  # overlapping slots 2 and 3
    assert labels[0, 4:].sum() == 0  # step 3 (x = 20, background) is empty, steps ≥ 3 are cleared
    assert torch.equal(labels[0, 0], 1.0 - foreground[0, 0])
    assert (hard[0, :, 8] == 2).all() and (hard[0, :, 0] == 1).all() and (hard[0, :, 4] == 0).all()
    terms = glyph_loss(torch.zeros(1, 31, 8, 32, dtype=torch.float64), labels, hard, torch.tensor([4]))
    assert terms.cross_entropy.item() == pytest.approx(math.log(31.0), rel=1e-12)
    # uniform P = 1/31 per pixel: ΣP = 256/31, ΣY = 8 for each of the 3 character slots, ΣPY = 8/31
    dice = 1.0 - (2 * 8 / 31 + 1) / (256 / 31 + 8 + 1)
    assert terms.dice.item() == pytest.approx(dice, rel=1e-12)


def test_empty_label_counts_in_the_dice_mean():
    logits = torch.randn(2, 5, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.zeros(2, 5, 4, 8, dtype=torch.float64)
    labels[:, 1, :, :4] = 1.0
    labels[:, 0, :, 4:] = 1.0
    hard = labels.argmax(dim=1)
    one = glyph_loss(logits[:1], labels[:1], hard[:1], torch.tensor([2]))
    both = glyph_loss(logits, labels, hard, torch.tensor([2, 1]))
    assert one.dice.item() > 0
    assert both.dice.item() == pytest.approx(one.dice.item() / 2, rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(losses_golden):
    x = golden_rows(losses_golden, [0, 1, 2, 3], torch.float64)
    cpu = _terms(x, 30000)
    gpu = _terms({k: v.cuda() for k, v in x.items()}, 30000)
    assert gpu.total.device.type == "cuda"
    for a, b in ((cpu.total, gpu.total), (cpu.align.coverage, gpu.align.coverage), (cpu.low.dice, gpu.low.dice)):
        assert_close(b.cpu(), a, 1e-10, "cuda")
