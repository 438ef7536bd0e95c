"""The run configuration: one dataclass whose defaults are the paper's SIGA_R / TRBA setting, and named presets.

Every constant lives here once. The SIGA loss constants are the nested ``siga`` field, a
``modules.losses.SigaLossSettings`` whose defaults are the paper's (SPEC §4, §7 #28); the losses read
that object and nothing else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from modules.losses import SigaLossSettings


#: where SIGA_R predicts the text segmentation: at the input size (the paper) or at half of it
SEG_RESOLUTIONS = ("full", "half")
#: what the glyph attention network sees along the word before it assigns pixels to character slots: only its
#: convolutions' receptive field (the paper) or also a BiLSTM across the columns (ours)
GLYPH_CONTEXTS = ("none", "columns")


@dataclass
class Config:
    """Every model, data and optimisation setting. The defaults are the paper's SIGA_R/TRBA configuration
    (SPEC §1–§5; batch 320 per process × 2 processes, 160 000 iterations), i.e. the ``paper`` preset."""

    model: str = "TRBA"
    charset: str = "36"  # "36", "94" or a path to a charset file (one character per line)
    token_layout: str = "dtrb"  # "dtrb": EOS 0, chars 1..n, SOS n+1; "mgp": [GO] 0 (start/pad), [s] 1, chars 2..n+1
    sensitive: bool = False  # case-sensitive labels (charset 94 by default when set)
    max_label_length: int = 25  # N_max; decoding steps S = N_max + 1
    img_h: int = 32
    img_w: int = 128
    # architecture widths
    num_fiducial: int = 20
    tps_channels: tuple[int, ...] = (64, 128, 256, 512)
    tps_fc: int = 256
    backbone_channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512)  # stem, layer1..layer5 (6, 7 = last)
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 6, 3, 2, 1)  # layer1..layer7
    hidden_size: int = 256
    glyph_channels: int = 128  # width of the glyph attention network's U-Net decoder (SPEC §3.5)
    # SVTR backbone of SIGA_S / TSBA (SPEC_SIGA_S §3.2); unused by the ResNet models
    svtr_dims: tuple[int, ...] = (192, 256, 512)
    svtr_depths: tuple[int, ...] = (3, 9, 9)
    svtr_heads: tuple[int, ...] = (6, 8, 16)
    svtr_local_blocks: int = 10  # the first blocks mix locally, the rest globally
    svtr_local_window: tuple[int, int] = (7, 11)
    svtr_out_channels: int = 384  # width of V and of SIGA_S's final generator
    # ViT backbone of SIGA_T / VITBA (SPEC_SIGA_T §3.1–3.3); unused by the other models
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    vit_patch: int = 4
    vit_mlp_ratio: float = 4.0
    vit_taps: tuple[int, ...] = (2, 4, 6, 8)  # 1-based blocks whose LayerNorm'd tokens feed the glyph head
    vit_tail_channels: int = 512  # width of the ResNet tail that turns the last tokens into the sequence X
    drop_path_rate: float = 0.1
    dropout: float = 0.3  # on the glyph sequences and the final projection (SPEC §3.10)
    seg_resolution: str = "full"  # SIGA_R's segmentation branch: "full" (paper) or "half" (ours, cheaper on CPUs)
    glyph_context: str = "none"  # "columns" (ours): a BiLSTM across the glyph network's mid-stage columns
    siga: SigaLossSettings = field(default_factory=SigaLossSettings)  # the SIGA loss constants (SPEC §4)
    freeze_tps: bool = False  # TPS excluded from training (set by --tps_from, the paper's two-stage recipe)
    freeze_tps_bn: bool = False  # keep the (frozen) TPS's BatchNorm statistics fixed in training (SPEC §7 #7)
    tps_stage_iters: int = 0  # >0: train the glyph-free baseline this long first and reuse its TPS frozen (ours)
    # with tps_stage_iters: the stage is the first tps_stage_iters steps of this run's own schedule, and the SIGA
    # model continues that schedule from there with every tensor it shares with the baseline (ours, for CPU budgets)
    stage_handover: bool = False
    # optimisation (SPEC §5.2; SIGA_S: SPEC_SIGA_S §5.2)
    batch_size: int = 320  # per process; the paper's global batch is 2 × 320
    num_iter: int = 160000
    optimizer: str = "adam"  # "adam", "adamw" or "adadelta"
    lr: float = 4.5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    rho: float = 0.95  # Adadelta
    weight_decay: float = 0.0  # AdamW only
    schedule: str = "one_cycle"  # "one_cycle", "warmup_cosine" or "cosine"
    div_factor: float = 20.0  # one_cycle
    final_div_factor: float = 1000.0  # one_cycle
    pct_start: float = 0.3  # one_cycle
    warmup_fraction: float = 0.2  # warmup_cosine: linear warm-up over this share of num_iter
    min_lr: float = 1e-7  # warmup_cosine, cosine: the cosine's floor
    grad_clip: float | None = 5.0  # gradient-norm clipping; None: no clipping
    seed: int = 111
    # data
    normalize_images: bool = True  # ImageNet mean/std (SIGA_R/S); SIGA_T reads images in [0, 1]
    data_pipeline: str = "original"  # "original" (SPEC §1) or "resized" (SPEC_SIGA_T §1.2–1.3)
    augment: bool = True
    aug_mode: str = "sample"  # "sample" (per-sample draw) or "fixed" (official once-per-process quirk)
    workers: int = 12
    curriculum_iters: int = 0  # the first N iterations read the curriculum data (plain crops), then the train data
    valid_interval: int = 1000
    save_interval: int = 20000  # periodic snapshots iter_<N>.pth (SPEC §5.5)
    eval_batch_size: int = 256

    @property
    def num_steps(self) -> int:
        """Decoding steps S = N_max + 1 (characters plus EOS)."""
        return self.max_label_length + 1

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.img_h, self.img_w

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Rebuild from a checkpoint's dict, ignoring keys this version does not know. Checkpoints written
        before the loss constants moved into ``siga`` keep theirs (LEGACY_LOSS_KEYS)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items() if key in names and key != "siga"}
        siga = {key: tuple(value) if isinstance(value, list) else value
                for key, value in (values.get("siga") or {}).items()}
        siga.update({new: values[old] for old, new in LEGACY_LOSS_KEYS.items() if old in values})
        return cls(**kept, siga=SigaLossSettings(**siga))


#: flat Config names of the SIGA loss constants in checkpoints written before ``Config.siga`` existed
LEGACY_LOSS_KEYS = {name: name for name in ("mask_threshold", "foreground_threshold", "glyph_foreground_threshold",
                                             "glyph_attention_threshold", "sharpen_slope", "sharpen_offset",
                                             "hard_sample_threshold", "align_weight_early", "align_weight_late")}
LEGACY_LOSS_KEYS["siga_switch_iter"] = "switch_iter"

#: SIGA_S's glyph-CE class weights: background, then character slots 1..26 (SPEC_SIGA_S §4.4)
SIGA_S_GLYPH_CLASS_WEIGHTS = (1.000, 1.000, 1.013, 1.058, 1.323, 1.564, 1.831, 2.210, 2.859, 2.859, 2.859, 2.859,
                              2.859, 2.859, 2.210, 1.831, 1.564, 1.323, 1.058, 1.013, 1.000, 1.000, 1.000, 1.000,
                              1.000, 1.000, 1.000)

#: what a model changes in every preset (applied first): SIGA_S's input size, recipe (SPEC_SIGA_S §5: AdamW, 2 of
#: 10 epochs linear warm-up then cosine to 1e-7, no clipping) and loss constants (§4: ψ σ(85(a − 0.08)), λ 0.1
#: throughout, class-weighted glyph CE, the input mask in L_seg)
SVTR_RECIPE: dict[str, Any] = dict(
    img_h=48, img_w=160, batch_size=288, num_iter=552_000,  # 10 epochs of MJ+ST at batch 288
    optimizer="adamw", lr=5e-4, beta2=0.99, eps=8e-8, weight_decay=0.05, schedule="warmup_cosine",
    warmup_fraction=0.2, min_lr=1e-7, grad_clip=None)
#: SIGA_T's data, labels and recipe (SPEC_SIGA_T §1–§2, §5): 32×128 images in [0, 1] resized before masking and
#: RandAugment, the MGP-STR token layout, Adadelta 1.0 with cosine annealing to 0 over num_iter, clip 5, batch 48
#: per process × 3, 1.4 M iterations, seed 226
VIT_RECIPE: dict[str, Any] = dict(
    img_h=32, img_w=128, token_layout="mgp", normalize_images=False, data_pipeline="resized", drop_path_rate=0.0,
    batch_size=48, num_iter=1_400_000, optimizer="adadelta", lr=1.0, rho=0.95, eps=1e-8, schedule="cosine",
    min_lr=0.0, grad_clip=5.0, seed=226)
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "TSBA": SVTR_RECIPE,
    "VITBA": VIT_RECIPE,
    # §4: the SIGA_R losses with a constant alignment weight 0.15 (the 20 k switch then only changes L_seg)
    "SIGA_T": dict(**VIT_RECIPE, siga=dict(align_weight_early=0.15, align_weight_late=0.15)),
    "SIGA_S": dict(**SVTR_RECIPE,
                   siga=dict(sharpen_slope=85.0, sharpen_offset=0.08, align_weight_early=0.1, align_weight_late=0.1,
                             glyph_class_weights=SIGA_S_GLYPH_CLASS_WEIGHTS, warped_mask_target=False)),
}

#: the paper's architecture at reduced widths, sized for a 2-core CPU (the demo and cpu presets)
CPU_NETWORK: dict[str, Any] = dict(
    tps_channels=(16, 32, 64, 128), tps_fc=64, backbone_channels=(16, 16, 32, 64, 96, 128),
    backbone_blocks=(1, 1, 1, 1, 1, 1, 1), hidden_size=96, glyph_channels=32)

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's SIGA_R / TRBA configuration: the Config defaults (SPEC §5.1).
    "paper": {},
    # Under 15 minutes on a 2-core CPU, data generation included: 2 400 steps on plain crops (the attention decoder
    # aligns on them) with the learning rate peaking at the switch, then 1 100 steps on the engine's full variety
    # (README "Real words after training on the built-in data").
    "demo": dict(
        **CPU_NETWORK, batch_size=64, num_iter=3500, lr=1e-3, pct_start=0.686, augment=False, workers=1,
        valid_interval=500, curriculum_iters=2400,
        siga=dict(switch_iter=500),  # the paper switches at 1/8 of its schedule
    ),
    # A longer run on a 2-core CPU: the same shape over 20 000 steps, 3 000 of them on plain crops.
    "cpu": dict(
        **CPU_NETWORK, batch_size=64, num_iter=20000, lr=1e-3, pct_start=0.15, augment=False, workers=1,
        valid_interval=1000, save_interval=5000, curriculum_iters=3000,
        siga=dict(switch_iter=2500),
    ),
    # Smallest working network, for tests.
    "tiny": dict(
        tps_channels=(4, 8, 8, 16), tps_fc=16, backbone_channels=(8, 8, 8, 16, 16, 32),
        backbone_blocks=(1, 1, 1, 1, 1, 1, 1), hidden_size=32, glyph_channels=8, batch_size=8, num_iter=20,
        workers=0, valid_interval=10, save_interval=10, eval_batch_size=16,
    ),
}


#: SVTR at reduced sizes for the SVTR models' demo and tiny presets (head width 32 as SVTR-L's, applied after
#: the preset, before explicit overrides)
SVTR_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(svtr_dims=(64, 96, 128), svtr_depths=(1, 2, 2), svtr_heads=(2, 3, 4), svtr_local_blocks=3,
                 svtr_out_channels=128),
    "tiny": dict(svtr_dims=(32, 32, 64), svtr_depths=(1, 1, 1), svtr_heads=(1, 1, 2), svtr_local_blocks=2,
                 svtr_out_channels=32),
}
#: the ViT at reduced sizes for SIGA_T's and VITBA's demo and tiny presets
VIT_PRESETS: dict[str, dict[str, Any]] = {
    # ViT-Tiny-like width halved (96, 3 heads of 32) over 6 blocks with the taps at the official relative depths,
    # trained like the other demos (Adam + one-cycle, 1e-3): Adadelta from scratch learns slower at this budget
    "demo": dict(vit_dim=96, vit_depth=6, vit_heads=3, vit_taps=(1, 2, 3, 4), vit_tail_channels=128,
                 optimizer="adam", schedule="one_cycle", beta2=0.999),
    "tiny": dict(vit_dim=32, vit_depth=4, vit_heads=2, vit_taps=(1, 2, 3, 4), vit_tail_channels=32),
}
#: SIGA_R in the CPU presets: two stages in one run (TRBA first, whose TPS SIGA_R then reads frozen), the
#: segmentation branch at half resolution (docs/training_cost.md) and the glyph network's column context, without
#: which its maps do not localise characters at these budgets. The demo hands over at the switch to varied
#: crops: TRBA trains the demo schedule's 2 400 plain-crop steps, SIGA_R the remaining 1 100 from all of its
#: tensors (docs/siga_r_demo.md)
SIGA_R_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(seg_resolution="half", tps_stage_iters=2400, stage_handover=True, glyph_context="columns"),
    "cpu": dict(seg_resolution="half", tps_stage_iters=3000, glyph_context="columns"),
}
MODEL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    **{(model, preset): values for model in ("TSBA", "SIGA_S") for preset, values in SVTR_PRESETS.items()},
    **{(model, preset): values for model in ("VITBA", "SIGA_T") for preset, values in VIT_PRESETS.items()},
    **{("SIGA_R", preset): values for preset, values in SIGA_R_PRESETS.items()}}


def make_config(preset: str = "paper", **overrides: Any) -> Config:
    """A Config from the model's defaults, a named preset, the model's version of that preset and explicit
    overrides, in that order (``None`` values are ignored); ``siga`` entries are dicts of SigaLossSettings
    fields, merged in the same order."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    model = overrides.get("model") or PRESETS[preset].get("model") or Config.model
    layers = [MODEL_DEFAULTS.get(model, {}), PRESETS[preset], MODEL_PRESETS.get((model, preset), {}),
              {k: v for k, v in overrides.items() if v is not None}]
    values = {key: value for layer in layers for key, value in layer.items() if key != "siga"}
    siga = {key: value for layer in layers for key, value in (layer.get("siga") or {}).items()}
    return Config(**values, siga=SigaLossSettings(**siga))
