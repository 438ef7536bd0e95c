"""torch.hub entries: load a trained checkpoint as a ready :class:`inference.Recognizer`, or build a model
without weights.

    import torch
    reader = torch.hub.load("path/to/this/repo", "siga_r", source="local", checkpoint="siga_r.pth")
    print(reader("word.png").text)                        # one image: a Recognition(text, confidence)
    print([r.text for r in reader(["a.png", "b.jpg"])])    # several: a list
    model = torch.hub.load("path/to/this/repo", "build_siga_r", source="local", preset="demo")  # untrained

Weights are never downloaded: ``checkpoint`` is a file written by ``train.py`` or one of the authors' released
checkpoints. Each entry accepts only a checkpoint of its own model (``siga_r`` refuses a TRBA checkpoint).
"""
from __future__ import annotations

import os
from typing import Callable

import torch.nn as nn

from config import make_config
from inference import Recognizer
from model import build_model

#: what torch.hub checks is importable before loading this file
dependencies = ["torch", "torchvision", "numpy", "PIL", "cv2", "lmdb", "natsort", "scipy", "timm"]


def _pretrained_entry(model_name: str) -> Callable[..., Recognizer]:
    def load(checkpoint: str | os.PathLike, device: str | None = None, amp: str = "off", batch_size: int = 32,
             channels_last: str = "auto") -> Recognizer:
        return Recognizer.from_checkpoint(checkpoint, device, amp, channels_last, batch_size,
                                          expected_model=model_name)

    load.__name__ = load.__qualname__ = model_name.lower()
    load.__doc__ = (f"A {model_name} Recognizer from ``checkpoint`` (a file of train.py or an official release) on "
                    f"``device`` (default: CUDA when present), with ``amp`` 'off' or 'bf16'.")
    return load


def _build_entry(model_name: str) -> Callable[..., nn.Module]:
    def build(preset: str = "paper", **overrides) -> nn.Module:
        return build_model(make_config(preset, model=model_name, **overrides))

    build.__name__ = build.__qualname__ = f"build_{model_name.lower()}"
    build.__doc__ = (f"An untrained {model_name} (official initialisation) of ``preset`` ('paper', 'demo', 'cpu', "
                     f"'tiny') with config ``overrides`` (e.g. charset='94', sensitive=True).")
    return build


trba, siga_r = _pretrained_entry("TRBA"), _pretrained_entry("SIGA_R")
tsba, siga_s = _pretrained_entry("TSBA"), _pretrained_entry("SIGA_S")
vitba, siga_t = _pretrained_entry("VITBA"), _pretrained_entry("SIGA_T")
build_trba, build_siga_r = _build_entry("TRBA"), _build_entry("SIGA_R")
build_tsba, build_siga_s = _build_entry("TSBA"), _build_entry("SIGA_S")
build_vitba, build_siga_t = _build_entry("VITBA"), _build_entry("SIGA_T")
