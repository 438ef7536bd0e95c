"""Access to the golden conformance data (``../shared/data/golden``) and its weight rule.

The golden README defines every official SIGA_R parameter as a function of its key name and shape;
``official_rule_state_dict`` rebuilds that state_dict (plus the calibrated BatchNorm statistics) so
that the official-checkpoint loader can be tested end to end against the official outputs. Every read of
``../shared`` goes through ``require``: a loud failure under CI, a skip naming the path elsewhere.
"""
from __future__ import annotations

import copy
import json
import os
import re
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GOLDEN = SHARED / "golden"
OFFICIAL_KEYS = SHARED / "official_siga_r_state_dict.json"
#: per model: its golden directory and official key list (SIGA_S: ../shared/data/golden_siga_s/README.md)
VARIANTS = {"SIGA_R": (GOLDEN, OFFICIAL_KEYS),
            "SIGA_S": (SHARED / "golden_siga_s", SHARED / "official_siga_s_state_dict.json"),
            "SIGA_T": (SHARED / "golden_siga_t", SHARED / "official_siga_t_state_dict.json")}
#: SIGA_S keys whose value is not from the rule: the official glyph-CE class weights (golden README §1)
CONSTANTS = ("model_two.loss.iou_loss.crossentropy.weight",)
LAYER_NORM = re.compile(r"\.norm\d*$")
SALT = "siga-golden-v1/55/"
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
GRID_CONSTANTS = ("GridGenerator.inv_delta_C", "GridGenerator.P_hat")


def require(path: Path) -> Path:
    """``path`` (reference data under ``../shared``) if it exists. A missing one fails the test loudly when
    the environment variable ``CI`` is ``true`` (CI must never pass by skipping), and skips it otherwise."""
    if not path.exists():
        message = f"reference data missing: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_golden(name: str, variant: str = "SIGA_R"):
    return torch.load(require(VARIANTS[variant][0] / name), map_location="cpu", weights_only=True)


def rule_uniform(key: str, n: int) -> np.ndarray:
    """n float64 values in [−1, 1): splitmix64 of (crc32(SALT + key) << 32) + i."""
    seed = np.uint64(zlib.crc32((SALT + key).encode("utf-8")))
    z = (seed << np.uint64(32)) + np.arange(n, dtype=np.uint64)
    z = z * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -52 - 1.0


def _weight_gain(key: str, ndim: int) -> float:
    if key.endswith("localization_fc2.weight"):
        return 0.3
    if ndim == 4:
        return 2.0 ** 0.5
    if key.endswith(("generator.weight", "score.weight")):
        return 8.0
    if key.endswith(".linear.weight"):
        return 4.0
    if key.endswith(".pw.weight"):
        return 3.0
    return 1.0


RESIDUAL_BN = {"SIGA_R": re.compile(r"\.ConvNet\.layer\d+\.\d+\.bn2$"),
               "SIGA_T": re.compile(r"\.segmentation\.layer\d+\.\d+\.bn2$")}


def rule_value(key: str, shape: list[int], bn_prefixes: set[str], residual_bn: re.Pattern = RESIDUAL_BN["SIGA_R"]
               ) -> np.ndarray:
    """The float32 value of one official parameter (golden README §1)."""
    n = int(np.prod(shape)) if shape else 1
    u = rule_uniform(key, n)
    prefix, leaf = key.rsplit(".", 1)
    if prefix in bn_prefixes:
        if leaf == "weight":
            x = 1.0 + 0.1 * u
            if residual_bn.search(prefix):
                x = 0.2 * x
        elif leaf == "bias":
            x = 0.1 * u
        else:
            raise KeyError(f"{key}: BN statistics come from bn_buffers.pt")
    elif key.endswith("localization_fc2.bias"):
        xs = np.linspace(-1.0, 1.0, 10)
        base = np.concatenate([np.stack([xs, -np.ones(10)], 1), np.stack([xs, np.ones(10)], 1)]).reshape(-1)
        x = 0.9 * base + 0.02 * u
    elif leaf.startswith("bias"):
        x = 0.1 * u
    elif key.endswith("char_embeddings.weight"):
        x = 0.5 * np.sqrt(3.0) * u
    else:
        fan_in = n // shape[0]
        x = _weight_gain(key, len(shape)) * np.sqrt(3.0 / fan_in) * u
    return x.reshape(shape).astype(np.float32)


