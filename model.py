"""Recognition models as compositions of ``modules/``, and the registry ``build_model(config, tokenizer)``.

A model is an optional rectifier, a backbone (``BackboneFeatures``: the visual sequence and the feature maps
for a glyph network) and heads: a BiLSTM + attention decoder for the glyph-free baselines, or a glyph
attention network + the shared ``SigaHeads`` for SIGA. A new backbone adds one builder to ``MODELS``.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn

from config import GLYPH_CONTEXTS, SEG_RESOLUTIONS, Config
from modules.decoders import AttentionDecoder
from modules.glyph_attention import GlyphAttentionNetwork, SvtrGlyphAttentionNetwork, ViTGlyphAttentionNetwork
from modules.outputs import GlyphTrace, Prediction, RecognitionOutput, SigaOutput, Trace
from modules.resnet import ResNet45
from modules.sequence import bilstm_stack
from modules.siga import SigaHeads
from modules.svtr import SVTRLarge
from modules.transformation import NoRectifier, TPSRectifier
from modules.vit import ViTBackbone
from tokenizer import Tokenizer


class AttentionRecognizer(nn.Module):
    """Rectifier → backbone → BiLSTM×2 → attention decoder (TRBA: TPS + ResNet-45, the baseline of SIGA_R)."""

    needs_masks = False

    def __init__(self, transformation: nn.Module, backbone: nn.Module, sequence: nn.Module, decoder: AttentionDecoder):
        super().__init__()
        self.transformation, self.backbone, self.sequence, self.decoder = transformation, backbone, sequence, decoder

    def forward(self, images: torch.Tensor, text_in: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                early_stop: bool = True, max_steps: int | None = None) -> Prediction | RecognitionOutput:
        """images [B, 3, H, W]; ``text_in`` [B, S] for teacher forcing, None for greedy decoding (at most
        ``max_steps`` steps, stopping when every sequence has ended unless ``early_stop`` is False).
        ``masks`` is accepted for a uniform call and unused."""
        rectified, _ = self.transformation(images)
        contextual = self.sequence(self.backbone(rectified).sequence)
        decoded = self.decoder(contextual, text_in, early_stop=early_stop, max_steps=max_steps)
        if text_in is None:
            return Prediction(decoded.logits, {})
        return RecognitionOutput(decoded.logits, decoded.attention)

    def trace(self, images: torch.Tensor, max_steps: int | None = None) -> Trace:
        """Greedy decoding as ``forward(images)`` (same logits) that also returns the attention decoder's α and
        the rectifier's sampling grid, to locate what each step read (``char_attention``)."""
        rectified, grid = self.transformation.rectify_with_grid(images)
        contextual = self.sequence(self.backbone(rectified).sequence)
        decoded = self.decoder(contextual, max_steps=max_steps)
        return Trace(decoded.logits, decoded.attention, grid)


class GlyphAttentionRecognizer(nn.Module):
    """Self-supervised implicit glyph attention (SPEC §3.0): rectifier → backbone → glyph attention network
    and SigaHeads.

    Teacher forcing (``text_in`` given) runs every branch the losses need and warps ``masks`` with the
    image's grid; greedy decoding runs only what the final prediction needs (§3.10): the glyph network
    without its segmentation branch, H2, the fusion decoders and the final generator in lockstep.
    """

    needs_masks = True

    def __init__(self, transformation: nn.Module, backbone: nn.Module, glyph: nn.Module, siga: SigaHeads):
        super().__init__()
        self.transformation, self.backbone, self.glyph, self.siga = transformation, backbone, glyph, siga

    def forward(self, images: torch.Tensor, text_in: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                early_stop: bool = True, max_steps: int | None = None) -> Prediction | SigaOutput:
        """images [B, 3, H, W]; with ``text_in`` [B, S] also the text masks [B, 1, H, W] the losses need."""
        if text_in is None:
            rectified, _ = self.transformation(images)
            features = self.backbone(rectified)
            glyph = self.glyph(features.levels, segmentation=False)
            return Prediction(*self.siga.greedy(features.sequence, glyph, early_stop, max_steps))
        if masks is None:
            raise ValueError("SIGA's teacher-forced (training) path needs the text masks: pass masks")
        rectified, rectified_mask = self.transformation(images, masks)
        features = self.backbone(rectified)
        glyph = self.glyph(features.levels, segmentation=True)
        logits, attention, auxiliary = self.siga.teacher_forced(features.sequence, glyph, text_in)
        return SigaOutput(logits, attention, rectified_mask, auxiliary, glyph.seg_logits, glyph.logits_low,
                          glyph.logits_mid)

    def trace(self, images: torch.Tensor, max_steps: int | None = None) -> GlyphTrace:
        """Greedy decoding as ``forward(images)`` (same logits) that also returns both fusion decoders' α, the
        glyph logits and the rectifier's sampling grid, to locate what each step read (``char_attention``)."""
        rectified, grid = self.transformation.rectify_with_grid(images)
        features = self.backbone(rectified)
        glyph = self.glyph(features.levels, segmentation=False)
        logits, _, (first, second) = self.siga.traced_greedy(features.sequence, glyph, max_steps)
        return GlyphTrace(logits, first, grid, second, glyph.logits_low, glyph.logits_mid)


