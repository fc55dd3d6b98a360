"""The paper's scoring script (`scripts/cur.py` of the ScalSelect code), restated from its
definition (not its code), numpy only: the slow path the tests and benchmarks hold scalselect to.

Centre the columns; optionally divide them by their population std (a zero std counts as 1)
and scale the rows to unit length (a zero norm counts as 1); take the thin SVD of that matrix
as it is; k is one past the first index whose cumulative energy share reaches the threshold
(searchsorted), clamped to [1, rank]; the scores are the leverage of the top k left vectors.
The script takes the SVD twice (once for k, once for the vectors); so does `scores`. The
arithmetic runs in the input's dtype, as the script's does.
"""

from __future__ import annotations

import numpy as np


def preprocess(matrix: np.ndarray, standardize: bool, l2_normalize: bool) -> np.ndarray:
    a = matrix - matrix.mean(axis=0, keepdims=True)
    if standardize:
        std = a.std(axis=0, keepdims=True)
        std[std == 0] = 1
        a /= std
    if l2_normalize:
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        norms[norms == 0] = 1
        a = a / norms
    return a


def scores(a: np.ndarray, threshold: float = 0.9) -> tuple[np.ndarray, int]:
    s = np.linalg.svd(a, full_matrices=False)[1]  # the first thin SVD chooses k
    share = np.cumsum(s**2) / np.sum(s**2)
    k = max(1, min(int(np.searchsorted(share, threshold)) + 1, len(s)))
    u = np.linalg.svd(a, full_matrices=False)[0]  # the second gives the left vectors
    return (u[:, :k] ** 2).sum(axis=1), k


def official(
    x: np.ndarray, standardize: bool = False, l2_normalize: bool = False, threshold: float = 0.9
) -> tuple[np.ndarray, int]:
    """The script's scores and k of the rows of x, in float64."""
    return scores(preprocess(np.asarray(x, dtype=np.float64), standardize, l2_normalize), threshold)
