"""Charsets and the tokenizer: ids, special tokens, normalisation, encoding and decoding."""
from __future__ import annotations

import pytest
import torch

from tokenizer import CHARSET_36, CHARSET_94, Tokenizer, load_charset


def one_hot_logits(ids: list[list[int]], num_classes: int) -> torch.Tensor:
    logits = torch.full((len(ids), len(ids[0]), num_classes), -10.0)
    for row, seq in enumerate(ids):
        for step, token in enumerate(seq):
            logits[row, step, token] = 10.0
    return logits


def test_charset_36_order_and_ids():
    tok = Tokenizer(load_charset("36"))
    assert tok.num_classes == 37 and tok.sos_id == 37
    ids, lengths = tok.encode(["az19", "0"])
    assert ids[0, :6].tolist() == [37, 1, 26, 27, 35, 0]
    assert ids[1, :3].tolist() == [37, 36, 0]
    assert lengths.tolist() == [5, 2]
    assert ids.shape == (2, 27)


def test_charset_94_sos_does_not_collide():
    tok = Tokenizer(load_charset("94"), sensitive=True)
    assert tok.num_classes == 95 and tok.sos_id == 95
    assert "A" in tok.charset and tok.encode(["A"])[0][0, 1].item() != tok.sos_id


@pytest.mark.parametrize("charset,sensitive,labels", [
    ("36", False, ["hello", "abc123", "z0"]),
    ("94", True, ["Hello,World!", "a{b}c~", "X"]),
])
def test_round_trip(charset, sensitive, labels):
    tok = Tokenizer(load_charset(charset), sensitive=sensitive)
    ids, lengths = tok.encode(labels)
    assert tok.decode_ids(ids[:, 1:]) == labels
    logits = one_hot_logits(ids[:, 1:].tolist(), tok.num_classes)
    texts, confidences = tok.decode(logits)
    assert texts == labels
    assert all(0.99 < c <= 1.0 for c in confidences)


def test_out_of_charset_dropped_in_every_mode():
    insensitive = Tokenizer(CHARSET_36)
    assert insensitive.normalize("Hé-llo W0rld!") == "hllow0rld"
    sensitive = Tokenizer(CHARSET_94, sensitive=True)
    assert sensitive.normalize("Grüße €5") == "Gre5"
    ids, lengths = sensitive.encode(["ü€"])
    assert lengths.tolist() == [1] and ids[0, 1].item() == 0


def test_charset_file(tmp_path):
    path = tmp_path / "chars.txt"
    path.write_text("α\nβ\nγ\n", encoding="utf-8")
    tok = Tokenizer(load_charset(str(path)), sensitive=True)
    ids, _ = tok.encode(["γαx"])
    assert ids[0, :4].tolist() == [4, 3, 1, 0]
    assert tok.decode_ids(ids[:, 1:]) == ["γα"]
    path.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="line 3"):
        load_charset(str(path))
    path.write_text("ab\n")
    with pytest.raises(ValueError, match="line 1"):
        load_charset(str(path))


def test_labels_longer_than_max_are_truncated():
    tok = Tokenizer(CHARSET_36, max_label_length=5)
    ids, lengths = tok.encode(["abcdefgh"])
    assert ids.shape == (1, 7) and lengths.item() == 6


def test_decode_cut_at_eos_and_confidence():
    tok = Tokenizer(CHARSET_36, max_label_length=3)
    logits = torch.zeros(2, 4, 37)
    logits[0, 0, 1] = logits[0, 1, 0] = logits[0, 2, 5] = logits[0, 3, 0] = 5.0
    logits[1, :, 2] = 5.0  # never emits EOS
    texts, conf = tok.decode(logits)
    assert texts == ["a", "bbbb"]
    p = torch.softmax(logits[0, 0], 0).max().item()
    assert conf[0] == pytest.approx(p * p, rel=1e-5)  # step 0 ('a') and the EOS step
    assert tok.decode(logits, drop_last_without_eos=True)[0] == ["a", "bbb"]
    empty = torch.zeros(1, 4, 37)
    empty[0, :, 0] = 5.0
    assert tok.decode(empty)[1] == [0.0]
