"""Labels of the synthetic engine (synth/vocabulary.py): determinism, length balance, each label kind, case styles,
punctuation and config validation."""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np
import pytest

from synth.vocabulary import (ALNUM, PUNCTUATION_AROUND, WORDS_FILE, VocabularyConfig, load_words, sample_label,
                              words_by_length)

ONLY = {"word": dict(word_weight=1.0, random_weight=0.0, number_weight=0.0, code_weight=0.0),
        "random": dict(word_weight=0.0, random_weight=1.0, number_weight=0.0, code_weight=0.0),
        "number": dict(word_weight=0.0, random_weight=0.0, number_weight=1.0, code_weight=0.0),
        "code": dict(word_weight=0.0, random_weight=0.0, number_weight=0.0, code_weight=1.0)}


def labels(config: VocabularyConfig, count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sample_label(rng, config) for _ in range(count)]


def length_shares(config: VocabularyConfig, count: int = 2000) -> np.ndarray:
    """Each length's share of ``count`` labels over [min_length, max_length], relative to uniform (1 = flat)."""
    lengths = Counter(len(label) for label in labels(config, count))
    span = range(config.min_length, config.max_length + 1)
    return np.array([lengths[length] for length in span]) / count * len(span)


def case_style(label: str) -> str:
    if label.islower():
        return "lower"
    if label.isupper():
        return "upper"
    if label == label.capitalize():
        return "capitalised"
    return "mixed"


def test_word_list_is_loaded_by_length():
    words = load_words()
    assert len(words) == len(WORDS_FILE.read_text(encoding="utf-8").split()) > 10_000
    assert all(len(w) <= 5 for w in load_words(5)) and len(load_words(5)) < len(words)
    groups = words_by_length(14)
    assert sum(map(len, groups.values())) == len(load_words(14))
    assert all(len(w) == length for length, group in groups.items() for w in group)
    assert min(groups) >= 2 and max(groups) <= 14
    with pytest.raises(ValueError, match="no word"):
        load_words(1)


def test_labels_are_a_function_of_the_rng_seed():
    config = VocabularyConfig()
    first, again, other = labels(config, 200, seed=3), labels(config, 200, seed=3), labels(config, 200, seed=4)
    assert first == again
    assert first != other
    assert all(isinstance(label, str) and label for label in first)


def test_balanced_lengths_are_roughly_flat_and_unbalanced_follow_the_word_list():
    balanced = length_shares(VocabularyConfig(min_length=2, max_length=14, balance_lengths=True))
    assert np.all((balanced >= 0.5) & (balanced <= 2.0)), balanced.round(2)
    words_only = length_shares(VocabularyConfig(**ONLY["word"], punctuation_probability=0.0, min_length=2,
                                                max_length=14, balance_lengths=True))
    assert np.all((words_only >= 0.5) & (words_only <= 2.0)), words_only.round(2)
    # the raw word list peaks at 7-8 letters: without balancing the shortest and longest lengths are rare
    raw = length_shares(VocabularyConfig(min_length=2, max_length=14, balance_lengths=False))
    assert raw.min() < 0.5 and raw.max() > 1.5, raw.round(2)


@pytest.mark.parametrize("max_length", [1, 3, 6, 8, 14])
def test_labels_are_at_most_one_longer_than_max_length(max_length):
    """Words take the nearest length the list has; decimals, prices and punctuation may add one character
    (SynthDataset relies on this bound to fit labels in the tokenizer's N_max), dates and times never more."""
    config = VocabularyConfig(word_weight=0.4, random_weight=0.2, number_weight=0.3, code_weight=0.1,
                              punctuation_probability=0.3, min_length=1, max_length=max_length)
    drawn = labels(config, 1500, seed=max_length)
    assert all(1 <= len(label) <= max_length + 1 for label in drawn), max(drawn, key=len)


def test_labels_respect_the_length_bounds():
    config = VocabularyConfig(**ONLY["random"], min_length=3, max_length=6)
    assert {len(label) for label in labels(config, 300)} == {3, 4, 5, 6}


