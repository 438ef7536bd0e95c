"""Learning test: the demo-preset SIGA_R, trained with all its losses on K-means masks, memorises
8 rendered words to 100% greedy accuracy of its final prediction."""
from __future__ import annotations

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


def test_demo_siga_overfits_eight_words():
    seed_everything(0)
    config = make_config("demo", model="SIGA_R", num_iter=600, lr=1e-3, pct_start=0.15, siga={"switch_iter": 50})
    tokenizer = Tokenizer.from_config(config)
    model = build_model(config, tokenizer)
    images = [render(w) for w in WORDS]
    batch = Collate()([Sample(image, text_mask_from_pil(Image.fromarray(image), seed=0), w)
                       for image, w in zip(images, WORDS)])
    settings = config.siga
    seen_terms: set[str] = set()

    def siga_loss(m, ids, lengths, step):
        loss, terms = training_loss(m(batch.images, ids[:, :-1], batch.masks), ids[:, 1:], lengths, step, settings,
                                    config.num_steps)
        assert torch.isfinite(loss), {k: v.item() for k, v in terms.items()}
        seen_terms.update(terms)
        return loss

    accuracy, steps, predictions = memorise(model, batch, tokenizer, config, siga_loss)
    assert accuracy == 1.0, f"after {steps} steps: {predictions}"
    assert steps > 50  # trained past the loss switch
    assert {"ce_one_d", "ce_trba", "ce_position_low", "ce_position_mid", "ce_fusion_low", "ce_fusion_mid", "ce_final",
            "seg", "align", "glyph_low", "glyph_mid"} <= seen_terms
