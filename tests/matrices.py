"""Test matrices of a chosen spectrum, and the importance scores they should get.

`spectrum_matrix` makes the rows the scoring tests and benchmarks run on: a signal of given
singular values in a random basis. `reference` computes the scores of docs/design.md section 1b
from the definition, in float64; tests/tolerances.py takes its rounding model from it. (The
paper's script, restated in tests/official.py, differs in its corners: a zero std counts as 1,
and it computes in the input's dtype.) The benchmarks put tests/ on sys.path to import this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def spectrum_matrix(
    n: int,
    d: int,
    *,
    decay: float = 0.0,
    sv=None,
    rank: int | None = None,
    weights: float = 0.0,
    noise: float = 0.0,
    columns: tuple[float, float] | None = None,
    offset: float = 0.0,
    seed: int = 0,
    part: int = 0,
    dtype=np.float64,
):
    """n x d rows: Gaussian coordinates scaled by sv (default i^-decay, i = 1..rank, rank
    default d) in a random orthonormal basis of rank directions, so the centred rows have
    singular values ~ sqrt(n) sv and exact rank len(sv) without noise. Then, each optional:
    every row times exp(weights * N(0, 1)) (heavy-tailed row weights), noise * N(0, 1) added to
    every entry, the columns scaled by U(columns), and offset * U(0.5, 1.5) added per column
    (a mean away from the origin).

    Drawn in float64 from numpy's default_rng, then rounded to dtype (a numpy dtype, or a torch
    dtype for a CPU tensor). The basis, column scales and offset come from the seed alone and
    the rows from (seed, part): parts 0, 1, ... of one seed are successive row blocks of one
    matrix, for inputs too large to make at once."""
    sv = np.arange(1, (d if rank is None else rank) + 1) ** -float(decay) if sv is None else np.asarray(sv, float)
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, len(sv))))[0].T
    scale = rng.uniform(*columns, d) if columns else 1.0
    shift = offset * rng.uniform(0.5, 1.5, d)
    rng = np.random.default_rng((seed, 1 + part))
    left = rng.standard_normal((n, len(sv))) * sv
    if weights:
        left *= np.exp(weights * rng.standard_normal((n, 1)))
    x = left @ basis
    if noise:
        x += noise * rng.standard_normal((n, d))
    x *= scale
    x += shift
    return torch.from_numpy(x).to(dtype) if isinstance(dtype, torch.dtype) else x.astype(dtype)


@dataclass
class Reference:
    """The method in float64: centre, optionally standardise, optionally scale rows to unit
    length (not centred again), thin SVD; the reference implementation's order."""

    scores: np.ndarray
    k: int
    singular_values: np.ndarray  # the top k
    rows: np.ndarray  # the matrix whose SVD it is
    pre: np.ndarray  # the rows as the engine's float32 products take them, before its shift
    col_scale: np.ndarray  # the column scale applied to pre after the shift (ones without)
    energy: float
    left: np.ndarray  # U_k
    right: np.ndarray  # V_k
    shifted: bool = True  # the engine shifts pre by an early mean (else pre is final: unit rows)


def reference(x, energy: float = 0.9, standardize: bool = False, l2_normalize: bool = False, k: int | None = None) -> Reference:
    """ScalSelect's scores as docs/design.md 1b defines them, in float64: centre; standardize:
    divide each column by its std (ddof 0), 0 for a column whose variance is <= 1e-20 of its
    mean square; l2_normalize: rows to unit length (a zero row stays 0); k the smallest rank
    with sum sigma_i^2 >= energy * total, or k given (energy 1 on a rank-deficient matrix,
    where the float64 sums decide k by their last bit); the scores ||U_k[i]||^2."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    col_scale = np.ones(x.shape[1])
    if standardize:
        std = xc.std(axis=0)
        varies = std**2 > 1e-20 * (x**2).mean(axis=0)
        col_scale = np.divide(1.0, std, out=np.zeros_like(std), where=varies)
        xc = xc * col_scale
    pre, shifted = x, True
    if l2_normalize:
        norms = np.linalg.norm(xc, axis=1, keepdims=True)
        xc = np.divide(xc, norms, out=np.zeros_like(xc), where=norms > 0)
        pre, col_scale, shifted = xc, np.ones(x.shape[1]), False
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = energy_rank(s**2, energy) if k is None else k
    return Reference((u[:, :k] ** 2).sum(axis=1), k, s[:k], xc, pre, col_scale, energy, u[:, :k], vt[:k].T, shifted)


def energy_rank(values: np.ndarray, energy: float) -> int:
    """The smallest k whose top k of these descending sigma^2 hold energy of their sum."""
    return int(np.argmax(np.cumsum(values) / np.sum(values) >= energy)) + 1
