"""The K-means text-mask rule (SPEC §1.5), shared by the dataset's on-the-fly fallback and the generator.

Two-cluster K-means on grey levels, then the border vote decides which cluster is background.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.cluster.vq import kmeans, vq


def kmeans_text_mask(grey: np.ndarray, seed: int | None = None) -> np.ndarray:
    """int32 [h, w] mask, 1 = text, for a uint8 grey image [h, w].

    scipy's ``kmeans(obs, 2)`` with its defaults (20 restarts, thresh 1e-5) and ``vq`` as in the
    official code; ``seed`` makes the restarts reproducible without touching numpy's global RNG.
    Cluster 1 is taken as background when it holds more than half of at least three of the four
    borders (strict '>', integer halves); a constant image gives an all-zero mask.
    """
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    h, w = grey.shape
    observations = grey.reshape(-1, 1).astype(np.float64)
    codebook, _ = kmeans(observations, 2, rng=np.random.default_rng(seed) if seed is not None else None)
    code = vq(observations, codebook)[0].reshape(h, w).astype(np.int32)
    votes = (int(code[0].sum() > w // 2) + int(code[-1].sum() > w // 2)
             + int(code[:, 0].sum() > h // 2) + int(code[:, -1].sum() > h // 2))
    return 1 - code if votes >= 3 else code


def text_mask_from_pil(image: Image.Image, seed: int | None = None) -> np.ndarray:
    """The K-means text mask of a PIL image at its own resolution (converted to 8-bit grey 'L')."""
    return kmeans_text_mask(np.asarray(image.convert("L")), seed)
