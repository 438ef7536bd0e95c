"""ONNX export of a model's greedy inference path, and onnxruntime sessions to run it (``tools/export_onnx.py``
is the command line, ``benchmarking.py`` times it beside PyTorch).

The graph is the whole greedy reader, unrolled: images [B, 3, H, W] in, for a dynamic batch B,

* ``ids`` [B, S] int64: each step's argmax, every step after the first EOS set to the tokenizer's padding id;
* ``probabilities`` [B, S] float32: each step's largest softmax probability, 1 after the first EOS, so that
  their product over a row is ``Tokenizer.decode``'s confidence (which is 0 for an empty reading);
* ``logits`` [B, S, C] float32: the final head's logits, as ``model(images, early_stop=False).logits``.

Why one unrolled graph rather than an encoder plus a one-step decoder graph: every model here decodes at
most S = ``max_label_length`` + 1 steps (26), so unrolling costs a graph of a few thousand nodes, not time;
one ``session.run`` then reads a batch with no Python loop, no per-step state to carry across calls (SIGA
runs three decoders in lockstep, each with its own LSTM state and fed-back token), and no way for a caller to
get the token feedback wrong. The price is that the graph always runs all S steps, where PyTorch stops once
every word has ended; per word, the steps before its first EOS, and so its reading, are the same.

Preprocessing stays outside the graph: the input is what ``dataset.Collate`` (or ``inference.preprocess``)
makes, described in the model's metadata (``img_h``, ``img_w``, ``mean``, ``std``, ``characters``, ...).

Two exporters of torch 2.14 export every model of ``model.MODELS`` with the same outputs (within 1e-5):
``torchscript`` (``torch.onnx.export(dynamo=False)``), the default, and ``dynamo`` (``torch.export`` +
onnxscript). The TorchScript exporter is the default because it exports 9–35 times faster (on one busy thread:
the tiny models in 0.4–2 s against 14–47 s, the paper-size TRBA in 1.7 s against 15 s), which keeps the tests
and ``bench.py``'s onnxruntime row cheap, and because it needs no onnxscript. It is deprecated since torch 2.9;
``dynamo`` is the way forward when it is removed, and is tested too.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from config import Config
from dataset import IMAGENET_MEAN, IMAGENET_STD
from evaluation import evaluation_mode
from tokenizer import Tokenizer

#: GridSample (the TPS) needs opset 16, LayerNormalization (SVTR, ViT) 17; 18 is the dynamo exporter's own
OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["ids", "probabilities", "logits"]
#: what the optional dependencies are called and where they are listed
ONNX_PACKAGES = ("onnx", "onnxruntime")
INSTALL_HINT = "pip install -r requirements-onnx.txt"


def missing_onnx_packages(packages: tuple[str, ...] = ONNX_PACKAGES) -> list[str]:
    """The optional packages of ``packages`` that cannot be imported (they are not in requirements.txt)."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


class GreedyGraph(nn.Module):
    """What the exported graph computes (module docstring): ``model``'s greedy path over ``steps`` steps with the
    EOS mask applied, returning (ids [B, S], probabilities [B, S], logits [B, S, C])."""

    def __init__(self, model: nn.Module, eos_id: int, pad_id: int, steps: int):
        super().__init__()
        self.model, self.eos_id, self.pad_id, self.steps = model, eos_id, pad_id, steps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(images, early_stop=False, max_steps=self.steps).logits
        probabilities, ids = logits.softmax(-1).max(-1)
        is_eos = (ids == self.eos_id).long()
        after_eos = is_eos.cumsum(1) - is_eos > 0
        return ids.masked_fill(after_eos, self.pad_id), probabilities.masked_fill(after_eos, 1.0), logits


def metadata(tokenizer: Tokenizer, config: Config, steps: int) -> dict[str, str]:
    """The graph's metadata_props: what a caller needs to preprocess images and read ``ids`` without this repo."""
    characters = tokenizer.decode_ids(torch.arange(tokenizer.num_classes)[:, None])  # special ids print as ""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if config.normalize_images else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return {"model": config.model, "img_h": str(config.img_h), "img_w": str(config.img_w), "steps": str(steps),
            "input": "RGB float32 [B, 3, img_h, img_w], bicubic resize, (pixel / 255 - mean) / std",
            "mean": json.dumps(mean), "std": json.dumps(std), "token_layout": tokenizer.layout,
            "eos_id": str(tokenizer.eos_id), "pad_id": str(tokenizer.pad_id), "characters": json.dumps(characters)}


def export_onnx(model: nn.Module, tokenizer: Tokenizer, config: Config, path: str | os.PathLike,
                steps: int | None = None, exporter: str = "torchscript") -> Path:
    """Write ``model``'s greedy path (fp32, eval mode, ``steps`` steps, default the config's S) as one ONNX file at
    ``path`` with a dynamic batch axis and the ``metadata``, checked by ``onnx.checker``. The model is traced on its
    own device and is back in its own mode afterwards."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")
    steps = steps or config.num_steps
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with evaluation_mode(model):
        graph = GreedyGraph(model, tokenizer.eos_id, tokenizer.pad_id, steps).eval()
        example = torch.zeros(2, 3, config.img_h, config.img_w, device=next(model.parameters()).device)
        with torch.no_grad():
            _EXPORTERS[exporter](graph, example, path)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata(tokenizer, config, steps))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _export_torchscript(graph: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # The exporter's deprecation notices (the choice is the module docstring's); its caution that an LSTM
        # exported at batch 2 may fail at other batch sizes (the initial states are zeros of the input's batch);
        # and the tracer's notes on Python conditions, which here are all shape guards (input size, LSTM state
        # size, timm's asserts) that hold for every input of the exported size. tests/test_export_onnx.py runs
        # every model's graph at two batch sizes against PyTorch.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes={name: {0: "batch"} for name in
                                                                   INPUT_NAMES + OUTPUT_NAMES})


def _export_dynamo(graph: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # torch.export's notes on its own internals: nn.LSTM re-assigns its weight list while traced, and the
        # traced graph calls torch._check_is_size, which a future torch renames
        warnings.filterwarnings("ignore", r"The tensor attributes .*_flat_weights")
        warnings.filterwarnings("ignore", "_check_is_size will be removed")
        torch.onnx.export(graph, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_shapes={"images": {0: batch}}, external_data=False,
                          verbose=False)


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def cpu_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPUExecutionProvider with ``threads`` intra-op
    threads (default: onnxruntime's own choice) and one inter-op thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The graph's outputs by name (``OUTPUT_NAMES``) for images [B, 3, H, W], as CPU tensors."""
    outputs = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.detach().float().cpu().contiguous().numpy()})
    return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, outputs)}
