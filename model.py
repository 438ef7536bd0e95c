"""Recognition models as compositions of ``modules/``: ``build_model(config)`` returns one of them.

``TRBA`` is the baseline; ``SIGA_R`` adds the glyph attention network and its decoders (SPEC §3).
The authors' released SIGA_R checkpoint loads through ``load_official`` and one explicit name map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from modules.backbone import ResNet45
from modules.decoders import AttentionDecoder, FusionDecoder, PositionAlignedDecoder, greedy_steps
from modules.fusion import GatedBimodal
from modules.glyph_attention import GlyphAttentionNetwork
from modules.sequence import bilstm_stack
from modules.transformation import TPSRectifier
from utils import Config, Tokenizer, load_checkpoint, make_config, read_checkpoint_file


@dataclass
class ModelOutput:
    """What a forward pass returns.

    ``logits`` [B, S, C] is the model's prediction (teacher-forced when ``text_in`` was given, greedy
    otherwise); ``attention`` [B, T, S] the 1-D decoder's attention maps; ``rectified_mask``
    [B, 1, H, W] the TPS-warped mask when a mask was passed in. SIGA_R's teacher-forced pass also fills
    ``auxiliary_logits`` (the other six recognition heads, by name), ``seg_logits`` [B, 2, H, W] and the
    glyph logits [B, K, H/2, W/2] / [B, K, H/4, W/4]; its greedy pass the two fusion decoders' logits.
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    rectified_mask: torch.Tensor | None = None
    auxiliary_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    seg_logits: torch.Tensor | None = None
    glyph_logits_low: torch.Tensor | None = None
    glyph_logits_mid: torch.Tensor | None = None

    def to_float32(self) -> "ModelOutput":
        """A copy with every tensor in float32, so that the losses of an autocast forward run at full precision."""
        def cast(value):
            return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

        return ModelOutput(cast(self.logits), cast(self.attention), cast(self.rectified_mask),
                           {name: cast(value) for name, value in self.auxiliary_logits.items()},
                           cast(self.seg_logits), cast(self.glyph_logits_low), cast(self.glyph_logits_mid))


def visual_sequence(v: torch.Tensor) -> torch.Tensor:
    """V [B, C, h, W] → X [B, W, C] (average over the height, SPEC §3.3)."""
    return v.mean(2).transpose(1, 2)


def make_rectifier(config: Config) -> TPSRectifier:
    return TPSRectifier(config.num_fiducial, config.img_h, config.img_w, 3, config.tps_channels, config.tps_fc)


class TRBA(nn.Module):
    """TPS + ResNet-45 + BiLSTM×2 + attention decoder (the baseline SIGA_R extends)."""

    needs_masks = False

    def __init__(self, config: Config, num_classes: int):
        super().__init__()
        self.transformation = make_rectifier(config)
        self.backbone = ResNet45(3, config.backbone_channels, config.backbone_blocks)
        self.sequence = bilstm_stack(self.backbone.out_channels, config.hidden_size)
        self.decoder = AttentionDecoder(config.hidden_size, config.hidden_size, num_classes, config.num_steps)

    visual_sequence = staticmethod(visual_sequence)

    def forward(self, images: torch.Tensor, text_in: torch.Tensor | None = None,
                masks: torch.Tensor | None = None, early_stop: bool = True, max_steps: int | None = None) -> ModelOutput:
        """images [B, 3, H, W]; ``text_in`` [B, S] for teacher forcing, None for greedy decoding (at most
        ``max_steps`` steps, stopping when every sequence has ended unless ``early_stop`` is False)."""
        rectified, rectified_mask = self.transformation(images, masks)
        features = self.backbone(rectified)
        contextual = self.sequence(visual_sequence(features.v))
        decoded = self.decoder(contextual, text_in, early_stop=early_stop, max_steps=max_steps)
        return ModelOutput(decoded.logits, decoded.attention, rectified_mask)


