"""tools.loss_gradients: per-term, per-part gradient norms."""
from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import write_tiny_checkpoint
from tools.loss_gradients import gradient_norms, main, part_of


class TwoParts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transformation = torch.nn.Linear(4, 1, bias=False)
        self.backbone = torch.nn.Linear(9, 1, bias=False)


def test_gradient_norms_per_term_and_part_are_exact():
    model = TwoParts()
    losses = {"a": 3.0 * model.transformation.weight.sum(), "b": 2.0 * model.backbone.weight.sum()}
    norms = gradient_norms(model, losses)
    assert norms["a"]["TPS"] == pytest.approx(3.0 * 2.0) and norms["a"]["backbone"] == pytest.approx(0.0)
    assert norms["b"]["backbone"] == pytest.approx(2.0 * 3.0)
    assert norms["total"]["all"] == pytest.approx(math.hypot(6.0, 6.0))
    assert part_of("glyph.seg_head.weight") == "glyph network" and part_of("siga.fusion.0.weight") == "decoders"


def test_cli_prints_each_siga_term_for_a_siga_checkpoint(tmp_path, data, capsys):
    write_tiny_checkpoint(tmp_path / "siga.pth", "SIGA_R")
    main(["--checkpoint", str(tmp_path / "siga.pth"), "--data", str(data / "train" / "synth"),
          "--mask_data", str(data / "masks" / "synth"), "--batch_size", "4", "--batches", "2"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line and not line.startswith("total norm")}
    assert {"CE", "L_seg", "λ·L_align", "L_low", "L_mid", "total"} <= set(rows)
    assert "(iteration 0)" in out and re.search(r"threshold 5 in [0-2] of 2 batches", out)
    # the glyph losses reach the backbone through the shared features; the decoders get only CE and L_align
    assert float(rows["L_low"].split()[2]) > 0 and float(rows["L_seg"].split()[4]) == 0.0


def test_cli_refuses_too_few_samples(tmp_path, data):
    write_tiny_checkpoint(tmp_path / "trba.pth")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "trba.pth"), "--data", str(data / "val" / "synth_val"),
              "--batch_size", "8", "--batches", "2"])
