"""The learning-rate schedule of SPEC §5.2."""
from __future__ import annotations

import pytest
import torch

from config import Config
from optimization import build_optimizer, one_cycle_scheduler


def test_one_cycle_checkpoints():
    """SPEC §13: lr 2.25e-5 at step 0, 4.5e-4 at step 0.3·N − 1, ~2.25e-8 at N − 1, error past N."""
    config = Config(num_iter=1000)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = one_cycle_scheduler(optimizer, config)
    lrs = []
    for _ in range(config.num_iter - 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2.25e-5)
    assert lrs[299] == pytest.approx(4.5e-4)
    assert max(lrs) == pytest.approx(4.5e-4)
    assert lrs[-1] == pytest.approx(2.25e-8, rel=1e-3)
    scheduler.step()  # the N-th step is allowed
    with pytest.raises(ValueError):
        scheduler.step()
