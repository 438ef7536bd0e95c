"""Learning test: the demo-preset SIGA_T (small ViT, MGP token layout, [0, 1] images), trained with its losses
on K-means masks of the resized images, memorises 8 rendered words to 100% greedy accuracy of P_final."""
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


def test_demo_siga_t_overfits_eight_words():
    seed_everything(0)
    config = make_config("demo", model="SIGA_T", num_iter=600, pct_start=0.15, siga={"switch_iter": 50})
    assert config.image_size == (32, 128) and config.token_layout == "mgp" and not config.normalize_images
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    images = [np.asarray(Image.fromarray(render(w)).resize((config.img_w, config.img_h), Image.BICUBIC)) for w in WORDS]
    batch = Collate(config.normalize_images)([Sample(image, text_mask_from_pil(Image.fromarray(image), seed=0)
                                                     .astype(np.float32), w) for image, w in zip(images, WORDS)])
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    seen_terms: set[str] = set()

    def siga_loss(m, ids, lengths, step):
        loss = training_loss(m(batch.images, ids[:, :-1], batch.masks), ids[:, 1:], lengths, step, config.siga,
                             config.num_steps)
        assert torch.isfinite(loss.total), {k: v.item() for k, v in loss.terms.items()}
        seen_terms.update(loss.terms)
        return loss.total

    accuracy, steps, predictions = memorise(model, batch, tokenizer, config, siga_loss)
    assert accuracy == 1.0, f"after {steps} steps: {predictions}"
    assert {"ce_final", "ce_one_d", "seg", "align", "glyph_low", "glyph_mid"} <= seen_terms
