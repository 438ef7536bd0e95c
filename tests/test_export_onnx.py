"""ONNX export (``onnx_export``, ``tools/export_onnx.py``): every model's greedy graph against PyTorch under
onnxruntime, on real IIIT5k words, at two batch sizes, with the in-graph EOS mask; the parity check failing
when it should; the command line end to end; the dynamo exporter.

The models are tiny and random, their final generator sharpened (×10) and its EOS bias raised (seeded), so that
their readings differ from word to word and several end before the last step: a graph that ignored its input,
lost a step or masked the wrong positions would change predictions.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

REASON = "the ONNX export tests need onnx and onnxruntime: pip install -r requirements-onnx.txt"
onnx = pytest.importorskip("onnx", reason=REASON)
pytest.importorskip("onnxruntime", reason=REASON)

from checkpoint import atomic_save, training_state  # noqa: E402 (after the skip: these tests need onnx)
from config import Config, make_config  # noqa: E402
from dataset import Collate, LmdbDataset  # noqa: E402
from golden import SHARED, require  # noqa: E402
from model import build_model  # noqa: E402
from onnx_export import cpu_session, export_onnx, run_session  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402
from tools.export_onnx import main, verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IIIT5K = SHARED / "IIIT5k_train_2000"
#: how much each model's EOS bias is raised so that a share of its readings end early (seed 0)
EOS_BOOST = {"TRBA": 1.0, "SIGA_R": 3.0, "TSBA": 1.0, "SIGA_S": 3.0, "VITBA": 0.0, "SIGA_T": 0.0}
MAX_LOGIT_DIFFERENCE = 1e-3


def sharpened_model(name: str, seed: int = 0, **overrides) -> tuple[torch.nn.Module, Tokenizer, Config]:
    """A tiny random ``name`` (with config ``overrides``) in eval mode whose final generator is ×10 with EOS_BOOST on
    its EOS bias."""
    torch.manual_seed(seed)
    config = make_config("tiny", model=name, **overrides)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer).eval()
    generator = model.decoder.generator if hasattr(model, "decoder") else model.siga.final_decoder.generator
    with torch.no_grad():
        generator.weight.mul_(10.0)
        generator.bias[tokenizer.eos_id] += EOS_BOOST[name]
    return model, tokenizer, config


def real_images(config: Config, tokenizer: Tokenizer, count: int) -> torch.Tensor:
    """The first ``count`` IIIT5k crops, preprocessed as test.py does."""
    dataset = Subset(LmdbDataset(require(IIIT5K), tokenizer, config.image_size, "test"), range(count))
    return next(iter(DataLoader(dataset, batch_size=count, collate_fn=Collate(config.normalize_images)))).images


@pytest.fixture(scope="module", params=["TRBA", "SIGA_R"])
def exported(request, tmp_path_factory):
    """(model, tokenizer, config, ONNX path) of a sharpened tiny TRBA or SIGA_R, exported once per module."""
    model, tokenizer, config = sharpened_model(request.param)
    path = export_onnx(model, tokenizer, config, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return model, tokenizer, config, path


def test_graph_reads_real_words_as_pytorch_does(exported):
    model, tokenizer, config, path = exported
    report = verify(model, tokenizer, config, path, require(IIIT5K), batch_size=64, limit=200)
    texts = [text for text, _, _ in report.pytorch.predictions]
    assert len(set(texts)) >= 10, "the random model reads every word alike: the comparison would prove little"
    assert sum(0 < len(text) < config.num_steps for text in texts) >= 10, "too few readings end before the last step"
    assert report.samples == 200 and report.identical_percent >= 99.9 and report.passed
    assert report.max_logit_difference < MAX_LOGIT_DIFFERENCE
    assert report.onnxruntime.accuracy == report.pytorch.accuracy
    assert [text for text, _, _ in report.onnxruntime.predictions] == texts


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_and_in_graph_eos_mask(exported, batch):
    """At two batch sizes: logits as PyTorch's; ``ids`` decode to the same strings, with padding after the first
    EOS, so that joining the metadata's ``characters`` of a row spells the reading; the product of
    ``probabilities`` is the tokenizer's confidence."""
    model, tokenizer, config, path = exported
    images = real_images(config, tokenizer, 40)[-batch:]
    session = cpu_session(path, 1)
    outputs = run_session(session, images)
    characters = json.loads(session.get_modelmeta().custom_metadata_map["characters"])
    with torch.inference_mode():
        reference = model(images, early_stop=False).logits
    texts, confidences = tokenizer.decode(reference)
    assert outputs["logits"].shape == reference.shape == (batch, config.num_steps, tokenizer.num_classes)
    assert (outputs["logits"] - reference).abs().max() < MAX_LOGIT_DIFFERENCE
    assert tokenizer.decode_ids(outputs["ids"]) == texts
    assert ["".join(characters[i] for i in row) for row in outputs["ids"].tolist()] == texts
    ids = reference.argmax(-1)
    is_eos = ids == tokenizer.eos_id
    after = is_eos.cumsum(1) - is_eos.long() > 0
    assert torch.equal(outputs["ids"], ids.masked_fill(after, tokenizer.pad_id))
    assert bool((outputs["probabilities"][after] == 1.0).all())
    kept = [i for i, text in enumerate(texts) if text]
    assert outputs["probabilities"].prod(1)[kept].tolist() == pytest.approx([confidences[i] for i in kept], rel=1e-4)


