"""Learning test: the demo-preset SIGA_S (reduced SVTR), trained with its own recipe and losses on K-means
masks, memorises 8 rendered words to 100% greedy accuracy of its final prediction."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from config import make_config
from dataset import Collate, Sample
from model import build_model
from modules.kmeans_mask import text_mask_from_pil
from modules.losses import training_loss
from test_overfit import WORDS, memorise, render
from tokenizer import Tokenizer
from utils import seed_everything


def test_demo_siga_s_overfits_eight_words():
    seed_everything(0)
    config = make_config("demo", model="SIGA_S", num_iter=600, siga={"switch_iter": 50})
    assert config.optimizer == "adamw" and config.image_size == (48, 160)
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    images = [np.asarray(Image.fromarray(render(w)).resize((config.img_w, config.img_h), Image.BICUBIC)) for w in WORDS]
    batch = Collate()([Sample(image, text_mask_from_pil(Image.fromarray(image), seed=0).astype(np.float32), w)
                       for image, w in zip(images, WORDS)])
    seen_terms: set[str] = set()

    def siga_loss(m, ids, lengths, step):
        loss = training_loss(m(batch.images, ids[:, :-1], batch.masks), ids[:, 1:], lengths, step, config.siga,
                             config.num_steps, masks=batch.masks)
        assert torch.isfinite(loss.total), {k: v.item() for k, v in loss.terms.items()}
        seen_terms.update(loss.terms)
        return loss.total

    accuracy, steps, predictions = memorise(model, batch, tokenizer, config, siga_loss)
    assert accuracy == 1.0, f"after {steps} steps: {predictions}"
    assert {"ce_final", "seg", "align", "glyph_low", "glyph_mid"} <= seen_terms
