"""Checkpoints: this repo's format (save, load, validate, atomic writes, ``weights_only=True``), rebuilding a model
from a checkpoint, the authors' released checkpoints through one explicit name map per model, ``--tps_from``, a
TPS stage's handover to its SIGA model and the fine-tuning charset check."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from config import Config, make_config
from model import build_model
from tokenizer import Tokenizer

#: this repo's checkpoint format: 2 = SIGA heads under ``siga.`` (1: flat, upgraded on load)
FORMAT_VERSION = 2


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same directory, then rename: never a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file and what is wrong."""


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """One line saying why ``torch.load(weights_only=True)`` failed on ``path``."""
    message = str(error)
    if isinstance(error, EOFError) or "central directory" in message or "zip archive" in message:
        return CheckpointError(f"{path}: truncated or corrupt checkpoint (the file ends before the data it "
                               f"announces; was it copied or written completely?)")
    found = _UNSUPPORTED_GLOBAL.search(message)
    if found:
        return CheckpointError(f"{path}: holds Python objects of type {found.group(1)}, which "
                               f"torch.load(weights_only=True) refuses because unpickling them can run arbitrary "
                               f"code; re-save it with tensors and plain containers only (e.g. model.state_dict())")
    with open(path, "rb") as handle:
        plain_pickle = handle.read(1) == b"\x80"
    what = "a plain Python pickle, not written by torch.save" if plain_pickle else "not a PyTorch checkpoint"
    first_line = message.splitlines()[0][:120] if message else "unreadable"
    return CheckpointError(f"{path}: {what} ({error.__class__.__name__}: {first_line})")


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` of a file that must exist. A missing file is a
    FileNotFoundError; an empty, truncated or foreign file, or one whose pickle needs ``weights_only=False``,
    is a :class:`CheckpointError` naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # torch.load reports foreign bytes as any of these (a text file: KeyError); each becomes one clear line
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError, AttributeError, IndexError,
            UnicodeDecodeError) as error:
        raise _unreadable(path, error) from error


def check_checkpoint(checkpoint: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint`` if it has the format ``train.py`` writes, else a CheckpointError naming ``path``."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this repository (expected keys 'model' and 'config', "
                              f"found {found})")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by this repo (``weights_only=True``)."""
    return check_checkpoint(read_checkpoint_file(path, map_location), path)


def training_state(model: nn.Module, config: Config, tokenizer: Tokenizer, **run_state: Any) -> dict[str, Any]:
    """A checkpoint of this repo: the model's weights, its config and charset, plus the run's state
    (optimizer, scheduler, scaler, iteration, best_accuracy, rng, sampler when train.py writes it)."""
    return {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": config.to_dict(),
            "charset": tokenizer.charset, **run_state}


#: format 1 kept SIGA's heads at the top level of the state_dict; format 2 nests them under ``siga.``
_FORMAT_1_SIGA_HEADS = ("alignment_sequence.", "alignment_decoder.", "sequence.", "trba_decoder.",
                        "position_decoder_low.", "position_decoder_mid.", "fusion_decoder_low.", "fusion_decoder_mid.",
                        "fusion.", "projection.", "final_decoder.")


def upgraded_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under the current names (format 1 SIGA_R checkpoints are renamed)."""
    state = checkpoint["model"]
    if checkpoint.get("format_version", 1) >= 2 or checkpoint["config"].get("model") != "SIGA_R":
        return state
    return {("siga." + key if key.startswith(_FORMAT_1_SIGA_HEADS) else key): value for key, value in state.items()}


def weights_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``model`` strictly, in one line ('' if nothing)."""
    ours = model.state_dict()
    missing, unexpected = sorted(ours.keys() - state.keys()), sorted(state.keys() - ours.keys())
    reshaped = [key for key in ours if key in state and tuple(state[key].shape) != tuple(ours[key].shape)]
    problems = [f"{len(missing)} missing tensors {missing[:3]}" if missing else "",
                f"{len(unexpected)} unexpected tensors {unexpected[:3]}" if unexpected else "",
                f"{len(reshaped)} of other shape ("
                + ", ".join(f"{key} {tuple(state[key].shape)} vs {tuple(ours[key].shape)}" for key in reshaped[:3]) + ")"
                if reshaped else ""]
    return "; ".join(problem for problem in problems if problem)


def model_from_checkpoint(checkpoint: dict[str, Any], model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint's weights into ``model``; a mismatch is one CheckpointError line naming ``path``."""
    state = upgraded_state_dict(checkpoint)
    problem = weights_mismatch(model, state)
    if problem:
        ours = model.state_dict()
        classifier = "(the classifier's class count differs: another charset) " if any(
            key.endswith("generator.weight") and key in state and state[key].shape != ours[key].shape
            for key in ours) else ""
        raise CheckpointError(f"{path}: weights of a {checkpoint['config'].get('model')} checkpoint do not fit "
                              f"this {type(model).__name__} {classifier}— {problem}")
    model.load_state_dict(state)


def check_expected_model(found: str, expected: str | None, path: str | os.PathLike, official: bool = False) -> None:
    """A checkpoint of model ``found`` where the caller asked for ``expected`` (None: any) is an error."""
    if expected is not None and found != expected:
        kind = "an official" if official else "a"
        raise CheckpointError(f"{path}: {kind} {found} checkpoint, not {expected}")


def check_finetune_source(checkpoint: dict[str, Any], config: Config, tokenizer: Tokenizer,
                          path: str | os.PathLike) -> None:
    """Fine-tuning keeps every layer: the checkpoint must be of this run's model and charset."""
    check_expected_model(checkpoint["config"].get("model"), config.model, path)
    if checkpoint["charset"] != tokenizer.charset:
        raise CheckpointError(f"{path}: charset differs from this run's ({len(checkpoint['charset'])} vs "
                              f"{len(tokenizer.charset)} characters)")


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", expected_model: str | None = None
               ) -> tuple[torch.nn.Module, Tokenizer, Config]:
    """Rebuild the model of a checkpoint written by ``train.py`` or of the authors' released checkpoints
    (``{'net': ...}``), on ``device`` and in eval mode; ``expected_model`` (e.g. "SIGA_R") refuses any other.

    The single place where checkpoints become models. Raises ``FileNotFoundError`` for a missing file and a
    one-line :class:`CheckpointError` (a ValueError) for anything else that keeps it from loading.
    """
    raw = read_checkpoint_file(path, map_location="cpu")
    if is_official_checkpoint(raw):
        model, config = official_model(raw, path, variant=expected_model)
        return model.to(device).eval(), Tokenizer.from_config(config), config
    checkpoint = check_checkpoint(raw, path)
    try:
        config = Config.from_dict(checkpoint["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config is not valid for this version ({error})") from error
    check_expected_model(config.model, expected_model, path)
    if checkpoint.get("charset"):
        tokenizer = Tokenizer(checkpoint["charset"], config.max_label_length, config.sensitive, config.token_layout)
    else:
        tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    model_from_checkpoint(checkpoint, model, path)
    model.to(device).eval()
    return model, tokenizer, config


# The authors' checkpoints (SPEC §11)
_TPS = "model_one.Transformation.LocalizationNetwork."
_RESNET = "model_one.FeatureExtraction.ConvNet."
_GLYPH = "model_two.Attention_Cls."


def siga_heads_map(fusion_one: str, fusion_two: str, one: str = "model_one.", two: str = "model_two.",
                   heads_one: str = "Prediction.", heads_two: str = "Prediction.") -> dict[str, str]:
    """Our SigaHeads prefixes → the official ones. SIGA_R and SIGA_S split them over ``model_one.`` and
    ``model_two.`` and differ only in where the fusion decoders keep their attention decoder
    (``fusion_one``/``fusion_two`` end with '.'); SIGA_T keeps them all under ``mgp_str.`` and names the two
    attention decoders ``heads_one``/``heads_two``."""
    return {
        "siga.alignment_sequence.": one + "SequenceModeling.",
        "siga.alignment_decoder.": one + heads_one,
        "siga.sequence.": two + "SequenceEncoding.",
        "siga.trba_decoder.": two + heads_two,
        "siga.position_decoder_low.": two + "FC_Prediction_1.",
        "siga.position_decoder_mid.": two + "FC_Prediction_2.",
        "siga.fusion_decoder_low.": fusion_one,
        "siga.fusion_decoder_low.attention_cell.fusion.gate.": fusion_one + "attention_cell.fusion.W.",
        "siga.fusion_decoder_mid.": fusion_two,
        "siga.fusion_decoder_mid.attention_cell.fusion.gate.": fusion_two + "attention_cell.fusion.W.",
        "siga.fusion.gate.": two + "Fusion.W.",
        "siga.projection.": two + "pw.",
        "siga.final_decoder.": two + "generator.",
    }


#: the glyph attention network's prefixes both variants share (SIGA_S adds the unpooling stage ``up_full``)
GLYPH_MAP: dict[str, str] = {
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
}
#: SIGA_R: our module prefix → the official one; the longest matching prefix renames a key. Together with
#: its OFFICIAL_IGNORED entry this accounts for every key of the official SIGA_R state_dict.
SIGA_R_NAME_MAP: dict[str, str] = {
    "transformation.localization.": _TPS,
    "backbone.": _RESNET,
    "backbone.conv6.0.": _RESNET + "conv6.", "backbone.conv6.1.": _RESNET + "bn6.",
    "backbone.conv7_1.0.": _RESNET + "conv7_1.", "backbone.conv7_1.1.": _RESNET + "bn7_1.",
    "backbone.conv7_2.0.": _RESNET + "conv7_2.", "backbone.conv7_2.1.": _RESNET + "bn7_2.",
    **GLYPH_MAP,
    **siga_heads_map("model_two.Iterable_Predicition_one.", "model_two.Iterable_Predicition_two."),
}
#: SIGA_S (SPEC_SIGA_S §10): SVTR keeps the official names below FeatureExtraction.
SIGA_S_NAME_MAP: dict[str, str] = {
    "transformation.localization.": _TPS,
    "backbone.": "model_one.FeatureExtraction.",
    **GLYPH_MAP,
    "glyph.up_full.": _GLYPH + "unpool4.",
    **siga_heads_map("model_two.Iterable_Predicition_one.Prediction.", "model_two.Iterable_Predicition_two.Prediction."),
}
_VIT, _SEG = "mgp_str.", "mgp_str.segmentation."
#: SIGA_T (SPEC_SIGA_T §8): the ViT keeps timm's names; the tail and glyph head live in ``segmentation``.
SIGA_T_NAME_MAP: dict[str, str] = {
    "backbone.vit.": _VIT, "backbone.norm_seg.": _VIT + "norm_seg.", "backbone.token_norm.": _SEG + "token_norm_1.",
    "backbone.tail.": _SEG,
    "glyph.tap_heads.0.": _SEG + "mlahead.head2.", "glyph.tap_heads.1.": _SEG + "mlahead.head3.",
    "glyph.mid_head.": _SEG + "cls_Head_middle.0.", "glyph.low_head.": _SEG + "cls_Head_low.0.",
    "glyph.up_mid.": _SEG + "unpool1.", "glyph.up_low.": _SEG + "unpool2.", "glyph.up_seg.": _SEG + "unpool3.",
    "glyph.reduce_low.0.": _SEG + "conv1.", "glyph.reduce_low.1.": _SEG + "bn1.",
    "glyph.low_merge.0.": _SEG + "conv2.", "glyph.low_merge.1.": _SEG + "bn2.",
    "glyph.seg_block.0.": _SEG + "conv3.", "glyph.seg_block.1.": _SEG + "bn3.",
    "glyph.seg_head.": _SEG + "seg_cls.", "glyph.features_mid.": _SEG + "feat.", "glyph.features_low.": _SEG + "unpool0.",
    "glyph.sequence_mid.": _SEG + "lstm.0.", "glyph.sequence_low.": _SEG + "lstm.1.",
    **siga_heads_map(_VIT + "Iterable_Predicition_one.", _VIT + "Iterable_Predicition_two.", _VIT, _VIT,
                     "Prediction_our.", "Prediction_TRBA."),
}
#: per released model: our prefix → official prefix
OFFICIAL_NAME_MAPS: dict[str, dict[str, str]] = {"SIGA_R": SIGA_R_NAME_MAP, "SIGA_S": SIGA_S_NAME_MAP,
                                                 "SIGA_T": SIGA_T_NAME_MAP}
#: per released model: official keys with no counterpart (SIGA_R: the TPS grid constants, recomputed, and the
#: unused downsampler)
OFFICIAL_IGNORED: dict[str, tuple[str, ...]] = {
    "SIGA_R": ("model_one.Transformation.GridGenerator.", "model_two.downsampler."),
    # SIGA_S also saves its glyph-CE class weights, a constant of the losses (SPEC_SIGA_S bug S25)
    "SIGA_S": ("model_one.Transformation.GridGenerator.", "model_two.downsampler.", "model_two.loss."),
    # SIGA_T: the ViT's classifier and final norm and a second token norm, never used (SPEC_SIGA_T T-5)
    "SIGA_T": ("mgp_str.head.", "mgp_str.norm.", "mgp_str.segmentation.token_norm_2."),
}
#: per released model: the final classifier's weight, whose rows give the class count
OFFICIAL_CLASSIFIER: dict[str, str] = {"SIGA_R": "model_two.generator.generator.weight",
                                       "SIGA_S": "model_two.generator.generator.weight",
                                       "SIGA_T": "mgp_str.generator.generator.weight"}


def official_name(key: str, variant: str = "SIGA_R") -> str:
    """The official state_dict name (without ``module.``) of one of our keys of model ``variant``."""
    name_map = OFFICIAL_NAME_MAPS[variant]
    matches = [prefix for prefix in name_map if key.startswith(prefix)]
    if not matches:
        raise KeyError(f"{key}: no entry in the {variant} official name map")
    prefix = max(matches, key=len)
    return name_map[prefix] + key[len(prefix):]


def convert_official_state_dict(model: nn.Module, official: dict[str, torch.Tensor], variant: str = "SIGA_R"
                                ) -> dict[str, torch.Tensor]:
    """Our state_dict from an official one of model ``variant`` (keys with or without ``module.``).

    Every official tensor must be used except the variant's OFFICIAL_IGNORED; a missing, unexpected or
    differently-shaped key is an error that lists the keys.
    """
    official = {k.removeprefix("module."): v for k, v in official.items()}
    official = {k: v for k, v in official.items() if not k.startswith(OFFICIAL_IGNORED[variant])}
    ours = model.state_dict()
    wanted = {official_name(key, variant): key for key in ours}
    missing = sorted(set(wanted) - set(official))
    unexpected = sorted(set(official) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"official checkpoint does not match {variant}: {len(missing)} missing keys {missing[:20]}, "
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


def official_config(state_dict: dict[str, torch.Tensor], variant: str = "SIGA_R") -> Config:
    """The paper config of ``variant`` whose class count (the tokenizer's) matches an official state_dict:
    the 36-character set, or the case-sensitive 94-character one."""
    key = OFFICIAL_CLASSIFIER[variant]
    weight = state_dict.get(key, state_dict.get("module." + key))
    if weight is None:
        raise ValueError(f"not an official {variant} state_dict: {key} is missing")
    num_classes = weight.shape[0]
    for charset, sensitive in (("36", False), ("94", True)):
        config = make_config("paper", model=variant, charset=charset, sensitive=sensitive)
        if Tokenizer.from_config(config).num_classes == num_classes:
            return config
    raise ValueError(f"official {variant} with {num_classes} classes: give its charset explicitly")


#: a key only each released model has (without ``module.``)
OFFICIAL_SIGNATURES: dict[str, str] = {"SIGA_R": "model_one.FeatureExtraction.ConvNet.conv1.weight",
                                       "SIGA_S": "model_one.FeatureExtraction.pos_embed",
                                       "SIGA_T": "mgp_str.pos_embed"}


def official_variant(state_dict: dict[str, torch.Tensor], source: str | Path) -> str:
    """Which released model an official state_dict is, from its signature key."""
    keys = {key.removeprefix("module.") for key in state_dict}
    found = [variant for variant, signature in OFFICIAL_SIGNATURES.items() if signature in keys]
    if len(found) != 1:
        raise CheckpointError(f"{source}: not an official SIGA_R, SIGA_S or SIGA_T state_dict (signature keys "
                         f"{sorted(OFFICIAL_SIGNATURES.values())} not found)")
    return found[0]


def official_model(checkpoint: dict, source: str | Path = "official checkpoint", config: Config | None = None,
                   variant: str | None = None) -> tuple[nn.Module, Config]:
    """The released model with the weights of an official checkpoint dict (``{'net': state_dict, ...}``), told by
    its keys; ``variant`` (e.g. "SIGA_S") refuses a checkpoint of another released model."""
    if not is_official_checkpoint(checkpoint):
        raise CheckpointError(f"{source}: not an official SIGA checkpoint (expected a dict with 'net')")
    detected = official_variant(checkpoint["net"], source)
    check_expected_model(detected, variant, source, official=True)
    variant = detected
    config = config or official_config(checkpoint["net"], variant)
    model = build_model(config)
    try:
        model.load_state_dict(convert_official_state_dict(model, checkpoint["net"], variant))
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
    return model, config


def load_official(path: str | Path, config: Config | None = None, variant: str | None = None
                  ) -> tuple[nn.Module, Config]:
    """Build model ``variant`` and load the authors' released checkpoint file into it through its name map."""
    return official_model(read_checkpoint_file(path), path, config, variant)


def load_tps(model: nn.Module, checkpoint_path: str | Path) -> None:
    """Copy the TPS localisation network of a checkpoint of this repo (TRBA or SIGA_R) into ``model``
    (SPEC §3.1, §7 #6): every localisation tensor of ``model`` must be present with the same shape.
    Freezing is the config's ``freeze_tps``, so that a resumed run stays frozen."""
    if not hasattr(model.transformation, "localization"):
        raise ValueError(f"--tps_from {checkpoint_path}: this model has no TPS rectifier")
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


#: where a glyph-free baseline's tensors go in its SIGA model at a stage handover (SIGA_R from TRBA, SIGA_S from
#: TSBA): the contextual BiLSTMs start the recognition branch and the alignment branch (whose 1-D attention makes
#: the glyph pseudo-labels); the attention decoder starts every attention decoder over them, the two fusion
#: decoders included (their fusion gates keep their initialisation); every other tensor keeps its name
HANDOVER_TARGETS = {"sequence.": ("siga.sequence.", "siga.alignment_sequence."),
                    "decoder.": ("siga.trba_decoder.", "siga.alignment_decoder.", "siga.fusion_decoder_low.",
                                 "siga.fusion_decoder_mid.")}


def load_handover(model: nn.Module, checkpoint_path: str | Path) -> int:
    """Copy every tensor of a glyph-free baseline's checkpoint (TPS, backbone, BiLSTMs, attention decoder) into
    the SIGA ``model`` through ``HANDOVER_TARGETS``; the glyph network, the position decoders, the fusion gates
    and the final decoder keep their initialisation. Every baseline tensor must find its targets with the same
    shape. Returns the number of model tensors written."""
    source = load_checkpoint(checkpoint_path)["model"]
    target = model.state_dict()
    updates, problems = {}, []
    for key, value in source.items():
        prefix = next((p for p in HANDOVER_TARGETS if key.startswith(p)), None)
        names = [t + key[len(prefix):] for t in HANDOVER_TARGETS[prefix]] if prefix else [key]
        for name in names:
            if name not in target:
                problems.append(f"{key} → {name}: not in {type(model).__name__}")
            elif target[name].shape != value.shape:
                problems.append(f"{key} → {name}: shape {tuple(value.shape)}, "
                                f"the model has {tuple(target[name].shape)}")
            else:
                updates[name] = value
    if problems:
        raise ValueError(f"{checkpoint_path}: not the baseline of this model: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    model.load_state_dict({**target, **updates}, strict=True)
    return len(updates)


#: DeiT checkpoint keys not taken (SPEC_SIGA_T §3.9): other patch size and grid, the ImageNet classifier, and the
#: final norm, which SIGA_T never uses
DEIT_SKIPPED = ("patch_embed.", "pos_embed", "head.", "norm.", "fc_norm.", "head_dist.", "dist_token")


def load_pretrained_vit(model: nn.Module, path: str | Path) -> int:
    """Copy the class token and every transformer block of a DeiT-style ImageNet checkpoint (a state_dict, or a
    dict holding one under 'model') into ``model.backbone.vit``; patch embedding, position embedding, classifier
    and final norm stay as initialised. Every block tensor of ours must be present with the same shape; the
    file's other keys are an error. Returns the number of tensors loaded (ViT-Base: 145)."""
    vit = getattr(getattr(model, "backbone", None), "vit", None)
    if vit is None:
        raise ValueError(f"--pretrained_vit {path}: this model has no ViT backbone")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrained_vit: {path} does not exist (weights are never downloaded)")
    raw = read_checkpoint_file(path)
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a ViT state_dict (expected tensors, or a dict with 'model')")
    taken = {k: v for k, v in state.items() if not k.startswith(DEIT_SKIPPED)}
    wanted = {k: v for k, v in vit.state_dict().items() if k == "cls_token" or k.startswith("blocks.")}
    missing, unexpected = sorted(set(wanted) - set(taken)), sorted(set(taken) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"{path}: does not match this ViT: {len(missing)} missing keys {missing[:10]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:10]}")
    wrong = [f"{k} {tuple(v.shape)} vs ours {tuple(wanted[k].shape)}" for k, v in taken.items() if v.shape != wanted[k].shape]
    if wrong:
        raise ValueError(f"{path}: shapes differ from this ViT (another width or depth?): {wrong[:5]}")
    vit.load_state_dict(taken, strict=False)
    return len(taken)