class SIGA_R(nn.Module):
    """Self-supervised implicit glyph attention on a TRBA backbone (SPEC §3.0).

    Training (``text_in`` given) runs every branch the losses need: the 1-D attention branch whose
    attention maps A supervise the glyph maps, model_two's TRBA decoder, the two position-aligned
    heads, the two fusion decoders and the final generator. Greedy decoding runs only what the final
    prediction needs (§3.10): TPS(image) → ResNet-45 → glyph logits/features and H2 → the fusion
    decoders and the final generator in lockstep, stopping when every final sequence has ended.
    """

    needs_masks = True

    def __init__(self, config: Config, num_classes: int):
        super().__init__()
        hidden = config.hidden_size
        steps = config.num_steps
        self.num_steps = steps
        self.sos_id = num_classes
        self.transformation = make_rectifier(config)
        self.backbone = ResNet45(3, config.backbone_channels, config.backbone_blocks)
        width = self.backbone.out_channels
        self.alignment_sequence = bilstm_stack(width, hidden)
        self.alignment_decoder = AttentionDecoder(hidden, hidden, num_classes, steps)
        self.sequence = bilstm_stack(width, hidden)
        self.trba_decoder = AttentionDecoder(hidden, hidden, num_classes, steps)
        self.glyph = GlyphAttentionNetwork(self.backbone.feature_channels, config.max_label_length + 2,
                                           config.glyph_channels, hidden)
        self.position_decoder_low = PositionAlignedDecoder(hidden, hidden, num_classes, hidden)
        self.position_decoder_mid = PositionAlignedDecoder(hidden, hidden, num_classes, hidden)
        self.fusion_decoder_low = FusionDecoder(hidden, hidden, num_classes, steps)
        self.fusion_decoder_mid = FusionDecoder(hidden, hidden, num_classes, steps)
        self.fusion = GatedBimodal(hidden)
        self.projection = nn.Linear(hidden, 2 * hidden)
        self.final_decoder = PositionAlignedDecoder(2 * hidden, 2 * hidden, num_classes, hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, images: torch.Tensor, text_in: torch.Tensor | None = None,
                masks: torch.Tensor | None = None, early_stop: bool = True, max_steps: int | None = None) -> ModelOutput:
        """images [B, 3, H, W], masks [B, 1, H, W] (training); ``text_in`` [B, S] selects teacher forcing,
        None greedy decoding as TRBA's."""
        if text_in is None:
            return self._greedy(images, early_stop, greedy_steps(self.num_steps, max_steps))
        rectified, rectified_mask = self.transformation(images, masks)
        features = self.backbone(rectified)
        x = visual_sequence(features.v)
        one_d = self.alignment_decoder(self.alignment_sequence(x), text_in)
        contextual = self.sequence(x)
        trba = self.trba_decoder(contextual, text_in)
        glyph = self.glyph(features.f0, features.f1, features.f2, segmentation=True)
        glyphs_low, glyphs_mid = self.dropout(glyph.sequence_low), self.dropout(glyph.sequence_mid)
        fusion_low = self.fusion_decoder_low(contextual, text_in, glyphs_low)
        fusion_mid = self.fusion_decoder_mid(contextual, text_in, glyphs_mid)
        complementary = self.dropout(self.projection(self.fusion(fusion_low.fused, fusion_mid.fused)))
        auxiliary = {
            "one_d": one_d.logits, "trba": trba.logits,
            "position_low": self.position_decoder_low(glyphs_low, text_in),
            "position_mid": self.position_decoder_mid(glyphs_mid, text_in),
            "fusion_low": fusion_low.logits, "fusion_mid": fusion_mid.logits,
        }
        return ModelOutput(self.final_decoder(complementary, text_in), one_d.attention, rectified_mask, auxiliary,
                           glyph.seg_logits, glyph.logits_low, glyph.logits_mid)

    def _greedy(self, images: torch.Tensor, early_stop: bool, steps: int) -> ModelOutput:
        """Fusion decoders (each feeding back its own argmax) and the final generator, step by step."""
        rectified, _ = self.transformation(images)
        features = self.backbone(rectified)
        contextual = self.sequence(visual_sequence(features.v))
        glyph = self.glyph(features.f0, features.f1, features.f2, segmentation=False)
        glyphs_low, glyphs_mid = self.dropout(glyph.sequence_low), self.dropout(glyph.sequence_mid)
        decoders = (self.fusion_decoder_low, self.fusion_decoder_mid)
        starts = [decoder.start(contextual) for decoder in decoders]
        states = [state for state, _ in starts]
        batch = images.shape[0]
        sos = torch.full((batch,), self.sos_id, dtype=torch.long, device=images.device)
        tokens, final_token, final_state = [sos, sos], sos, None
        ended = torch.zeros(batch, dtype=torch.bool, device=images.device)
        logits: list[list[torch.Tensor]] = [[], [], []]
        for s in range(steps):
            fused = []
            for i, (decoder, glyphs) in enumerate(zip(decoders, (glyphs_low, glyphs_mid))):
                states[i], step_logits, _, step_fused = decoder.step(states[i], contextual, starts[i][1], tokens[i],
                                                                     glyphs[:, s])
                tokens[i] = step_logits.argmax(1)
                logits[i].append(step_logits)
                fused.append(step_fused)
            complementary = self.dropout(self.projection(self.fusion(*fused)))
            final_state, step_logits = self.final_decoder.step(final_state, complementary, final_token)
            final_token = step_logits.argmax(1)
            logits[2].append(step_logits)
            ended |= final_token == 0
            if early_stop and bool(ended.all()):
                break
        low, mid, final = (torch.stack(step_logits, 1) for step_logits in logits)
        return ModelOutput(final, auxiliary_logits={"fusion_low": low, "fusion_mid": mid})


