"""Tolerances of the suite, from the error analysis of what is compared: never from what one
machine happened to give (BLAS libraries sum in another order on each CPU and thread count, so
two correct runs differ by rounding that no fixed number describes).

Rounding model. A dot product of m rounded operands, summed in any order in precision u, is off
by at most about sqrt(m) u sum_r |a_r b_r| for errors of either sign (the probabilistic bound of
Higham and Mary, SIAM J. Sci. Comput. 41, 2019; the worst case, m u, is never approached by
blocked BLAS sums). We model each such error as Gaussian with that scale.

Propagation. Worst-case perturbation bounds of leverage scores (Weyl, Davis-Kahan) overshoot
the real errors by five orders of magnitude on decaying spectra, and a test with such a bound
cannot fail. Instead the model's errors are pushed through the computation itself, in float64:
the Gram matrix the engine sums gets a random error of the model's size, the projection a
random error of its size, and the scores are recomputed; over a few seeded draws this measures
the data's own sensitivity to that rounding (linear to first order). The tolerance is LAMBDA
times the largest deviation drawn, per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from matrices import Reference, energy_rank

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53
LAMBDA = 5.0  # multiple of the modelled deviation that a correct run stays within
DRAWS = 4
EIGEN_RESIDUAL = 1e-8  # the Krylov solver stops at residuals of 1e-8 ||C|| (scalselect.scoring.eigen)
HEAD_ROWS = 1024  # the exact engine shifts rows by the mean of its first (at most) 1,024 rows
SKETCH_RANGE = 1e-7  # the sketch keeps the directions of Y^T Y above this share of the largest


def summed(m: int, u: float = U32) -> float:
    """Relative error of an m-term sum of rounded terms of one sign (probabilistic, LAMBDA)."""
    return (2 + LAMBDA * np.sqrt(max(m, 1))) * u


@dataclass
class Tolerance:
    scores: np.ndarray  # per row
    singular_values: np.ndarray  # per kept direction
    k_stable: bool  # every draw kept the reference's k (else k sits at a tie)
    held: float = 0.0  # the sum of every sigma^2 the sketch holds (its energy)


def engine_tolerance(ref: Reference, *, side: str, chunk_rows: int, eig_method: str = "full", seed: int = 0) -> Tolerance:
    """What rounding allows between scalselect's exact engine and the float64 reference.
    side "gram": float32 products of rows shifted by the first rows' mean, summed over chunks
    of chunk_rows, then a float32 projection over D terms. side "kernel" (N < D): float64 throughout."""
    rng = np.random.default_rng(seed)
    n, d = ref.rows.shape
    if side == "kernel":
        shifted, gram_scale = np.abs(ref.rows), np.sqrt(d) * U64
        magnitude = shifted @ shifted.T
    else:
        m = min(chunk_rows, n)
        head = min(HEAD_ROWS, m)
        shifted = np.abs((ref.pre - ref.pre[:head].mean(axis=0)) * ref.col_scale) if ref.shifted else np.abs(ref.pre)
        gram_scale = np.sqrt(m) * U32
        magnitude = shifted.T @ shifted
    top = ref.singular_values[0] ** 2
    score_dev, value_dev, stable = np.zeros(n), np.zeros(ref.k), True
    for _ in range(DRAWS):
        # centring in float64 leaves u64 |x| in each entry (all of it when the mean is large)
        rows = ref.rows + rng.standard_normal(ref.rows.shape) * U64 * np.abs(ref.pre) * ref.col_scale
        matrix = rows @ rows.T if side == "kernel" else rows.T @ rows
        error = _symmetric(rng, magnitude.shape[0]) * gram_scale * magnitude
        # the eigensolver's own backward error, isotropic, of spectral norm ~ its residual: the
        # Krylov solver's stopping rule, or LAPACK's (and the reference SVD's) p(n) u64 ||C||, p(n) = n
        size = magnitude.shape[0]
        residual = EIGEN_RESIDUAL if eig_method == "krylov" else 2 * size * U64
        error += _symmetric(rng, size) * residual * top / (2 * np.sqrt(size))
        values, vectors = np.linalg.eigh(matrix + error)
        values, vectors = values[::-1], vectors[:, ::-1]
        stable &= energy_rank(np.clip(values, 0, None), ref.energy) == ref.k
        if side == "kernel":
            scores = (vectors[:, : ref.k] ** 2).sum(axis=1)
        else:
            w = vectors[:, : ref.k] / np.sqrt(values[: ref.k])
            y = rows @ w
            y += rng.standard_normal(y.shape) * np.sqrt(d) * U32 * (np.abs(rows) @ np.abs(w))
            scores = (y**2).sum(axis=1)
        score_dev = np.maximum(score_dev, np.abs(scores - ref.scores))
        value_dev = np.maximum(value_dev, np.abs(np.sqrt(np.clip(values[: ref.k], 0, None)) - ref.singular_values))
    return Tolerance(LAMBDA * score_dev, LAMBDA * value_dev, bool(stable))


def sketch_tolerance(ref: Reference, *, chunk_rows: int, size: int | None = None, seed: int = 0) -> Tolerance:
    """What float32 rounding allows the sketch engine (one pass, l = size columns, default D),
    against the same sketch in exact arithmetic: with l = D that is the method itself (the
    reference). The pass's rounding: the shifted rows to float32 (u32 |c|), y = c Omega over D
    terms, Y^T C and Y^T Y summed over chunks of chunk_rows rows, the final projection over l
    terms; the solve after it is float64 (P_Y A_c from the sums, restated here). Omega for l < D:
    the reference's leading directions (the ideal pilot) and max(8, l/8) random columns."""
    rng = np.random.default_rng(seed)
    n, d = ref.rows.shape
    size = d if size is None else size
    c = ref.pre - ref.pre.mean(axis=0)  # the shifted rows (the pilot's mean, near the whole mean)
    spare = max(8, int(np.ceil(size / 8)))
    top = np.linalg.svd(ref.rows, full_matrices=False)[2][: max(0, size - spare)].T * ref.col_scale[:, None]
    omega = np.linalg.qr(np.hstack([top, rng.standard_normal((d, size - top.shape[1]))]))[0]
    m = min(chunk_rows, n)

    def solved(noise: float):
        cf = c + noise * rng.standard_normal(c.shape) * U32 * np.abs(c)
        y = cf @ omega + noise * rng.standard_normal((n, size)) * np.sqrt(d) * U32 * (np.abs(c) @ np.abs(omega))
        ytx = y.T @ cf + noise * rng.standard_normal((size, d)) * np.sqrt(m) * U32 * (np.abs(y).T @ np.abs(c))
        ygram = y.T @ y + noise * _symmetric(rng, size) * np.sqrt(m) * U32 * (np.abs(y).T @ np.abs(y))
        ymean, delta = y.mean(axis=0), c.mean(axis=0)
        ytx = (ytx - n * np.outer(ymean, delta)) * ref.col_scale
        lam, vecs = np.linalg.eigh(ygram - n * np.outer(ymean, ymean))
        keep = lam > SKETCH_RANGE * lam.max()
        whiten = vecs[:, keep] / np.sqrt(lam[keep])
        b = whiten.T @ ytx
        values, left = np.linalg.eigh(b @ b.T)
        values, left = np.clip(values[::-1], 0, None), left[:, ::-1]
        w = whiten @ left[:, : ref.k]
        shifted = y - ymean
        proj = shifted @ w + noise * rng.standard_normal((n, ref.k)) * np.sqrt(size) * U32 * (np.abs(shifted) @ np.abs(w))
        return (proj**2).sum(axis=1), np.sqrt(values[: ref.k]), values.sum()

    exact_scores, exact_values, exact_held = solved(0.0)
    score_dev, value_dev, held_dev = np.zeros(n), np.zeros(ref.k), 0.0
    for _ in range(DRAWS):
        scores, values, held = solved(1.0)
        score_dev = np.maximum(score_dev, np.abs(scores - exact_scores))
        value_dev = np.maximum(value_dev, np.abs(values - exact_values))
        held_dev = max(held_dev, abs(held - exact_held))
    return Tolerance(LAMBDA * score_dev, LAMBDA * value_dev, True, LAMBDA * held_dev)