def test_graph_declares_its_batch_axis_and_metadata(exported):
    model, tokenizer, config, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["ids", "probabilities", "logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == config.model and int(meta["steps"]) == config.num_steps
    assert int(meta["eos_id"]) == tokenizer.eos_id and (int(meta["img_h"]), int(meta["img_w"])) == config.image_size


def test_parity_check_fails_for_a_graph_of_other_weights(tmp_path):
    """The check can fail: a graph exported from seed 0 against the PyTorch model of seed 1."""
    model, tokenizer, config = sharpened_model("TRBA")
    path = export_onnx(model, tokenizer, config, tmp_path / "seed0.onnx")
    other = sharpened_model("TRBA", seed=1)[0]
    report = verify(other, tokenizer, config, path, require(IIIT5K), limit=50)
    assert report.samples == 50 and report.identical_percent < 50 and not report.passed
    assert report.max_logit_difference > 1.0


def test_cli_exports_and_verifies_real_words(tmp_path):
    model, tokenizer, config = sharpened_model("SIGA_R")
    atomic_save(training_state(model, config, tokenizer), tmp_path / "siga.pth")
    out = tmp_path / "out" / "siga.onnx"
    result = subprocess.run([sys.executable, "-m", "tools.export_onnx", "--checkpoint", str(tmp_path / "siga.pth"),
                             "--out", str(out), "--verify", str(require(IIIT5K)), "--limit", "100", "--batch_size",
                             "40"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and f"exported SIGA_R from {tmp_path / 'siga.pth'} to {out}" in result.stdout
    assert "samples: 100\nidentical predictions: 100 (100.00 %)\n" in result.stdout
    difference = float(re.search(r"max \|logit difference\|: (\S+)", result.stdout).group(1))
    assert difference < MAX_LOGIT_DIFFERENCE
    assert re.search(r"accuracy: PyTorch (\S+) %, onnxruntime \1 %", result.stdout)


def test_cli_names_a_missing_lmdb_and_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.onnx"), "--verify",
              str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and f"no LMDB directory at {tmp_path / 'nowhere'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.onnx")])
    assert exit_.value.code == 2 and f"{tmp_path / 'none.pth'}: checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("name, overrides", [("TSBA", {}), ("SIGA_S", {}), ("VITBA", {}), ("SIGA_T", {}),
                                             ("SIGA_R", {"glyph_context": "columns"})])
def test_every_other_model_exports_and_matches_pytorch(tmp_path, name, overrides):
    """The other models, and SIGA_R with the glyph column context of its CPU presets."""
    model, tokenizer, config = sharpened_model(name, **overrides)
    path = export_onnx(model, tokenizer, config, tmp_path / f"{name}.onnx")
    session = cpu_session(path, 1)
    characters = json.loads(session.get_modelmeta().custom_metadata_map["characters"])
    images = real_images(config, tokenizer, 5)
    for batch in (images[:2], images):
        outputs = run_session(session, batch)
        with torch.inference_mode():
            reference = model(batch, early_stop=False).logits
        texts = tokenizer.decode(reference)[0]
        assert (outputs["logits"] - reference).abs().max() < MAX_LOGIT_DIFFERENCE
        assert tokenizer.decode_ids(outputs["ids"]) == texts
        assert ["".join(characters[i] for i in row) for row in outputs["ids"].tolist()] == texts


def test_dynamo_exporter_gives_the_same_graph_outputs(tmp_path):
    pytest.importorskip("onnxscript", reason=REASON)
    model, tokenizer, config = sharpened_model("TRBA")
    path = export_onnx(model, tokenizer, config, tmp_path / "dynamo.onnx", steps=10, exporter="dynamo")
    report = verify(model, tokenizer, config, path, require(IIIT5K), limit=50)
    assert report.samples == 50 and report.passed and report.max_logit_difference < MAX_LOGIT_DIFFERENCE
    assert run_session(cpu_session(path), real_images(config, tokenizer, 3))["ids"].shape == (3, 10)