MODELS: dict[str, type[nn.Module]] = {"TRBA": TRBA, "SIGA_R": SIGA_R}


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


#: Smallest input width of a strided 1×1 convolution whose NHWC weight gradient oneDNN computes correctly
#: on x86 CPUs: below one 16-channel block (AVX-512; 8 on AVX2) its backward writes past a workspace
#: and crashes or returns wrong gradients (uxlfoundation/oneDNN#6035, torch 2.14's oneDNN).
ONEDNN_NHWC_MIN_CHANNELS = 16
MEMORY_FORMATS = ("auto", "on", "off")


def channels_last_blocker(model: nn.Module) -> str | None:
    """The first convolution that cannot be trained in channels_last on a CPU (see
    ONEDNN_NHWC_MIN_CHANNELS), as a message; None when there is none."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and module.in_channels < ONEDNN_NHWC_MIN_CHANNELS):
            return (f"{name}: a strided 1x1 convolution with {module.in_channels} < {ONEDNN_NHWC_MIN_CHANNELS} "
                    "input channels, whose channels_last backward oneDNN gets wrong on CPU")
    return None


def use_channels_last(model: nn.Module, mode: str, device: torch.device, training: bool) -> bool:
    """Convert ``model``'s convolution weights to channels_last (NHWC) according to ``mode`` and say
    whether it did; inputs follow the weights' format inside every convolution.

    ``auto`` converts on CPU, where oneDNN runs NHWC convolutions without reordering to its blocked
    layout and back (measured by bench.py: faster training and inference), unless training would hit
    oneDNN's NHWC bug (``channels_last_blocker``); it leaves CUDA in NCHW, not measured here. ``on``
    converts wherever it is correct and raises ValueError otherwise; ``off`` never converts.
    """
    if mode not in MEMORY_FORMATS:
        raise ValueError(f"memory format mode must be one of {MEMORY_FORMATS}, got {mode!r}")
    blocker = channels_last_blocker(model) if training and device.type == "cpu" else None
    if mode == "on" and blocker:
        raise ValueError(f"channels_last cannot train this model on CPU: {blocker}")
    if mode == "off" or blocker or (mode == "auto" and device.type != "cpu"):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def build_model(config: Config, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Instantiate ``config.model`` for the tokenizer's class count, with the official initialisation."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose from {sorted(MODELS)}")
    tokenizer = tokenizer or Tokenizer.from_config(config)
    model = MODELS[config.model](config, tokenizer.num_classes)
    init_weights(model)
    if config.freeze_tps:
        model.transformation.freeze(statistics=config.freeze_tps_bn)
    return model


# --------------------------------------------------------------------------------------------------
# The authors' checkpoints (SPEC §11)
# --------------------------------------------------------------------------------------------------
_TPS = "model_one.Transformation.LocalizationNetwork."
_RESNET = "model_one.FeatureExtraction.ConvNet."
_GLYPH = "model_two.Attention_Cls."
#: our module prefix → the official one; the longest matching prefix renames a key. Together with
#: OFFICIAL_IGNORED this accounts for every key of the official SIGA_R state_dict.
OFFICIAL_NAME_MAP: dict[str, str] = {
    "transformation.localization.": _TPS,
    "backbone.": _RESNET,
    "backbone.conv6.0.": _RESNET + "conv6.", "backbone.conv6.1.": _RESNET + "bn6.",
    "backbone.conv7_1.0.": _RESNET + "conv7_1.", "backbone.conv7_1.1.": _RESNET + "bn7_1.",
    "backbone.conv7_2.0.": _RESNET + "conv7_2.", "backbone.conv7_2.1.": _RESNET + "bn7_2.",
    "alignment_sequence.": "model_one.SequenceModeling.",
    "alignment_decoder.": "model_one.Prediction.",
    "sequence.": "model_two.SequenceEncoding.",
    "trba_decoder.": "model_two.Prediction.",
    "glyph.reduce_mid.0.": _GLYPH + "conv1.", "glyph.reduce_mid.1.": _GLYPH + "bn1.",
    "glyph.mid_block.0.": _GLYPH + "conv2.", "glyph.mid_block.1.": _GLYPH + "bn2.",
    "glyph.mid_head.": _GLYPH + "cls_Head_Middle.0.",
    "glyph.up_low.": _GLYPH + "unpool2.",
    "glyph.low_merge.0.": _GLYPH + "conv3.", "glyph.low_merge.1.": _GLYPH + "bn3.",
    "glyph.low_block.0.": _GLYPH + "conv4.", "glyph.low_block.1.": _GLYPH + "bn4.",
    "glyph.low_head.": _GLYPH + "cls_Head_Low.0.",
    "glyph.up_seg.": _GLYPH + "unpool3.",
    "glyph.seg_merge.0.": _GLYPH + "conv5.", "glyph.seg_merge.1.": _GLYPH + "bn5.",
    "glyph.seg_head.": _GLYPH + "seg_cls.",
    "glyph.features_low.": _GLYPH + "Low.",
    "glyph.features_mid.": _GLYPH + "Middle.",
    "glyph.sequence_low.": _GLYPH + "lstm.0.",
    "glyph.sequence_mid.": _GLYPH + "lstm.1.",
    "position_decoder_low.": "model_two.FC_Prediction_1.",
    "position_decoder_mid.": "model_two.FC_Prediction_2.",
    "fusion_decoder_low.": "model_two.Iterable_Predicition_one.",
    "fusion_decoder_low.attention_cell.fusion.gate.": "model_two.Iterable_Predicition_one.attention_cell.fusion.W.",
    "fusion_decoder_mid.": "model_two.Iterable_Predicition_two.",
    "fusion_decoder_mid.attention_cell.fusion.gate.": "model_two.Iterable_Predicition_two.attention_cell.fusion.W.",
    "fusion.gate.": "model_two.Fusion.W.",
    "projection.": "model_two.pw.",
    "final_decoder.": "model_two.generator.",
}
#: official keys with no counterpart: the TPS grid constants (recomputed) and the unused downsampler.
OFFICIAL_IGNORED = ("model_one.Transformation.GridGenerator.", "model_two.downsampler.")


def official_name(key: str) -> str:
    """The official state_dict name (without ``module.``) of one of our SIGA_R keys."""
    matches = [prefix for prefix in OFFICIAL_NAME_MAP if key.startswith(prefix)]
    if not matches:
        raise KeyError(f"{key}: no entry in OFFICIAL_NAME_MAP")
    prefix = max(matches, key=len)
    return OFFICIAL_NAME_MAP[prefix] + key[len(prefix):]


def convert_official_state_dict(model: nn.Module, official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state_dict from an official one (keys with or without ``module.``).

    Every official tensor must be used except OFFICIAL_IGNORED; a missing, unexpected or
    differently-shaped key is an error that lists the keys.
    """
    official = {k.removeprefix("module."): v for k, v in official.items()}
    official = {k: v for k, v in official.items() if not k.startswith(OFFICIAL_IGNORED)}
    ours = model.state_dict()
    wanted = {official_name(key): key for key in ours}
    missing = sorted(set(wanted) - set(official))
    unexpected = sorted(set(official) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"official checkpoint does not match SIGA_R: {len(missing)} missing keys {missing[:20]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:20]}")
    converted = {}
    for name, key in wanted.items():
        if official[name].shape != ours[key].shape:
            raise ValueError(f"{name}: official shape {tuple(official[name].shape)}, ours ({key}) {tuple(ours[key].shape)}")
        converted[key] = official[name]
    return converted