def test_word_labels_come_from_the_word_list():
    config = VocabularyConfig(**ONLY["word"], min_length=2, max_length=10, punctuation_probability=0.3)
    words = set(load_words(10))
    drawn = labels(config, 400)
    for label in drawn:
        assert label.strip(PUNCTUATION_AROUND).lower() in words, label
    assert any(label[0] in PUNCTUATION_AROUND or label[-1] in PUNCTUATION_AROUND for label in drawn)
    # a single-letter length gives a letter (the list has no one-letter words)
    single = labels(VocabularyConfig(**ONLY["word"], min_length=1, max_length=1, punctuation_probability=0.0), 50)
    assert all(len(label) == 1 and label in string.ascii_letters for label in single)


def test_punctuation_probability_zero_and_one():
    words = set(load_words(14))
    plain = labels(VocabularyConfig(**ONLY["word"], min_length=2, punctuation_probability=0.0), 300)
    assert all(label.lower() in words for label in plain)
    marked = labels(VocabularyConfig(**ONLY["word"], min_length=2, punctuation_probability=1.0), 300)
    for label in marked:
        assert (label[0] in PUNCTUATION_AROUND) != (label[-1] in PUNCTUATION_AROUND), label
        assert label.strip(PUNCTUATION_AROUND).lower() in words, label


def test_random_strings_are_alphanumeric():
    drawn = labels(VocabularyConfig(**ONLY["random"]), 300)
    assert all(label and set(label) <= set(ALNUM) for label in drawn)
    joined = "".join(drawn)
    assert any(c.isdigit() for c in joined) and any(c.islower() for c in joined) and any(c.isupper() for c in joined)


def test_numbers_contain_digits():
    drawn = labels(VocabularyConfig(**ONLY["number"], min_length=1, max_length=12), 400)
    for label in drawn:
        assert re.fullmatch(r"[0-9$.:/]+", label) and any(c.isdigit() for c in label), label
    kinds = {"decimal": r"\d+\.\d+", "price": r"\$\d+(\.\d\d)?", "time": r"\d\d:\d\d",
             "date": r"\d\d/\d\d/\d{4}", "integer": r"\d+"}
    seen = {name for label in drawn for name, pattern in kinds.items() if re.fullmatch(pattern, label)}
    assert seen == set(kinds)


def test_codes_mix_capitals_and_digits():
    drawn = labels(VocabularyConfig(**ONLY["code"], min_length=2), 300)
    for label in drawn:
        assert re.fullmatch(r"[A-Z]+[0-9]+|[0-9]+[A-Z]+", label), label
    assert any(label[0].isalpha() for label in drawn) and any(label[0].isdigit() for label in drawn)


def test_every_case_style_appears_and_a_single_style_is_obeyed():
    config = VocabularyConfig(**ONLY["word"], min_length=4, punctuation_probability=0.0,
                              case_probabilities=(0.25, 0.25, 0.25, 0.25))
    styles = Counter(case_style(label) for label in labels(config, 400))
    assert set(styles) == {"lower", "upper", "capitalised", "mixed"} and min(styles.values()) >= 40, styles
    for index, style in enumerate(("lower", "upper", "capitalised")):
        weights = tuple(float(i == index) for i in range(4))
        config = VocabularyConfig(**ONLY["word"], min_length=3, punctuation_probability=0.0,
                                  case_probabilities=weights)
        assert {case_style(label) for label in labels(config, 100)} == {style}


@pytest.mark.parametrize("fields", [
    dict(word_weight=-0.1),
    dict(word_weight=0.0, random_weight=0.0, number_weight=0.0, code_weight=0.0),
    dict(case_probabilities=(1.0, 0.0, 0.0)),
    dict(case_probabilities=(1.0, -0.5, 0.0, 0.0)),
    dict(case_probabilities=(0.0, 0.0, 0.0, 0.0)),
    dict(punctuation_probability=1.5),
    dict(punctuation_probability=-0.1),
    dict(min_length=0),
    dict(min_length=8, max_length=5),
])
def test_invalid_configs_raise(fields):
    with pytest.raises(ValueError):
        VocabularyConfig(**fields)
