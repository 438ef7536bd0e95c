"""Charsets and the tokenizer: ids, special tokens, normalisation, encoding and decoding."""
from __future__ import annotations

import string
from functools import lru_cache

import pytest
import torch

from config import Config
from golden import SHARED, require
from tokenizer import CHARSET_36, CHARSET_94, MGP_CHARSET_36, TOKEN_LAYOUTS, Tokenizer, load_charset

GOLDEN_T = SHARED / "golden_siga_t"
#: the heads ``test_final`` reports, with the logits they decode (golden_siga_t README §3.2)
OFFICIAL_HEADS = {"char(TRBA)": "P_TRBA", "gly(2D1)": "P_2D1", "Iter(F1)": "P_F1", "final": "P_final"}


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


@lru_cache(maxsize=1)
def golden_t_io() -> dict:
    """The SIGA_T golden ``io.pt`` (labels, official encodings, eval logits and ``decoded`` strings)."""
    return torch.load(require(GOLDEN_T / "io.pt"), weights_only=True)


def mgp_tokenizer() -> Tokenizer:
    return Tokenizer.from_config(Config(token_layout="mgp"))


def test_layout_ids_and_sizes():
    dtrb = Tokenizer(CHARSET_36)
    assert (dtrb.num_classes, dtrb.num_embeddings, dtrb.sos_id, dtrb.eos_id, dtrb.pad_id) == (37, 38, 37, 0, 0)
    mgp = mgp_tokenizer()
    assert (mgp.num_classes, mgp.num_embeddings, mgp.sos_id, mgp.eos_id, mgp.pad_id) == (38, 39, 0, 1, 0)
    wide = Tokenizer(load_charset("94", True, "mgp"), sensitive=True, layout="mgp")
    assert (wide.num_classes, wide.num_embeddings) == (96, 97)
    assert TOKEN_LAYOUTS == ("dtrb", "mgp") and Tokenizer.eos_id == 0  # class-level ids stay the dtrb ones


def test_charset_order_per_layout():
    assert load_charset("36") == CHARSET_36 == Tokenizer.from_config(Config()).charset
    assert load_charset("36", layout="mgp") == MGP_CHARSET_36 == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert mgp_tokenizer().charset == MGP_CHARSET_36
    assert load_charset("94", layout="mgp") == load_charset("94") == CHARSET_94 == string.printable[:-6]


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="dtrb, mgp"):
        Tokenizer(CHARSET_36, layout="abinet")
    with pytest.raises(ValueError, match="dtrb, mgp"):
        load_charset("36", layout="abinet")
    with pytest.raises(ValueError, match="dtrb, mgp"):
        Tokenizer.from_config(Config(token_layout="abinet"))


def test_mgp_encode_examples_and_round_trip():
    tok = mgp_tokenizer()
    ids, lengths = tok.encode(["kumar", "a", "Z9!"])
    assert ids.shape == (3, 27) and lengths.tolist() == [6, 2, 3]
    assert ids[0].tolist() == [0, 22, 32, 24, 12, 29, 1] + [0] * 20
    assert ids[1].tolist() == [0, 12, 1] + [0] * 24
    assert ids[2, :4].tolist() == [0, 37, 11, 1]
    assert tok.decode_ids(ids[:, 1:]) == ["kumar", "a", "z9"]
    texts, confidences = tok.decode(one_hot_logits(ids[:, 1:].tolist(), tok.num_classes))
    assert texts == ["kumar", "a", "z9"] and all(0.99 < c <= 1.0 for c in confidences)
    long_ids, long_lengths = Tokenizer(MGP_CHARSET_36, max_label_length=5, layout="mgp").encode(["abcdefgh"])
    assert long_ids[0].tolist() == [0, 12, 13, 14, 15, 16, 1] and long_lengths.item() == 6


def test_mgp_encode_matches_golden():
    inputs = golden_t_io()["inputs"]
    ids, lengths = mgp_tokenizer().encode(inputs["labels"])
    assert torch.equal(ids, inputs["text_ids"]) and torch.equal(lengths, inputs["length"])


def test_mgp_clean_decode_drops_go_and_stops_at_eos():
    tok = mgp_tokenizer()
    go, eos, a, b = 0, 1, 12, 13
    logits = one_hot_logits([[a, go, b, eos, a], [go, go, go, go, go], [b, b, go, b, b], [eos, a, a, a, a]], 38)
    texts, confidences = tok.decode(logits)
    assert texts == ["ab", "", "bbbb", ""]
    assert confidences[0] > 0.99 and confidences[1] == confidences[3] == 0.0
    preds, official_conf, raws = tok.decode_official(logits)
    assert raws[:2] == ["a[GO]b[s]a", "[GO]" * 5] and preds == ["a[GO]b", "[GO]" * 4 + "[GO", "bb[GO]b", ""]
    assert official_conf[3] == 0.0 and official_conf[1] > 0.99


@pytest.mark.parametrize("group", ["eval_f32", "eval_f64"])
def test_mgp_decode_official_matches_golden(group):
    outputs = golden_t_io()[group]
    tok = mgp_tokenizer()
    for head, logits_key in OFFICIAL_HEADS.items():
        expected = outputs["decoded"][head]
        preds, confidences, raws = tok.decode_official(outputs[logits_key])
        assert raws == expected["raw"] and preds == expected["pred"], head
        assert confidences == pytest.approx(expected["confidence"], rel=1e-6, abs=0.0), head


def test_mgp_clean_decode_on_golden_logits():
    """The clean decode keeps every character step before the first EOS and nothing else: the official pred
    without its [GO] tokens, plus the last step the official decode drops when there is no [s]. Its confidence
    also counts the EOS step (``decode``'s rule), i.e. the official one times that step's probability."""
    tok = mgp_tokenizer()
    outputs = golden_t_io()["eval_f32"]
    for head, logits_key in OFFICIAL_HEADS.items():
        logits = outputs[logits_key]
        texts, confidences = tok.decode(logits)
        preds, official_conf, raws = tok.decode_official(logits)
        max_probs, ids = logits.float().softmax(-1).max(-1)
        for row, (text, pred, raw) in enumerate(zip(texts, preds, raws)):
            assert "[GO" not in text and "[s" not in text, head
            assert text == raw.split("[s]")[0].replace("[GO]", ""), head
            if "[s]" in raw:
                assert text == pred.replace("[GO]", ""), head
                eos_step = ids[row].tolist().index(tok.eos_id)
                expected = official_conf[row] * max_probs[row, eos_step].item()
                assert confidences[row] == pytest.approx(expected, rel=1e-5), head
            elif raw.endswith("[GO]"):  # the official pred ends in "[GO", the clean text loses nothing
                assert text == pred.replace("[GO]", "").removesuffix("[GO"), head
            else:  # the official decode drops the last step's character, the clean one keeps it
                assert text == pred.replace("[GO]", "") + raw[-1], head


def test_decode_official_needs_mgp_layout():
    with pytest.raises(ValueError, match="mgp"):
        Tokenizer(CHARSET_36).decode_official(torch.zeros(1, 3, 37))