def energy_tolerance(ref: Reference) -> float:
    """The total energy summed in float64 from the shifted rows (sums of c and c^2, n rows per
    column, then D columns): summed(n + D, u64) of the squares' magnitude, taken as (|x| + |mean|)^2."""
    magnitude = float(np.sum(((np.abs(ref.pre) + np.abs(ref.pre.mean(axis=0))) * ref.col_scale) ** 2))
    return 4 * summed(sum(ref.pre.shape), U64) * magnitude


def _symmetric(rng, size: int) -> np.ndarray:
    """A symmetric matrix of standard normal entries."""
    z = rng.standard_normal((size, size))
    return (z + z.T) / np.sqrt(2)


def for_result(res, ref: Reference, seed: int = 0) -> Tolerance:
    """engine_tolerance for a LeverageResult of the exact engine, as it ran."""
    return engine_tolerance(ref, side=res.side, chunk_rows=int(res.settings["chunk_rows"]), eig_method=res.eig_method, seed=seed)


def assert_scores_within(got: np.ndarray, want: np.ndarray, tolerance: np.ndarray, top_share: float = 0.16) -> float:
    """Every score within its tolerance, and the same top share of rows but for rows that the
    tolerance lets reach the cut (ties at a cut). Returns the largest error as a share of the
    tolerance (for the record)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = np.abs(got - want)
    worst = int(np.argmax(err / tolerance))
    assert np.all(err <= tolerance), f"row {worst}: error {err[worst]:.3e} > tolerance {tolerance[worst]:.3e}"
    top = max(1, int(round(top_share * len(want))))
    mine = set(np.argsort(-got, kind="stable")[:top])
    theirs = set(np.argsort(-want, kind="stable")[:top])
    cut = np.sort(want)[::-1][top - 1]
    reach = 2 * float(np.max(tolerance))
    assert all(abs(want[i] - cut) <= reach for i in mine ^ theirs), sorted(mine ^ theirs)
    return float(np.max(err / tolerance))


def reordered_sums_tolerance(ref: Reference) -> np.ndarray:
    """Two runs with the very same float32 products (same operands, shapes and thread count:
    BLAS is then deterministic) whose float64 sums are added in another order (the ranks of a
    torchrun job): the sums differ by ~1e-16, which can move an entry of the float32 weights
    w_j = v_j / sigma_j by one ulp (2 u32 relative) and nothing more. So |dy_j| <= 2 u32 (|x| @
    |w_j|) and |dl| <= 2 sum_j |y_j| |dy_j|, with y_j = U_ij; the float64 rest is negligible."""
    reach = (np.abs(ref.rows) @ np.abs(ref.right)) / ref.singular_values  # |x_i| @ |w_j|
    return 4 * U32 * np.sum(np.abs(ref.left) * reach, axis=1) + 64 * U64 * ref.scores


# --- centred Gram matrices summed chunk by chunk (scalselect.vectors.moments) ---------------


def _chunk_magnitudes(chunks: list) -> list:
    """(rows, |c|^T |c|) per chunk, c its rows about the chunk's own mean."""
    return [(len(c), np.abs(c - c.mean(axis=0)).T @ np.abs(c - c.mean(axis=0))) for c in chunks if len(c)]


