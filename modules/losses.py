"""Loss functions as pure functions of tensors (SPEC §4), and the total training loss of a model's
teacher-forced output with every term by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from modules.outputs import RecognitionOutput, SigaOutput


def step_mask(lengths: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S] bool: True for the first ``lengths[b]`` steps of each sample (characters + EOS)."""
    return torch.arange(num_steps, device=lengths.device)[None, :] < lengths[:, None]


def recognition_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the first ``length_b`` steps of every sample, averaged over tokens
    (not samples), as SPEC §4.1. logits [B, S, C], targets [B, S] (ids after SOS), lengths [B]."""
    steps = logits.shape[1]
    keep = step_mask(lengths, steps)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # AMP: the loss in ≥ float32
    per_token = F.cross_entropy(logits.transpose(1, 2), targets[:, :steps], reduction="none")
    return (per_token * keep).sum() / keep.sum().clamp(min=1)


@dataclass(frozen=True)
class SigaLossSettings:
    """The SIGA loss constants of SPEC §4 / §7 #28, with SIGA_R's paper values as defaults; the run's values
    are ``Config.siga``."""

    mask_threshold: float = 0.5              # K-means mask binarisation for L_seg, strict ">" (§4.2)
    foreground_threshold: float = 0.5        # predicted foreground F̂ = [p_1 > 0.5] (§4.3)
    glyph_foreground_threshold: float = 0.4  # resized F̂ ">=" this is foreground at a glyph scale (§4.4)
    glyph_attention_threshold: float = 0.05  # alpha: resized attention ">" this covers a slot (§4.4)
    sharpen_slope: float = 70.0              # psi(a) = sigmoid(slope * (a - offset)) (§4.3)
    sharpen_offset: float = 0.1
    hard_sample_threshold: float = 1.0       # after switch_iter L_seg keeps samples with m_b < this (§4.2)
    switch_iter: int = 20000
    align_weight_early: float = 1.0          # lambda for iteration < switch_iter (§4.6)
    align_weight_late: float = 0.3
    glyph_class_weights: tuple[float, ...] | None = None  # per-slot weights of the glyph CE (SIGA_S §4.4)
    warped_mask_target: bool = True  # L_seg's target: the TPS-warped mask, or the input mask (SIGA_S bug S1)
    warmup_iters: int = 0  # ours, not the paper's: the SIGA terms ramp linearly from 0 over this many iterations


class AlignmentTerms(NamedTuple):
    """L_align = cross_entropy + orthogonality (SPEC §4.3); coverage is the clamped map S [B,H,W]."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    orthogonality: torch.Tensor
    coverage: torch.Tensor


