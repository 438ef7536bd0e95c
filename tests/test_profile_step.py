"""tools.profile_step: every timed part of a SIGA_R step is reported and the parts add up to the step."""
from __future__ import annotations

import pytest

from tools.profile_step import PARTS, main, profile


def test_the_parts_of_a_siga_r_step_add_up_to_the_step():
    per_part, totals, flops = profile("SIGA_R", "tiny", 4, "off", 2, 3, {"freeze_tps": True, "seg_resolution": "half"})
    parts = {name.rsplit(" ", 1)[0] for name in per_part}
    assert {"backbone", "glyph.features_low", "siga.final_decoder", "siga.trba_decoder"} <= parts
    assert "glyph.up_seg" not in parts  # half resolution: no unpooling stage
    assert parts <= {*PARTS, "losses forward and", "optimiser and"}
    assert "backbone backward" in per_part and "transformation backward" not in per_part  # frozen TPS: no gradient
    for step in range(2):
        assert sum(values[step] for values in per_part.values()) == pytest.approx(totals[step])
    assert flops > 0


def test_the_command_prints_the_step_and_its_parts(capsys):
    main(["--model", "TRBA", "--preset", "tiny", "--batch_size", "2", "--steps", "1"])
    out = capsys.readouterr().out
    assert "TRBA tiny, batch 2, off" in out and "img/s" in out and "GFLOP per image" in out
    assert "backbone forward" in out and "decoder backward" in out
