"""The K-means text-mask rule (SPEC §1.5), shared by the dataset's on-the-fly fallback and the generator.

A word crop is split into two grey-level clusters with scipy's 2-means; which cluster is *text* is
decided by a vote over the four image borders (the background is what dominates the borders). The
result is the pseudo-label of the segmentation loss (SPEC §4.2), so it must follow the official rule
exactly: scipy's own ``kmeans`` with its defaults, ``vq`` for the assignment, then the border vote.

It depends on numpy, scipy and PIL only, so the dataset and the mask tools can both import it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.cluster.vq import kmeans, vq

__all__ = ["kmeans_text_mask", "text_mask_from_pil", "border_votes"]


def border_votes(code: np.ndarray) -> int:
    """How many of the four borders cluster 1 dominates (strict '>' against the integer half).

    Rows are compared with ``w // 2`` and columns with ``h // 2`` exactly as the official rule does,
    so a tie (e.g. 3 of 6 pixels) does not count as domination.
    """
    h, w = code.shape
    return (int(code[0].sum() > w // 2) + int(code[-1].sum() > w // 2)
            + int(code[:, 0].sum() > h // 2) + int(code[:, -1].sum() > h // 2))


def _two_means_codes(observations: np.ndarray, seed: int | None) -> np.ndarray:
    """Cluster index (0/1) of every observation [N, 1] after scipy's 20-restart 2-means.

    With ``seed=None`` scipy draws its restarts from numpy's global RNG, as the official code does;
    an integer seed gives a private ``np.random.Generator`` instead, so the result is reproducible
    without touching (or depending on) the global state.
    """
    if seed is None:
        codebook, _ = kmeans(observations, 2)
    else:
        codebook, _ = kmeans(observations, 2, rng=np.random.default_rng(seed))
    # A cluster that empties is dropped by scipy (constant image -> one centroid -> all codes 0).
    return vq(observations, codebook)[0]


def kmeans_text_mask(grey: np.ndarray, seed: int | None = None) -> np.ndarray:
    """int32 [h, w] mask with values {0, 1}, 1 = text, for a grey image [h, w] (uint8, PIL "L").

    Steps (SPEC §1.5): flatten to h·w float scalars; ``scipy.cluster.vq.kmeans(obs, 2)`` with the
    defaults (iter=20 restarts, thresh=1e-5); ``vq`` assigns each pixel to the nearest centroid;
    if cluster 1 holds more than half of at least three of the four borders it is the background and
    the mask is ``1 - code``, otherwise ``code``. Images with one grey level (or fewer than two
    pixels, where 2-means is undefined) have a single cluster and give an all-zero mask.
    """
    grey = np.asarray(grey)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    h, w = grey.shape
    if grey.size < 2:
        return np.zeros((h, w), np.int32)
    observations = grey.reshape(-1, 1).astype(np.float64)
    code = _two_means_codes(observations, seed).reshape(h, w).astype(np.int32)
    return 1 - code if border_votes(code) >= 3 else code


def text_mask_from_pil(image: Image.Image, seed: int | None = None) -> np.ndarray:
    """The K-means text mask of a PIL image at its own resolution.

    The image is first converted to 8-bit grey "L" (ITU-R 601 luma), the input the official code
    clusters; see :func:`kmeans_text_mask` for the rule and ``seed``.
    """
    return kmeans_text_mask(np.asarray(image.convert("L")), seed)