def tps(config: Config) -> TPSRectifier:
    return TPSRectifier(config.num_fiducial, config.img_h, config.img_w, 3, config.tps_channels, config.tps_fc)


def resnet45(config: Config) -> ResNet45:
    return ResNet45(3, config.backbone_channels, config.backbone_blocks)


def svtr(config: Config) -> SVTRLarge:
    total = sum(config.svtr_depths)
    mixers = ("Local",) * config.svtr_local_blocks + ("Global",) * (total - config.svtr_local_blocks)
    return SVTRLarge(img_size=config.image_size, embed_dims=config.svtr_dims, depths=config.svtr_depths,
                     num_heads=config.svtr_heads, mixers=mixers, local_window=config.svtr_local_window,
                     drop_path_rate=config.drop_path_rate, out_channels=config.svtr_out_channels)


def vit(config: Config, taps: bool = True) -> ViTBackbone:
    """The ViT backbone with the config's taps (``taps=False``: none, for the glyph-free baseline)."""
    return ViTBackbone(config.image_size, config.vit_patch, config.vit_dim, config.vit_depth, config.vit_heads,
                       config.vit_mlp_ratio, config.vit_taps if taps else (), config.vit_tail_channels,
                       config.drop_path_rate)


def attention_recognizer(config: Config, tokenizer: Tokenizer, backbone: nn.Module,
                         transformation: nn.Module | None = None) -> AttentionRecognizer:
    """Rectifier (default TPS) + ``backbone`` + BiLSTM×2 + attention decoder."""
    hidden = config.hidden_size
    decoder = AttentionDecoder(hidden, hidden, tokenizer.num_classes, config.num_steps, tokenizer.sos_id,
                               tokenizer.eos_id, num_embeddings=tokenizer.num_embeddings)
    return AttentionRecognizer(transformation or tps(config), backbone, bilstm_stack(backbone.out_channels, hidden),
                               decoder)


def glyph_recognizer(config: Config, tokenizer: Tokenizer, backbone: nn.Module, glyph_network: Callable[..., nn.Module],
                     final_size: int, transformation: nn.Module | None = None,
                     mid_first: bool = False) -> GlyphAttentionRecognizer:
    """Rectifier (default TPS) + ``backbone`` + a glyph attention network built by ``glyph_network`` on the
    backbone's levels + the SIGA heads with a ``final_size``-wide final generator."""
    hidden = config.hidden_size
    glyph = glyph_network(backbone.feature_channels, config.max_label_length + 2, config.glyph_channels, hidden)
    siga = SigaHeads(backbone.out_channels, hidden, final_size, tokenizer.num_classes, config.num_steps,
                     tokenizer.sos_id, tokenizer.eos_id, config.dropout, mid_first, tokenizer.num_embeddings)
    return GlyphAttentionRecognizer(transformation or tps(config), backbone, glyph, siga)


def build_trba(config: Config, tokenizer: Tokenizer) -> AttentionRecognizer:
    """TPS + ResNet-45 + BiLSTM×2 + attention decoder (SIGA_R's baseline)."""
    return attention_recognizer(config, tokenizer, resnet45(config))


def build_siga_r(config: Config, tokenizer: Tokenizer) -> GlyphAttentionRecognizer:
    """TRBA's TPS and ResNet-45 with the glyph attention network on F0/F1/F2 and the SIGA heads (SPEC §3)."""
    network = functools.partial(GlyphAttentionNetwork, half_resolution_segmentation=config.seg_resolution == "half",
                                column_context=config.glyph_context == "columns")
    return glyph_recognizer(config, tokenizer, resnet45(config), network, 2 * config.hidden_size)


def build_tsba(config: Config, tokenizer: Tokenizer) -> AttentionRecognizer:
    """TPS + SVTR-Large + BiLSTM×2 + attention decoder: SIGA_S without its glyph part (its baseline)."""
    return attention_recognizer(config, tokenizer, svtr(config))