def is_official_checkpoint(checkpoint: object) -> bool:
    """The authors' format: ``{'net': state_dict, ...}`` (no config of ours)."""
    return isinstance(checkpoint, dict) and "net" in checkpoint and "config" not in checkpoint


def official_config(state_dict: dict[str, torch.Tensor]) -> Config:
    """The paper SIGA_R config whose class count (1 + charset size) matches an official state_dict:
    the 36-character set, or the case-sensitive 94-character one."""
    key = "model_two.generator.generator.weight"
    weight = state_dict.get(key, state_dict.get("module." + key))
    if weight is None:
        raise ValueError(f"not an official SIGA_R state_dict: {key} is missing")
    num_classes = weight.shape[0]
    for charset, sensitive in (("36", False), ("94", True)):
        config = make_config("paper", model="SIGA_R", charset=charset, sensitive=sensitive)
        if Tokenizer.from_config(config).num_classes == num_classes:
            return config
    raise ValueError(f"official SIGA_R with {num_classes} classes: give its charset explicitly")


def official_model(checkpoint: dict, source: str | Path = "official checkpoint",
                   config: Config | None = None) -> tuple[SIGA_R, Config]:
    """SIGA_R with the weights of an official checkpoint dict (``{'net': state_dict, ...}``)."""
    if not is_official_checkpoint(checkpoint):
        raise ValueError(f"{source}: not an official SIGA_R checkpoint (expected a dict with 'net')")
    config = config or official_config(checkpoint["net"])
    model = build_model(config)
    try:
        model.load_state_dict(convert_official_state_dict(model, checkpoint["net"]))
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    return model, config


