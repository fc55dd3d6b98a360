"""Top eigenpairs of a symmetric PSD matrix, as many as hold a given share of its trace.

The scorer needs only the leading eigenpairs of the D x D centred Gram matrix (or the N x N
kernel when N < D): those whose eigenvalues add up to `energy` x trace. A full eigh of a
4096 x 4096 matrix costs ~13 s on two cores; a block Krylov (Lanczos) basis of a few hundred
vectors finds the same leading pairs in about a second. The Krylov path stops only when every
wanted Ritz pair has a residual <= RESIDUAL_TOL ||A||, and falls back to the full eigh when the
basis would grow past half the matrix (then the full solve is cheaper anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import EIG_METHODS

# Below this size a full eigh is cheaper than any iteration.
FULL_EIGH_MAX = 1536
# Residual ||A v - theta v|| per wanted pair, relative to ||A||_2. At 1e-8 the scores of a
# 20,000 x 4,096 matrix (k = 104) match the full eigh to 1.5e-8, the float32 projection's own
# rounding; 1e-7 gave 9e-7.
RESIDUAL_TOL = 1e-8


@dataclass
class TopEigen:
    values: torch.Tensor  # wanted eigenvalues, descending (length k)
    vectors: torch.Tensor  # matching eigenvectors as columns (m x k)
    method: str  # "full" or "krylov"

    @property
    def k(self) -> int:
        return int(self.values.numel())


def centred_spectrum(rows: torch.Tensor) -> torch.Tensor:
    """Squared singular values of rows (already centred), descending, from the smaller of the
    two Gram matrices, in float64."""
    rows = rows.to(torch.float64)
    small = rows @ rows.T if rows.shape[0] < rows.shape[1] else rows.T @ rows
    return torch.linalg.eigvalsh(small).flip(0).clamp_min(0)


def rank_for_energy(values_desc: torch.Tensor, total: float, energy: float) -> int | None:
    """Smallest k with sum(values[:k]) >= energy * total, or None if they do not reach it."""
    cum = torch.cumsum(values_desc.clamp_min(0), 0)
    hits = torch.nonzero(cum >= energy * total)
    return int(hits[0]) + 1 if len(hits) else None


def _resolved(values_desc: torch.Tensor, rank_tol: float) -> int:
    """How many leading eigenvalues stand above rounding (at least one)."""
    return max(1, int((values_desc > rank_tol * values_desc[0]).sum()))


def _full(a: torch.Tensor, total: float, energy: float, rank_tol: float) -> TopEigen:
    values, vectors = torch.linalg.eigh(a)
    values, vectors = values.flip(0), vectors.flip(1)
    # energy = 1 (or rounding) can ask for more pairs than the matrix has: stop at its rank
    resolved = _resolved(values, rank_tol)
    k = min(rank_for_energy(values, total, energy) or resolved, resolved)
    return TopEigen(values[:k], vectors[:, :k], "full")


def _orthonormal_block(z: torch.Tensor, basis: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Orthonormalise z against `basis` and itself (twice, for stability); columns that vanish
    (the basis already holds an invariant subspace) are replaced by fresh random directions."""
    scale = float(torch.linalg.vector_norm(z, dim=0).max())
    kept = torch.ones(z.shape[1], dtype=torch.float64, device=z.device)
    for _ in range(2):
        if basis is not None:
            z = z - basis @ (basis.T @ z)
        z, r = torch.linalg.qr(z)
        kept = kept * r.diagonal().abs()
    weak = kept <= 1e-10 * max(scale, 1e-300)
    if bool(weak.any()):
        fresh = torch.randn(z.shape[0], int(weak.sum()), generator=gen, dtype=z.dtype).to(z.device)
        return _orthonormal_block(torch.cat([z[:, ~weak], fresh], 1), basis, gen)
    return z


METHODS = EIG_METHODS


def top_eigenpairs(
    a: torch.Tensor,
    energy: float,
    total: float | None = None,
    *,
    block: int = 48,
    method: str = "auto",
    seed: int = 0,
    rank_tol: float = 1e-12,
) -> TopEigen:
    """Leading eigenpairs of symmetric PSD `a` (float64) holding `energy` of `total` (its trace).

    Eigenvalues below rank_tol x the largest are rounding noise (the matrix's accuracy) and are
    never returned, so 1 / sqrt(value) stays finite."""
    if method not in METHODS:
        raise ValueError(f"eigen method must be one of {METHODS}, not {method!r}")
    m = a.shape[0]
    total = float(torch.trace(a)) if total is None else total
    if method == "full" or (method == "auto" and m <= FULL_EIGH_MAX):
        return _full(a, total, energy, rank_tol)
    gen = torch.Generator().manual_seed(seed)
    block = min(block, m)
    limit = m // 2  # past this basis size the full solve is cheaper
    # Preallocated basis Q, images A Q, and projection T = Q^T A Q, grown a block at a time.
    basis = torch.empty(m, limit + block, dtype=a.dtype, device=a.device)
    images = torch.empty_like(basis)
    t = torch.empty(limit + block, limit + block, dtype=a.dtype, device=a.device)
    size, next_check, k = 0, 2 * block, None
    q = torch.randn(m, block, generator=gen, dtype=a.dtype).to(a.device)
    while True:
        q = _orthonormal_block(q, basis[:, :size] if size else None, gen)
        aq = a @ q
        new = slice(size, size + block)
        basis[:, new], images[:, new] = q, aq
        size += block
        t[:size, new] = basis[:, :size].T @ aq
        t[new, :size] = t[:size, new].T
        if size >= next_check:
            next_check = int(size * 1.25) + block
            theta, s = torch.linalg.eigh(t[:size, :size])
            theta, s = theta.flip(0), s.flip(1)
            k = rank_for_energy(theta, total, energy)
            if k is not None and k + block <= size:
                ritz = basis[:, :size] @ s[:, :k]
                residual = torch.linalg.vector_norm(images[:, :size] @ s[:, :k] - ritz * theta[:k], dim=0)
                worst = float(residual.max()) / float(theta[0])
                if worst <= RESIDUAL_TOL and k <= _resolved(theta, rank_tol):
                    return TopEigen(theta[:k], ritz, "krylov")
                if worst <= 1e3 * RESIDUAL_TOL:  # nearly there: a check costs less than a block
                    next_check = size + block
            elif k is None and size >= 256:
                # Estimate k from the better-converged first half: the energy still missing
                # needs pairs no larger than the middle Ritz value, so at least this many.
                half = size // 2
                missing = energy * total - float(theta[:half].clamp_min(0).sum())
                k = half + int(missing / max(float(theta[half]), 1e-300))
        if size + block > limit or (k is not None and 2 * k > limit):
            return _full(a, total, energy, rank_tol)
        q = aq