def chunked_gram_tolerance(chunks: list) -> np.ndarray:
    """Per entry, how far a Gram merged from chunks (each chunk's rows about its mean, rounded to
    float32 and multiplied in float32; the chunks merged pairwise in float64) may lie from the
    float64 Gram of the same rows: summed(m) of each chunk's |c|^T |c|, 2 u32 of it for the
    rounded rows, and the float64 merges' rounding of the raw squares |x|^T |x|."""
    raw = np.vstack(chunks)
    parts = _chunk_magnitudes(chunks)
    return sum((summed(m) + 2 * U32) * mag for m, mag in parts) + 8 * summed(len(parts) + 2, U64) * (np.abs(raw).T @ np.abs(raw))


def chunked_gram_error(chunks: list, rng) -> np.ndarray:
    """One draw of the rounding model of chunked_gram_tolerance (its scales, without LAMBDA)."""
    raw = np.vstack(chunks)
    parts = _chunk_magnitudes(chunks)
    error = sum(_symmetric(rng, mag.shape[0]) * (np.sqrt(m) + 2) * U32 * mag for m, mag in parts)
    return error + _symmetric(rng, raw.shape[1]) * np.sqrt(len(parts) + 2) * U64 * (np.abs(raw).T @ np.abs(raw))


# --- kernels against their twins: the same operations, in another order -------------------


def same_rounding(values: torch.Tensor) -> dict:
    """assert_close keywords for float32 results that both sides round from the same float64
    value, which each computed up to a few float64 roundings: one float32 ulp apart at most,
    and a float64 rounding of the inputs' magnitude near 0."""
    return {"rtol": 2 * U32, "atol": 16 * U64 * float(values.abs().max()) if values.numel() else 0.0}