def rule_value_s(key: str, shape: list[int], bn_prefixes: set[str]) -> np.ndarray:
    """SIGA_S's rule (golden_siga_s README §1): SVTR's LayerNorms and ``pos_embed``, else SIGA_R's rule."""
    prefix, leaf = key.rsplit(".", 1)
    u = rule_uniform(key, int(np.prod(shape)))
    if prefix not in bn_prefixes and LAYER_NORM.search(prefix) and leaf in ("weight", "bias"):
        x = 1.0 + 0.1 * u if leaf == "weight" else 0.1 * u
    elif key.endswith(".pos_embed"):
        x = 0.25 * np.sqrt(3.0) * u
    else:
        return rule_value(key, shape, bn_prefixes)
    return x.reshape(shape).astype(np.float32)


#: SIGA_T's LayerNorms (golden_siga_t README §1)
VIT_LAYER_NORM = re.compile(r"(^|\.)(norm|norm1|norm2|norm_seg\.\d+|token_norm_\d+)$")


def rule_value_t(key: str, shape: list[int], bn_prefixes: set[str]) -> np.ndarray:
    """SIGA_T's rule (golden_siga_t README §1): the ViT's LayerNorms, class token and position embedding, the
    residual-BN pattern of its ResNet tail, else SIGA_R's rule."""
    prefix, leaf = key.rsplit(".", 1)
    u = rule_uniform(key, int(np.prod(shape)))
    if prefix not in bn_prefixes and VIT_LAYER_NORM.search(prefix) and leaf in ("weight", "bias"):
        x = 1.0 + 0.1 * u if leaf == "weight" else 0.1 * u
    elif key in ("mgp_str.cls_token", "mgp_str.pos_embed"):
        x = 0.5 * np.sqrt(3.0) * u
    else:
        return rule_value(key, shape, bn_prefixes, RESIDUAL_BN["SIGA_T"])
    return x.reshape(shape).astype(np.float32)


RULES = {"SIGA_R": rule_value, "SIGA_S": rule_value_s, "SIGA_T": rule_value_t}


@lru_cache(maxsize=3)
def official_shapes(variant: str = "SIGA_R") -> dict[str, list[int]]:
    """Official key → shape (the SIGA_T list also records dtypes)."""
    shapes = json.loads(require(VARIANTS[variant][1]).read_text())
    return {key: value["shape"] if isinstance(value, dict) else value for key, value in shapes.items()}


def rule_parameters(variant: str = "SIGA_R") -> dict[str, torch.Tensor]:
    """Every official parameter (no BN statistics, grid constants or loss constants) from the rule."""
    shapes = official_shapes(variant)
    bn_prefixes = {k[: -len(".running_mean")] for k in shapes if k.endswith(".running_mean")}
    rule = RULES[variant]
    return {key: torch.from_numpy(rule(key, shape, bn_prefixes)) for key, shape in shapes.items()
            if not key.endswith(BN_STATISTICS) and not key.endswith(GRID_CONSTANTS) and key not in CONSTANTS}


@lru_cache(maxsize=3)
def official_rule_state_dict(variant: str = "SIGA_R") -> dict[str, torch.Tensor]:
    """The official-format state_dict (with the ``module.`` prefix of a released checkpoint)."""
    state = rule_parameters(variant)
    state.update(load_golden("bn_buffers.pt", variant))
    return {"module." + key: value for key, value in state.items()}


def assert_rule_matches_checksums(parameters: dict[str, torch.Tensor], checksums: dict[str, dict]) -> None:
    """Every rule tensor against its checksum entry (shape, sums, first and last values)."""
    assert set(parameters) == set(checksums)
    for key, expected in checksums.items():
        value = parameters[key].double()
        assert list(value.shape) == expected["shape"], key
        assert value.sum().item() == pytest.approx(expected["sum"], rel=1e-9, abs=1e-9), key
        assert value.abs().sum().item() == pytest.approx(expected["sum_abs"], rel=1e-9), key
        assert value.flatten()[:3].tolist() == pytest.approx(expected["first"], rel=1e-7), key
        assert value.flatten()[-1].item() == pytest.approx(expected["last"], rel=1e-7), key


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − b| / max |b|: the golden READMEs' relative error."""
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def assert_close(actual, expected, rtol: float, name: str) -> None:
    """|a − b| ≤ rtol · max|b| for tensors or numbers of the same shape, naming ``name`` when not."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, name
    error = (actual - expected).abs().max().item()
    assert error <= rtol * expected.abs().max().item(), f"{name}: max abs error {error:.3e} vs max {expected.abs().max():.3e}"


def golden_rows(golden: dict, rows: list[int], dtype: torch.dtype) -> dict:
    """Rows ``rows`` of a ``losses.pt`` file's inputs, floating tensors in ``dtype``."""
    return {k: v[rows].to(dtype) if v.is_floating_point() else v[rows] for k, v in golden["inputs"].items()}


