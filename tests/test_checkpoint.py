"""This repo's checkpoint files: atomic writes and validation."""
from __future__ import annotations

import pytest
import torch

from checkpoint import atomic_save, load_checkpoint
from config import Config


def test_atomic_checkpoint(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    atomic_save({"model": {"w": torch.ones(2)}, "config": Config().to_dict()}, path)
    assert load_checkpoint(path)["model"]["w"].sum() == 2
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]
    atomic_save({"something": 1}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")