def load_official(path: str | Path, config: Config | None = None) -> tuple[SIGA_R, Config]:
    """Build SIGA_R and load the authors' released checkpoint file into it through OFFICIAL_NAME_MAP."""
    return official_model(read_checkpoint_file(path), path, config)


def load_tps(model: nn.Module, checkpoint_path: str | Path) -> None:
    """Copy the TPS localisation network of a checkpoint of this repo (TRBA or SIGA_R) into ``model``
    (SPEC §3.1, §7 #6): every localisation tensor of ``model`` must be present with the same shape.
    Freezing is the config's ``freeze_tps``, so that a resumed run stays frozen."""
    source = load_checkpoint(checkpoint_path)["model"]
    prefix = "transformation.localization."
    target = model.transformation.localization.state_dict()
    found = {key: source.get(prefix + key) for key in target}
    missing = [prefix + key for key, value in found.items() if value is None]
    if missing:
        raise ValueError(f"{checkpoint_path}: missing TPS tensors {missing}")
    for key, value in found.items():
        if value.shape != target[key].shape:
            raise ValueError(f"{checkpoint_path}: {prefix + key} has shape {tuple(value.shape)}, "
                             f"this model expects {tuple(target[key].shape)}")
    model.transformation.localization.load_state_dict(found, strict=True)