def assert_terms_match(terms, per_sample: torch.Tensor, expected: dict, rtol: float) -> None:
    """The iteration-independent SIGA loss terms (``modules.losses.SigaLossTerms``) and L_seg's per-sample
    means against a ``losses.pt`` batch entry, by its key names."""
    actual = {
        "L_seg_per_sample_mean": per_sample, "coverage_S": terms.align.coverage,
        "L_align": terms.align.total, "L_align_CE": terms.align.cross_entropy,
        "L_align_orth": terms.align.orthogonality,
        "L_low": terms.low.total, "L_low_CE": terms.low.cross_entropy, "L_low_Dice": terms.low.dice,
        "L_mid": terms.mid.total, "L_mid_CE": terms.mid.cross_entropy, "L_mid_Dice": terms.mid.dice,
    }
    for name, value in actual.items():
        assert_close(value, expected[name], rtol, name)


def golden_eval(model: torch.nn.Module, io_data: dict, dtype: torch.dtype):
    """A copy of ``model`` in ``dtype``, eval mode, greedy on the golden images for every step."""
    model = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        return model(io_data["inputs"]["images"].to(dtype), early_stop=False)


def golden_teacher_forced(model: torch.nn.Module, io_data: dict, dtype: torch.dtype, train_mode: bool):
    """A copy of ``model`` in ``dtype`` (BatchNorm in train or eval mode), teacher-forced on the golden ids."""
    model = copy.deepcopy(model).to(dtype).train(train_mode)
    inputs = io_data["inputs"]
    with torch.no_grad():
        return model(inputs["images"].to(dtype), inputs["text_ids"][:, :-1], inputs["masks"].to(dtype))


def assert_heads_match(out, expected: dict, heads: dict[str, str], tolerance: float) -> None:
    """P_final, every auxiliary head (golden name → ours) and the 1-D attention A within ``tolerance``."""
    assert relative_error(out.logits, expected["P_final"]) <= tolerance
    for name, head in heads.items():
        assert relative_error(out.auxiliary_logits[head], expected[name]) <= tolerance, name
    assert relative_error(out.attention, expected["A"]) <= tolerance


def name_map_coverage(model: torch.nn.Module, variant: str) -> tuple[set[str], set[str], set[str]]:
    """(the official names our keys map to, the official keys not ignored, the ignored official keys) of
    ``variant``'s name map; a one-to-one map also has as many mapped names as our keys."""
    from checkpoint import OFFICIAL_IGNORED, official_name

    ours = [official_name(key, variant) for key in model.state_dict()]
    assert len(set(ours)) == len(ours), "two of our keys map to one official key"
    shapes = official_shapes(variant)
    kept = {key for key in shapes if not key.startswith(OFFICIAL_IGNORED[variant])}
    return set(ours), kept, set(shapes) - kept


def rule_and_checksums(variant: str) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The rule parameters of ``variant`` and its golden checksums."""
    checksums = json.loads(require(VARIANTS[variant][0] / "weight_rule_checksums.json").read_text())
    return rule_parameters(variant), checksums


def assert_greedy_matches(out, expected: dict, tolerance: float) -> None:
    """Greedy P_final and the fusion decoders' P_F1 / P_F2 (the only heads our greedy path runs)."""
    assert relative_error(out.logits, expected["P_final"]) <= tolerance
    assert relative_error(out.auxiliary_logits["fusion_low"], expected["P_F1"]) <= tolerance
    assert relative_error(out.auxiliary_logits["fusion_mid"], expected["P_F2"]) <= tolerance