def build_siga_s(config: Config, tokenizer: Tokenizer) -> GlyphAttentionRecognizer:
    """TPS + SVTR-Large with SIGA_S's glyph attention network (the extra unpooling stage) and the SIGA heads,
    whose final width is SVTR's output width (SPEC_SIGA_S §3)."""
    network = functools.partial(SvtrGlyphAttentionNetwork, column_context=config.glyph_context == "columns")
    return glyph_recognizer(config, tokenizer, svtr(config), network, config.svtr_out_channels)


def build_vitba(config: Config, tokenizer: Tokenizer) -> AttentionRecognizer:
    """ViT + its ResNet tail + BiLSTM×2 + attention decoder, no rectifier: SIGA_T without its glyph part (the
    glyph-free baseline for equal-budget comparisons)."""
    return attention_recognizer(config, tokenizer, vit(config, taps=False), NoRectifier())


def build_siga_t(config: Config, tokenizer: Tokenizer) -> GlyphAttentionRecognizer:
    """ViT with its taps and tail, SIGA_T's glyph attention head and the SIGA heads with the mid-scale glyph
    sequence in the first slot (SPEC_SIGA_T §3); no rectifier."""
    network = functools.partial(ViTGlyphAttentionNetwork, column_context=config.glyph_context == "columns")
    return glyph_recognizer(config, tokenizer, vit(config), network, 2 * config.hidden_size, NoRectifier(),
                            mid_first=True)


#: model name → builder; a model is fully described by (config, tokenizer)
MODELS: dict[str, Callable[[Config, Tokenizer], nn.Module]] = {
    "TRBA": build_trba, "SIGA_R": build_siga_r, "TSBA": build_tsba, "SIGA_S": build_siga_s,
    "VITBA": build_vitba, "SIGA_T": build_siga_t}


def init_weights(model: nn.Module) -> None:
    """The official initialisation (SPEC §5.3): biases 0, ≥2-D weights Kaiming-normal (fan_in),
    1-D weights 1; ``localization_fc2`` keeps its zero weight and RARE bias."""
    for name, parameter in model.named_parameters():
        if "localization_fc2" in name:
            continue
        with torch.no_grad():
            if "bias" in name:
                parameter.zero_()
            elif "weight" in name:
                if parameter.dim() >= 2:
                    nn.init.kaiming_normal_(parameter)
                else:
                    parameter.fill_(1.0)


def init_vit_model_weights(model: nn.Module) -> None:
    """SIGA_T's official initialisation (SPEC_SIGA_T §3.9), no global loop: timm's ViT init (as built) with the
    class token truncated-normal (std 0.02, timm 0.4.12); every plain convolution after the ViT He-normal with
    fan-out, N(0, 2 / (k_h·k_w·C_out)); BatchNorm 1/0; everything else PyTorch's default."""
    nn.init.trunc_normal_(model.backbone.vit.cls_token, std=0.02)
    convs = [m for part in (model.backbone.tail, getattr(model, "glyph", None)) if part is not None
             for m in part.modules() if type(m) is nn.Conv2d]
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


#: models whose official code does not run SPEC §5.3's global initialisation loop
OWN_INITIALISATION = {"VITBA": init_vit_model_weights, "SIGA_T": init_vit_model_weights}


def build_model(config: Config, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Instantiate ``config.model`` for the tokenizer's token layout, with the official initialisation."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose from {sorted(MODELS)}")
    if config.seg_resolution not in SEG_RESOLUTIONS:
        raise ValueError(f"seg_resolution must be one of {SEG_RESOLUTIONS}, got {config.seg_resolution!r}")
    if config.seg_resolution != "full" and config.model != "SIGA_R":
        raise ValueError(f"seg_resolution {config.seg_resolution!r} is built for SIGA_R only, not {config.model}")
    if config.glyph_context not in GLYPH_CONTEXTS:
        raise ValueError(f"glyph_context must be one of {GLYPH_CONTEXTS}, got {config.glyph_context!r}")
    if config.glyph_context != "none" and not config.model.startswith("SIGA"):
        raise ValueError(f"glyph_context {config.glyph_context!r} needs a glyph attention network, "
                         f"which {config.model} has not")
    tokenizer = tokenizer or Tokenizer.from_config(config)
    model = MODELS[config.model](config, tokenizer)
    OWN_INITIALISATION.get(config.model, init_weights)(model)
    if config.freeze_tps:
        if not isinstance(model.transformation, TPSRectifier):
            raise ValueError(f"{config.model} has no TPS rectifier to load or freeze (--tps_from)")
        model.transformation.set_identity()  # --tps_from's weights replace it after the build
        model.transformation.freeze(statistics=config.freeze_tps_bn)
    return model
