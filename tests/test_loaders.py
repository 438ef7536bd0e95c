"""The training-batch plumbing of loaders.py: the curriculum's two phases and their resumption."""
from __future__ import annotations

import pytest

from loaders import curriculum_batches


def endless(name: str) -> list[str]:
    return [f"{name}{i}" for i in range(100)]


def take(batches, count: int) -> list[str]:
    return [next(batches) for _ in range(count)]


def test_curriculum_reads_the_first_data_then_the_training_data():
    assert take(curriculum_batches(endless("plain"), 3, endless("varied"), 0), 5) == [
        "plain0", "plain1", "plain2", "varied0", "varied1"]


def test_resuming_inside_and_after_the_curriculum():
    # each loader's sampler already starts at its own position: only the phase lengths matter here
    assert take(curriculum_batches(endless("plain"), 3, endless("varied"), 2), 3) == ["plain0", "varied0", "varied1"]
    assert take(curriculum_batches(None, 3, endless("varied"), 3), 2) == ["varied0", "varied1"]
    assert take(curriculum_batches(None, 0, endless("varied"), 0), 1) == ["varied0"]


def test_a_curriculum_phase_without_its_data_is_an_error():
    with pytest.raises(ValueError, match="no curriculum data"):
        next(curriculum_batches(None, 3, endless("varied"), 1))