class GlyphTerms(NamedTuple):
    """L_g = cross_entropy + dice for one glyph scale (SPEC §4.5)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    dice: torch.Tensor


class SigaLossTerms(NamedTuple):
    """The SIGA loss terms of SPEC §4.2–4.6; ``total`` = seg + align_weight·align + low + mid (no recognition CEs)."""

    total: torch.Tensor
    seg: torch.Tensor
    align: AlignmentTerms
    low: GlyphTerms
    mid: GlyphTerms
    align_weight: float


def segmentation_loss(seg_logits: torch.Tensor, warped_mask: torch.Tensor, iteration: int,
                      settings: SigaLossSettings = SigaLossSettings()) -> tuple[torch.Tensor, torch.Tensor]:
    """L_seg of SPEC §4.2 and the per-sample means m_b [B].

    Faithful double softmax (bug #13): cross-entropy of softmax(Z_seg) used as logits against the
    binarised mask, so each pixel costs between 0.3133 and 1.3133. After ``switch_iter`` only samples
    with m_b < ``hard_sample_threshold`` count; when none does, the official NaN (bug #12) becomes a
    zero that keeps the graph. Logits on a coarser grid than the mask (SIGA_R's half-resolution option) are
    compared with the area-downsampled mask.
    """
    if warped_mask.shape[-2:] != seg_logits.shape[-2:]:
        warped_mask = F.interpolate(warped_mask, size=seg_logits.shape[-2:], mode="area")
    target = (warped_mask > settings.mask_threshold).squeeze(1).long()
    per_pixel = F.cross_entropy(seg_logits.softmax(dim=1), target, reduction="none")
    per_sample = per_pixel.flatten(1).mean(dim=1)
    if iteration <= settings.switch_iter:
        return per_pixel.mean(), per_sample
    easy = per_sample < settings.hard_sample_threshold
    kept = torch.where(easy, per_sample, torch.zeros_like(per_sample)).sum()
    return kept / easy.sum().clamp(min=1).to(per_sample.dtype), per_sample


def predicted_foreground(seg_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """F̂ = [softmax(Z_seg)_1 > threshold] [B,1,H,W] as a {0,1} float map without gradient (SPEC §4.3, §4.7);
    no_grad keeps the softmax out of the autograd graph."""
    with torch.no_grad():
        return (seg_logits.softmax(dim=1)[:, 1:2] > threshold).to(seg_logits.dtype)


def _attention_to_width(attention: torch.Tensor, width: int) -> torch.Tensor:
    """[B,T,S] (positions × steps) → [B,S,width]: bilinear, align_corners=False, step axis kept (SPEC §4.3 step 1)."""
    steps = attention.shape[2]
    grid = attention.transpose(1, 2).unsqueeze(1)
    return F.interpolate(grid, size=(steps, width), mode="bilinear", align_corners=False).squeeze(1)


def alignment_loss(attention: torch.Tensor, foreground: torch.Tensor, lengths: torch.Tensor,
                   settings: SigaLossSettings = SigaLossSettings()) -> AlignmentTerms:
    """L_align of SPEC §4.3 for attention [B,T,S] (with grad), F̂ [B,1,H,W] and lengths = L_b + 1.

    Only the character steps s < L_b count. The orthogonality term uses the closed form
    Σ_{i<j} q_i q_j = ½[(Σ_i q_i)² − Σ_i q_i²] with q = a² (bug #16), is 0 for L_b = 0 (bug #11) and is
    summed over the batch as in the official code (bug #10). The coverage CE uses probabilities as
    logits (bug #13).
    """
    a = _attention_to_width(attention, foreground.shape[-1])
    chars = (lengths - 1).to(device=a.device)
    keep = step_mask(chars, a.shape[1]).unsqueeze(-1)
    q = torch.where(keep, a.square(), torch.zeros_like(a))
    pairs = 0.5 * (q.sum(dim=1).square() - q.square().sum(dim=1)).sum(dim=1)
    orthogonality = (pairs / chars.clamp(min=1).to(a.dtype)).sum()

    fg = foreground.squeeze(1)
    sharpened = torch.sigmoid(settings.sharpen_slope * (a - settings.sharpen_offset))
    column = torch.where(keep, sharpened, torch.zeros_like(sharpened)).sum(dim=1)
    coverage = (column.unsqueeze(1) * fg).clamp(0.0, 1.0)
    cross_entropy = F.cross_entropy(torch.stack([1.0 - coverage, coverage], dim=1), fg.long())
    return AlignmentTerms(cross_entropy + orthogonality, cross_entropy, orthogonality, coverage)


def glyph_pseudo_labels(attention: torch.Tensor, foreground: torch.Tensor, lengths: torch.Tensor,
                        size: tuple[int, int], settings: SigaLossSettings = SigaLossSettings()
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Glyph pseudo-labels of SPEC §4.4 at ``size`` = (h, w), without gradient.

    Returns Y_glyph [B,S+1,h,w] ({0,1} floats; channel 0 = background 1 − F_s, channel k = step k−1's
    thresholded attention × F_s, steps ≥ L_b cleared) and the first-maximum argmax hard label [B,h,w].
    The step count S comes from the attention (bug #2: the official code hard-codes 26). Built under
    no_grad: the labels are targets, and the attention's resizing need not enter the graph (§4.7).
    """
    height, width = size
    with torch.no_grad():
        fg = F.interpolate(foreground, size=(height, width), mode="bilinear", align_corners=False)
        fg = (fg >= settings.glyph_foreground_threshold).to(attention.dtype)
        a = _attention_to_width(attention, width)
        keep = step_mask((lengths - 1).to(device=a.device), a.shape[1]).unsqueeze(-1)
        slots = ((a > settings.glyph_attention_threshold) & keep).to(attention.dtype)
        labels = torch.cat([1.0 - fg, slots.unsqueeze(2) * fg], dim=1)
        return labels, labels.argmax(dim=1)


def glyph_loss(glyph_logits: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor, lengths: torch.Tensor,
               class_weights: tuple[float, ...] | None = None) -> GlyphTerms:
    """L_g = CE + Dice of SPEC §4.5 for glyph logits [B,K,h,w] and the pseudo-labels of one scale.

    With ``class_weights`` [K] the CE is the weighted mean Σ w[y]·ℓ / Σ w[y] (SPEC_SIGA_S §4.4). Dice
    averages 1 − (2ΣPY + 1)/(ΣP + ΣY + 1) over the L_b character channels of each sample, then over the batch
    with 1/B; samples with L_b = 0 contribute 0 (bug #11).
    """
    weight = None
    if class_weights is not None:
        weight = torch.tensor(class_weights, dtype=glyph_logits.dtype, device=glyph_logits.device)
    cross_entropy = F.cross_entropy(glyph_logits, hard, weight=weight)
    probs = glyph_logits.softmax(dim=1)[:, 1:].flatten(2)
    target = labels[:, 1:].flatten(2).to(probs.dtype)
    dice = 1.0 - (2.0 * (probs * target).sum(-1) + 1.0) / (probs.sum(-1) + target.sum(-1) + 1.0)
    chars = (lengths - 1).to(device=probs.device)
    per_sample = torch.where(step_mask(chars, dice.shape[1]), dice, torch.zeros_like(dice)).sum(dim=1)
    dice_mean = (per_sample / chars.clamp(min=1).to(dice.dtype)).mean()
    return GlyphTerms(cross_entropy + dice_mean, cross_entropy, dice_mean)


def alignment_weight(iteration: int, settings: SigaLossSettings = SigaLossSettings()) -> float:
    """λ(it) of SPEC §4.6: the early weight while iteration < switch_iter (note "<", against L_seg's ">")."""
    return settings.align_weight_early if iteration < settings.switch_iter else settings.align_weight_late


def warmup_factor(iteration: int, settings: SigaLossSettings) -> float:
    """The SIGA terms' share of their weight at ``iteration``: (iteration + 1) / warmup_iters up to 1; always 1
    without a warm-up (the paper)."""
    return 1.0 if settings.warmup_iters <= 0 else min(1.0, (iteration + 1) / settings.warmup_iters)


def siga_loss_terms(warped_mask: torch.Tensor, seg_logits: torch.Tensor, attention: torch.Tensor,
                    glyph_logits_low: torch.Tensor, glyph_logits_mid: torch.Tensor, lengths: torch.Tensor,
                    iteration: int, settings: SigaLossSettings = SigaLossSettings()) -> SigaLossTerms:
    """All SIGA losses of SPEC §4.2–4.6: L_seg + λ·L_align + L_low + L_mid (the caller adds the 7 CEs), times
    the warm-up factor (1 unless ``settings.warmup_iters``).

    warped_mask [B,1,H,W], seg_logits [B,2,H,W], attention [B,T,S] (model_one's, with grad), glyph logits
    [B,S+1,h,w] at the low (16×64) and mid (8×32) scales, lengths = L_b + 1.
    """
    seg, _ = segmentation_loss(seg_logits, warped_mask, iteration, settings)
    foreground = predicted_foreground(seg_logits, settings.foreground_threshold)
    if foreground.shape[-2:] != warped_mask.shape[-2:]:  # a coarser segmentation: F̂ at the input grid as before
        foreground = F.interpolate(foreground, size=warped_mask.shape[-2:], mode="nearest")
    align = alignment_loss(attention, foreground, lengths, settings)
    scales = []
    for logits in (glyph_logits_low, glyph_logits_mid):
        labels, hard = glyph_pseudo_labels(attention, foreground, lengths, tuple(logits.shape[-2:]), settings)
        scales.append(glyph_loss(logits, labels, hard, lengths, settings.glyph_class_weights))
    low, mid = scales
    summands = siga_summands(seg, align.total, low.total, mid.total, iteration, settings)
    total = summands["L_seg"] + summands["λ·L_align"] + summands["L_low"] + summands["L_mid"]
    return SigaLossTerms(total, seg, align, low, mid, alignment_weight(iteration, settings))


def siga_summands(seg: torch.Tensor, align: torch.Tensor, glyph_low: torch.Tensor, glyph_mid: torch.Tensor,
                  iteration: int, settings: SigaLossSettings) -> dict[str, torch.Tensor]:
    """The SIGA losses as they add up in the total (SPEC §4.6): L_seg, λ·L_align, L_low and L_mid, each times
    the warm-up factor."""
    ramp = warmup_factor(iteration, settings)
    return {"L_seg": seg * ramp, "λ·L_align": alignment_weight(iteration, settings) * align * ramp,
            "L_low": glyph_low * ramp, "L_mid": glyph_mid * ramp}


class LossResult(NamedTuple):
    """The training loss and every term that makes it up, by name (``ce_<head>`` per recognition head, and
    for SIGA ``seg``, ``align`` with ``align_ce``/``align_orthogonality``, ``glyph_low``/``glyph_mid`` with
    their ``_ce``/``_dice`` parts), for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def siga_term_dict(siga: SigaLossTerms) -> dict[str, torch.Tensor]:
    """The SIGA terms of SPEC §4.2–4.5 by their logged names."""
    terms = {"seg": siga.seg, "align": siga.align.total, "align_ce": siga.align.cross_entropy,
             "align_orthogonality": siga.align.orthogonality}
    for scale, glyph in (("low", siga.low), ("mid", siga.mid)):
        terms.update({f"glyph_{scale}": glyph.total, f"glyph_{scale}_ce": glyph.cross_entropy,
                      f"glyph_{scale}_dice": glyph.dice})
    return terms


def training_loss(output: RecognitionOutput | SigaOutput, targets: torch.Tensor, lengths: torch.Tensor,
                  iteration: int, settings: SigaLossSettings, num_steps: int,
                  recognition_weight: float = 1.0, masks: torch.Tensor | None = None) -> LossResult:
    """The total loss: a CE per recognition head and, for SIGA, the SIGA losses (SPEC §4.6).

    L_seg's target is the TPS-warped mask, or the input ``masks`` [B,1,H,W] when
    ``settings.warped_mask_target`` is off (the official SIGA_S, bug S1).

    ``num_steps`` = S: the attention maps of a step-truncated batch are padded back to S columns for the
    glyph pseudo-labels (the padded steps are past every label and get no label). ``recognition_weight``
    scales the CE terms in the total (under DDP: this rank's share of the global token count, so that the
    averaged gradient is that of the global token mean).
    """
    auxiliary = output.auxiliary_logits if isinstance(output, SigaOutput) else {}
    terms = {f"ce_{name}": recognition_loss(logits, targets, lengths) for name, logits in auxiliary.items()}
    terms["ce_final"] = recognition_loss(output.logits, targets, lengths)
    total = torch.stack(list(terms.values())).sum() * recognition_weight
    if not isinstance(output, SigaOutput):
        return LossResult(total, terms)
    attention = F.pad(output.attention, (0, num_steps - output.attention.shape[2]))
    target_mask = output.rectified_mask
    if not settings.warped_mask_target:
        if masks is None:
            raise ValueError("settings.warped_mask_target is off: pass the input masks to training_loss")
        target_mask = masks.to(output.seg_logits.dtype)
    siga = siga_loss_terms(target_mask, output.seg_logits, attention, output.glyph_logits_low,
                           output.glyph_logits_mid, lengths, iteration, settings)
    return LossResult(total + siga.total, {**terms, **siga_term_dict(siga)})
