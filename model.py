"""Recognition models as compositions of ``modules/``: ``build_model(config)`` returns one of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from modules.backbone import ResNet45
from modules.decoders import AttentionDecoder
from modules.sequence import bilstm_stack
from modules.transformation import TPSRectifier
from utils import Config, Tokenizer


@dataclass
class ModelOutput:
    """What a forward pass returns.

    ``logits`` [B, S, C] is the model's prediction (teacher-forced when ``text_in`` was given, greedy
    otherwise); ``attention`` [B, T, S] the 1-D decoder's attention maps; ``rectified_mask``
    [B, 1, H, W] the TPS-warped mask when a mask was passed in.
    """

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    rectified_mask: torch.Tensor | None = None


class TRBA(nn.Module):
    """TPS + ResNet-45 + BiLSTM×2 + attention decoder (the baseline SIGA_R extends)."""

    needs_masks = False

    def __init__(self, config: Config, num_classes: int):
        super().__init__()
        self.transformation = TPSRectifier(config.num_fiducial, config.img_h, config.img_w, 3,
                                           config.tps_channels, config.tps_fc)
        self.backbone = ResNet45(3, config.backbone_channels, config.backbone_blocks)
        self.sequence = bilstm_stack(self.backbone.out_channels, config.hidden_size)
        self.decoder = AttentionDecoder(config.hidden_size, config.hidden_size, num_classes, config.num_steps)

    @staticmethod
    def visual_sequence(v: torch.Tensor) -> torch.Tensor:
        """V [B, C, h, W] → X [B, W, C] (average over the height, SPEC §3.3)."""
        return v.mean(2).transpose(1, 2)

    def forward(self, images: torch.Tensor, text_in: torch.Tensor | None = None,
                masks: torch.Tensor | None = None) -> ModelOutput:
        """images [B, 3, H, W]; ``text_in`` [B, S] for teacher forcing, None for greedy decoding."""
        rectified, rectified_mask = self.transformation(images, masks)
        features = self.backbone(rectified)
        contextual = self.sequence(self.visual_sequence(features.v))
        decoded = self.decoder(contextual, text_in)
        return ModelOutput(decoded.logits, decoded.attention, rectified_mask)


MODELS: dict[str, type[nn.Module]] = {"TRBA": TRBA}


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


def build_model(config: Config, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Instantiate ``config.model`` for the tokenizer's class count, with the official initialisation."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose from {sorted(MODELS)}")
    tokenizer = tokenizer or Tokenizer.from_config(config)
    model = MODELS[config.model](config, tokenizer.num_classes)
    init_weights(model)
    return model
