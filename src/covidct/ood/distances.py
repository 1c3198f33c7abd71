"""The detector's maths on standardised features: the k-nearest-neighbour and Mahalanobis scores, the Ledoit-Wolf
shrunk principal axes the Mahalanobis score uses, and numpy's BLAS held to one thread while scoring (OpenBLAS's idle
workers spin after a product and slow the network's next pass: benchmarks/OOD.md)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller, made once (it scans the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    return _blas_controller().limit(limits=1, user_api="blas")


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def ood_scores(method: str, z: np.ndarray, bank: np.ndarray, location: np.ndarray, k: int) -> np.ndarray:
    """The score of standardised features `z`: knn, the cosine distance to the k-th nearest training image;
    mahalanobis, the distance to the training mean under the shrunk precision matrix `bank`."""
    if len(z) == 0:
        return np.zeros(0)
    if method == "knn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=min(k, len(bank)), algorithm="brute", metric="cosine").fit(bank)
        dist, _ = nn.kneighbors(unit_rows(z))
        return dist[:, -1]
    # Sigma = W diag(v) W^T + floor (I - W W^T): the squared distance splits along the axes and the rest
    variances, floor = location[:-1], location[-1]
    proj = z @ bank
    rest = np.maximum((z * z).sum(1) - (proj * proj).sum(1), 0)
    return np.sqrt(rest / floor + (proj * proj / variances).sum(1))


def shrunk_axes(z: np.ndarray, min_variance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(axes p x r, [shrunk variance along each axis..., floor]) of the Ledoit-Wolf covariance of centred `z`:
    (1 - a) S + a mu I with S the sample covariance, a scikit-learn's shrinkage and mu = trace(S) / p; no variance
    (and no floor) below `min_variance`."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, p = z.shape
    shrinkage = float(ledoit_wolf_shrinkage(z, assume_centered=True))
    _, sing, vt = np.linalg.svd(z, full_matrices=False)
    keep = sing > sing.max() * 1e-9 if len(sing) else sing > 0
    sample_var = sing[keep] ** 2 / n
    mu = float((z * z).sum() / (n * p))
    floor = max(shrinkage * mu, 1e-12, min_variance)
    return vt[keep].T, np.append(np.maximum((1 - shrinkage) * sample_var + floor, min_variance), floor)
