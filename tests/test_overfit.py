"""Learning test: the demo-preset TRBA memorises 8 rendered words to 100% greedy accuracy."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from config import make_config
from dataset import Collate, Sample
from model import build_model
from modules.losses import recognition_loss
from optimization import build_optimizer, build_scheduler
from tokenizer import Tokenizer
from utils import seed_everything

WORDS = ["street", "coffee", "42", "open", "hotel", "exit", "pizza", "b7"]


def render(word: str, size=(128, 32)) -> np.ndarray:
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), 22)
    image = Image.new("RGB", size, (235, 230, 220))
    ImageDraw.Draw(image).text((6, 3), word, fill=(20, 20, 60), font=font)
    return np.asarray(image)


def memorise(model: torch.nn.Module, batch, tokenizer: Tokenizer, config, loss_fn) -> tuple[float, int, list[str]]:
    """Train on one batch until greedy decoding reads every word (checked every 50 steps).

    ``loss_fn(model, images, ids, lengths, step)`` returns the loss; ids are cut after the longest label
    as train.py does. Returns (accuracy, steps taken, last predictions).
    """
    ids, lengths = tokenizer.encode(batch.labels)
    ids = ids[:, : int(lengths.max()) + 1]
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)
    accuracy, predictions = 0.0, []
    for step in range(config.num_iter):
        model.train()
        loss = loss_fn(model, ids, lengths, step)
        optimizer.zero_grad()
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % 50 == 49:
            model.eval()
            with torch.no_grad():
                predictions, _ = tokenizer.decode(model(batch.images).logits)
            accuracy = float(np.mean([p == w for p, w in zip(predictions, batch.labels)]))
            if accuracy == 1.0:
                break
    return accuracy, step + 1, predictions


def test_demo_preset_overfits_eight_words():
    seed_everything(0)
    config = make_config("demo", num_iter=600, lr=1e-3, pct_start=0.15)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    batch = Collate()([Sample(render(w), None, w) for w in WORDS])
    accuracy, steps, predictions = memorise(
        model, batch, tokenizer, config,
        lambda m, ids, lengths, step: recognition_loss(m(batch.images, ids[:, :-1]).logits, ids[:, 1:], lengths))
    assert accuracy == 1.0, f"after {steps} steps: {predictions}"