def reordered_sum(terms: torch.Tensor, u: float = U64) -> torch.Tensor:
    """Per column, how far two sums of these rows, added in different orders, may lie apart:
    each within summed(n) of sum |terms| of the exact sum."""
    return 2 * summed(terms.shape[0], u) * terms.abs().sum(dim=0)


def reordered_projection(centred: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per row, how far two float32 evaluations of ||c W||^2 may lie apart (each off by
    summed(d) (|c| @ |w_j|) in each y_j, and dl = 2 sum_j y_j dy_j)."""
    c, w = centred.double(), w.double()
    y = c @ w
    return 2 * 2 * summed(c.shape[1]) * ((y.abs() * (c.abs() @ w.abs())).sum(dim=1))


# --- layer-0 vectors: two float32 forward passes that sum in other orders ------------------


def forward_rtol(config, seq_len: int = 2048, decoder_layers: int = 1) -> float:
    """Normwise relative rounding of a vector from decoder layer decoder_layers - 1 between two
    float32 forward passes whose reductions run in other orders (batch composition, padding,
    thread count): each pass is within the sum over its chain of reductions of summed(m) of the
    exact vector, taking every stage's length m as the largest inner dimension (hidden and MLP
    widths, the sequence); the normalised blocks keep relative errors from growing. Stages: six
    per vision layer (q/k/v, scores, values, output, two MLP products), two for the projector,
    nine per decoder layer run (q, k, v, scores, values, output, gate, up, down; a linear-attention
    or convolution layer has no more reductions in sequence than these)."""
    text, vision = config.get_text_config(), getattr(config, "vision_config", None)
    widths = [seq_len]
    for part in (text, vision):
        for name in ("hidden_size", "intermediate_size", "embed_dim", "out_hidden_size"):
            value = getattr(part, name, None)
            if isinstance(value, int):
                widths.append(value)
        ratio = getattr(part, "mlp_ratio", None)
        if ratio and isinstance(getattr(part, "embed_dim", None), int):
            widths.append(int(part.embed_dim * ratio))
    layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", 0) or 0
    stages = 6 * layers + 2 + 9 * decoder_layers
    return 2 * stages * summed(max(widths))  # two passes, each that far from the exact vector


def assert_vectors_close(got, want, rtol: float, what: str = "") -> None:
    """||got - want||_inf <= rtol ||want||_inf (normwise: an entry near 0 is held to the vector's scale)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= rtol * scale, f"{what}: {np.abs(got - want).max():.2e} > {rtol * scale:.2e}"


# --- the extraction kernels against their twins ----------------------------------------------


def attention_mass_rtol(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor, scale: float, softcap: float | None = None
) -> float:
    """Relative rounding allowed between two float32 evaluations of the attention mass (every
    term is positive, so a relative bound on each holds for the sums). A logit q.k (hd terms) is
    off by summed(hd) scale |q||k|, which the exponential turns into that relative error of a
    probability, twice over (numerator and the softmax's max shift); the softmax's denominator
    sums S terms, the mass sums rows x heads probabilities. Two evaluations: twice that.
    Soft-capping c tanh(l / c) does not enlarge a logit's error (its slope is at most 1) and adds
    its own: the division, tanh (within 2 ulp) and the product, 4 u of c."""
    hd, seq = q.shape[-1], q.shape[-2]
    group = q.shape[1] // k.shape[1]
    kk = k.float().abs().repeat_interleave(group, dim=1)
    logit = scale * float((q.float().abs() @ kk.transpose(-1, -2)).max()) if q.numel() and kk.numel() else 0.0
    terms = int(rows.sum(dim=1).max()) * q.shape[1] if rows.numel() else 1
    cap = 4 * U32 * softcap if softcap is not None else 0.0
    return 2 * (2 * (summed(hd) * logit + cap) + summed(seq) + summed(terms))


def mean_atol(hidden: torch.Tensor) -> float:
    """Absolute rounding allowed between two float32 means of at most S rows of `hidden`, summed
    in any order: summed(S) of the largest |h| (the mean of |h| is no larger), twice."""
    return 2 * summed(hidden.shape[-2]) * float(hidden.float().abs().max()) if hidden.numel() else 0.0
