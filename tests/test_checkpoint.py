"""This repo's checkpoint files: atomic writes, validation, and one-line errors for every unusable file."""
from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from checkpoint import atomic_save, check_finetune_source, load_checkpoint, load_model
from config import Config, make_config
from conftest import encode_image, make_word_lmdb, render_word, run_entry_point, write_tiny_checkpoint
from tokenizer import Tokenizer


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


# Robust loading: every unusable file is one line naming the file and what is wrong
def one_line_error(call, pattern: str) -> str:
    with pytest.raises(ValueError, match=pattern) as error:
        call()
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


@pytest.fixture(scope="module")
def tiny_trba(tmp_path_factory):
    path = tmp_path_factory.mktemp("robust") / "trba.pth"
    write_tiny_checkpoint(path)
    return path


def test_truncated_empty_and_foreign_files(tiny_trba, tmp_path):
    data = tiny_trba.read_bytes()
    for name, content in (("half.pth", data[: len(data) // 2]), ("cut.pth", data[:-100])):
        (tmp_path / name).write_bytes(content)
        one_line_error(lambda: load_model(tmp_path / name), rf"{name}: truncated or corrupt checkpoint")
    (tmp_path / "empty.pth").write_bytes(b"")
    one_line_error(lambda: load_model(tmp_path / "empty.pth"), r"empty.pth: empty file \(0 bytes\)")
    (tmp_path / "notes.pth").write_text("hello world\n")
    one_line_error(lambda: load_model(tmp_path / "notes.pth"), r"notes.pth: not a PyTorch checkpoint")
    (tmp_path / "image.pth").write_bytes(encode_image(render_word("png")))
    one_line_error(lambda: load_model(tmp_path / "image.pth"), r"image.pth: not a PyTorch checkpoint")
    atomic_save(torch.zeros(3), tmp_path / "tensor.pth")
    one_line_error(lambda: load_model(tmp_path / "tensor.pth"), r"tensor.pth: not a checkpoint of this repository")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_model(tmp_path / "nothing.pth")


def test_pickle_that_needs_weights_only_false(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": {"w": torch.ones(1)}, "config": {}, "args": argparse.Namespace(lr=1.0)}, path)
    one_line_error(lambda: load_model(path), r"unsafe.pth: holds Python objects of type argparse.Namespace, which "
                                             r"torch.load\(weights_only=True\) refuses")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    one_line_error(lambda: load_model(plain), r"plain.pkl: a plain Python pickle, not written by torch.save")


def test_checkpoint_of_another_model_or_charset(tiny_trba, tmp_path):
    one_line_error(lambda: load_model(tiny_trba, expected_model="SIGA_R"), r"trba.pth: a TRBA checkpoint, not SIGA_R$")
    checkpoint = load_checkpoint(tiny_trba)
    other = make_config("tiny", model="SIGA_R")
    one_line_error(lambda: check_finetune_source(checkpoint, other, Tokenizer.from_config(other), tiny_trba),
                   r"trba.pth: a TRBA checkpoint, not SIGA_R$")
    sensitive = make_config("tiny", model="TRBA", charset="94", sensitive=True)
    one_line_error(lambda: check_finetune_source(checkpoint, sensitive, Tokenizer.from_config(sensitive), tiny_trba),
                   r"trba.pth: charset differs from this run's \(36 vs 94 characters\)")
    checkpoint["charset"] = checkpoint["charset"] + "!?"  # weights of 36 characters saved with a 38-character set
    atomic_save(checkpoint, tmp_path / "mixed.pth")
    message = one_line_error(lambda: load_model(tmp_path / "mixed.pth"), r"mixed.pth: weights of a TRBA checkpoint do "
                                                                            r"not fit this AttentionRecognizer")
    assert "another charset" in message and "decoder.generator.weight (37, " in message


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    lmdb_path = make_word_lmdb(tmp_path / "db", ["word"])
    for script, extra in (("demo.py", ["--images", str(tmp_path)]), ("test.py", ["--eval_data", str(lmdb_path)])):
        code, _, err = run_entry_point(script, "--checkpoint", tmp_path / "broken.pth", *extra)
        assert code == 2 and "broken.pth:" in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("pair", [("TRBA", "SIGA_R"), ("TSBA", "SIGA_S")])
def test_a_stage_handover_copies_every_baseline_tensor_into_both_branches(tmp_path, pair):
    """The baseline's BiLSTMs start the SIGA model's recognition and alignment branches, its attention decoder
    every attention decoder (fusion ones included); its TPS and backbone keep their names; the glyph network
    keeps its initialisation."""
    from checkpoint import load_handover, training_state
    from model import build_model

    baseline_name, siga_name = pair
    baseline_config, siga_config = make_config("tiny", model=baseline_name), make_config("tiny", model=siga_name)
    baseline = build_model(baseline_config)
    with torch.no_grad():
        for index, tensor in enumerate(baseline.state_dict().values()):
            tensor.copy_(torch.full_like(tensor, index + 1))  # every tensor recognisable, none equal to an init
    path = tmp_path / "stage.pth"
    torch.save(training_state(baseline, baseline_config, Tokenizer.from_config(baseline_config)), path)
    siga = build_model(siga_config)
    glyph_before = {k: v.clone() for k, v in siga.state_dict().items() if k.startswith(("glyph.", "siga.final"))
                    or ".fusion.gate." in k}
    source = baseline.state_dict()
    written = load_handover(siga, path)
    target = siga.state_dict()
    copied = sum(2 if k.startswith("sequence.") else 4 if k.startswith("decoder.") else 1 for k in source)
    assert written == copied
    for key, value in source.items():
        if key.startswith("sequence."):
            names = ["siga." + key, "siga.alignment_" + key]
        elif key.startswith("decoder."):
            names = ["siga.trba_" + key, "siga.alignment_" + key,
                     *(f"siga.fusion_{key.replace('decoder.', f'decoder_{scale}.')}" for scale in ("low", "mid"))]
        else:
            names = [key]
        assert all(torch.equal(target[name], value) for name in names), key
    assert all(torch.equal(target[k], v) for k, v in glyph_before.items())


def test_a_stage_handover_rejects_a_checkpoint_that_is_not_the_baseline(tmp_path):
    from checkpoint import load_handover, training_state
    from model import build_model

    wide = make_config("tiny", model="TRBA", hidden_size=48)
    path = tmp_path / "wide.pth"
    torch.save(training_state(build_model(wide), wide, Tokenizer.from_config(wide)), path)
    with pytest.raises(ValueError, match=r"wide\.pth: not the baseline of this model: .*shape"):
        load_handover(build_model(make_config("tiny", model="SIGA_R")), path)
