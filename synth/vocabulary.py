"""Labels of the synthetic engine: English words, random strings, numbers and punctuated words, drawn with
their length balanced so short and long words are seen as often as mid-length ones.

Provenance of ``synth/words.txt`` (11 014 lowercase words, one per line): the running prose (words of
whitespace-separated text outside inline code) of four groups of text on the build machine —
(1) the Python 3.11 standard library's docstrings and comments plus ``pydoc_data/topics.py`` (PSF
licence); (2) docstrings and comments of numpy, scipy and matplotlib (BSD); (3) docstrings and comments
of torch, torchvision, nltk, networkx, sympy, docutils, IPython, Pillow, setuptools, pip, pygments and
mpmath (BSD/MIT/Apache-2.0/public domain); (4) the non-code text of the Rust toolchain's HTML books
(The Book, Reference, Nomicon, Rust by Example, Cargo, rustc, rustdoc, edition/embedded/unstable books;
MIT/Apache-2.0). A word is kept when it is 2–15 ASCII letters with a vowel and no letter tripled,
occurs in lowercase prose in at least two of the four groups (all four for two-letter words), is not
mostly a code identifier (at most 10 identifier uses per prose use) and is not, case-insensitively,
a label of the real ``IIIT5k_train_2000`` LMDB, which is held out as a real-word test set.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

WORDS_FILE = Path(__file__).with_name("words.txt")
ALNUM = string.digits + string.ascii_letters
#: punctuation that real signs and documents put around words, most frequent first
PUNCTUATION_AROUND = ".,:;!?'\"-)(&/"
#: case styles of dictionary words and their probabilities: lower, UPPER, Capitalised, rAnDoM
CASE_STYLES = ("lower", "upper", "capitalised", "mixed")


@dataclass(frozen=True)
class VocabularyConfig:
    """What kinds of label the engine draws, with their probabilities (normalised), and the length balance."""

    word_weight: float = 0.75  # a dictionary word
    random_weight: float = 0.1  # a random [0-9a-zA-Z] string
    number_weight: float = 0.1  # an integer, a decimal, a price, a time or a date
    code_weight: float = 0.05  # letters and digits mixed as in codes and plates (AB12, x3000)
    case_probabilities: tuple[float, float, float, float] = (0.4, 0.3, 0.25, 0.05)  # CASE_STYLES
    punctuation_probability: float = 0.05  # a word gets a leading or trailing mark of PUNCTUATION_AROUND
    min_length: int = 1
    max_length: int = 10  # longest label drawn (97 % of IIIT5k_train_2000's labels are this short)
    balance_lengths: bool = True  # draw the length uniformly first, then a word of that length

    def __post_init__(self) -> None:
        weights = (self.word_weight, self.random_weight, self.number_weight, self.code_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"label kind weights must be >= 0 with a positive sum, got {weights}")
        if len(self.case_probabilities) != len(CASE_STYLES) or min(self.case_probabilities) < 0 \
                or sum(self.case_probabilities) <= 0:
            raise ValueError(f"case_probabilities needs {len(CASE_STYLES)} non-negative weights "
                             f"{CASE_STYLES}, got {self.case_probabilities}")
        if not 0.0 <= self.punctuation_probability <= 1.0:
            raise ValueError(f"punctuation_probability must be in [0, 1], got {self.punctuation_probability}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")


@lru_cache(maxsize=4)
def load_words(max_length: int = 25) -> tuple[str, ...]:
    """The shipped word list, restricted to words of at most ``max_length`` characters."""
    words = tuple(w for w in WORDS_FILE.read_text(encoding="utf-8").split() if len(w) <= max_length)
    if not words:
        raise ValueError(f"{WORDS_FILE}: no word of at most {max_length} characters")
    return words


@lru_cache(maxsize=4)
def words_by_length(max_length: int) -> dict[int, tuple[str, ...]]:
    """The word list grouped by length (only lengths that occur)."""
    groups: dict[int, list[str]] = {}
    for word in load_words(max_length):
        groups.setdefault(len(word), []).append(word)
    return {length: tuple(words) for length, words in sorted(groups.items())}


def _random_string(rng: np.random.Generator, length: int) -> str:
    return "".join(ALNUM[i] for i in rng.integers(0, len(ALNUM), length))


def _number(rng: np.random.Generator, length: int) -> str:
    """Digits shaped like a count, a decimal, a price, a time or a date, about ``length`` characters long."""
    digits = "".join(str(d) for d in rng.integers(0, 10, max(length, 1)))
    kind = int(rng.integers(5))
    if kind == 1 and len(digits) >= 3:
        cut = int(rng.integers(1, len(digits) - 1))
        return f"{digits[:cut]}.{digits[cut:]}"
    if kind == 2:
        return f"${digits[:max(length - 3, 1)]}.{digits[-2:]}" if length >= 4 else f"${digits}"
    if kind == 3 and length >= 4:
        return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if kind == 4 and length >= 9:  # a date is 10 characters: at most one more than the length aimed at
        return f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1950, 2030))}"
    return digits


def _code(rng: np.random.Generator, length: int) -> str:
    """Letters then digits (or digits then letters), as in plate numbers, model names and room codes."""
    split = int(rng.integers(1, length)) if length > 1 else 1
    letters = "".join(string.ascii_uppercase[i] for i in rng.integers(0, 26, split))
    digits = "".join(str(d) for d in rng.integers(0, 10, max(length - split, 1)))
    return letters + digits if rng.random() < 0.7 else digits + letters


def _apply_case(rng: np.random.Generator, word: str, config: VocabularyConfig) -> str:
    probabilities = np.asarray(config.case_probabilities, np.float64)
    style = CASE_STYLES[int(rng.choice(len(CASE_STYLES), p=probabilities / probabilities.sum()))]
    if style == "upper":
        return word.upper()
    if style == "capitalised":
        return word.capitalize()
    if style == "mixed":
        return "".join(c.upper() if flip else c for c, flip in zip(word, rng.random(len(word)) < 0.5))
    return word


def _dictionary_word(rng: np.random.Generator, length: int, config: VocabularyConfig) -> str:
    """A word of exactly ``length`` letters when the list has one, else of the nearest length present
    (a single letter for length 1)."""
    groups = words_by_length(config.max_length) if length > 1 else {}  # max_length 1: no word fits the list
    if not groups or length < min(groups):  # the list has no one-letter words: a letter, as on signs and forms
        return string.ascii_lowercase[int(rng.integers(26))]
    nearest = min(groups, key=lambda present: (abs(present - length), present))
    candidates = groups[nearest]
    return candidates[int(rng.integers(len(candidates)))]


def _punctuate(rng: np.random.Generator, word: str) -> str:
    mark = PUNCTUATION_AROUND[min(int(rng.geometric(0.3)) - 1, len(PUNCTUATION_AROUND) - 1)]
    if mark in "([\"'" and rng.random() < 0.5:
        return mark + word
    return word + mark


def sample_label(rng: np.random.Generator, config: VocabularyConfig = VocabularyConfig()) -> str:
    """One label. With ``balance_lengths`` the length is drawn uniformly from [min_length, max_length] first
    and the kind's generator aims at it (words take the nearest length the list has), so the length
    histogram is flat instead of peaking at 7–8 letters as the raw word list does."""
    weights = np.array([config.word_weight, config.random_weight, config.number_weight, config.code_weight])
    kind = int(rng.choice(4, p=weights / weights.sum()))
    if config.balance_lengths:
        length = int(rng.integers(config.min_length, config.max_length + 1))
    else:
        length = len(load_words(config.max_length)[int(rng.integers(len(load_words(config.max_length))))])
    if kind == 0:
        label = _apply_case(rng, _dictionary_word(rng, length, config), config)
    elif kind == 1:
        label = _random_string(rng, length)
    elif kind == 2:
        label = _number(rng, length)
    else:
        label = _code(rng, length)
    if kind == 0 and rng.random() < config.punctuation_probability:
        label = _punctuate(rng, label)
    return label
