"""Access to the golden conformance data (``../shared/data/golden``) and its weight rule.

The golden README defines every official SIGA_R parameter as a function of its key name and shape;
``official_rule_state_dict`` rebuilds that state_dict (plus the calibrated BatchNorm statistics) so
that the official-checkpoint loader can be tested end to end against the official outputs. Every read of
``../shared`` goes through ``require``: a loud failure under CI, a skip naming the path elsewhere.
"""
from __future__ import annotations

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


def load_golden(name: str):
    return torch.load(require(GOLDEN / name), map_location="cpu", weights_only=True)


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


def rule_value(key: str, shape: list[int], bn_prefixes: set[str]) -> np.ndarray:
    """The float32 value of one official parameter (golden README §1)."""
    n = int(np.prod(shape)) if shape else 1
    u = rule_uniform(key, n)
    prefix, leaf = key.rsplit(".", 1)
    if prefix in bn_prefixes:
        if leaf == "weight":
            x = 1.0 + 0.1 * u
            if re.search(r"\.ConvNet\.layer\d+\.\d+\.bn2$", prefix):
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


@lru_cache(maxsize=1)
def official_shapes() -> dict[str, list[int]]:
    return json.loads(require(OFFICIAL_KEYS).read_text())


def rule_parameters() -> dict[str, torch.Tensor]:
    """Every official parameter (no BN statistics, no grid constants) from the rule."""
    shapes = official_shapes()
    bn_prefixes = {k[: -len(".running_mean")] for k in shapes if k.endswith(".running_mean")}
    return {key: torch.from_numpy(rule_value(key, shape, bn_prefixes)) for key, shape in shapes.items()
            if not key.endswith(BN_STATISTICS) and not key.endswith(GRID_CONSTANTS)}


@lru_cache(maxsize=1)
def official_rule_state_dict() -> dict[str, torch.Tensor]:
    """The official-format state_dict (with the ``module.`` prefix of a released checkpoint)."""
    state = rule_parameters()
    state.update(load_golden("bn_buffers.pt"))
    return {"module." + key: value for key, value in state.items()}
