"""The exact engine: two streaming passes over the rows. The Gram side (N >= D) accumulates the
D x D Gram matrix of the shifted rows in float64 blocks and takes its top eigenpairs; the kernel
side (N < D) holds the N x N kernel of the rows instead. Both then project every row onto the
top-k subspace (docs/design.md, section 1b)."""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import kernels
from ..distributed import Comm
from ..errors import InputError
from ..stores import RowSource
from .eigen import TopEigen, top_eigenpairs
from .rows import EngineResult, check_spread, head_magnitude, inverse_std, left_out_rows, prep_finite, progress_bar, value_scale

# The exact engine shifts the rows by the mean of the first (at most) this many rows.
HEAD_ROWS = 1024


def add_gram(gram: torch.Tensor, rows: torch.Tensor, blocks: int = 4) -> None:
    """Lower triangle of gram (float64, d x d) += rows^T rows, in float32 GEMMs over the lower
    block columns only: (blocks + 1) / (2 blocks) of the work. `mirror_lower` completes it once."""
    d = rows.shape[1]
    if d < 1024:
        gram += (rows.T @ rows).to(torch.float64)
        return
    edges = [d * i // blocks for i in range(blocks + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        gram[lo:, lo:hi] += rows[:, lo:].T @ rows[:, lo:hi]


def mirror_lower(gram: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle is gram's."""
    return torch.tril(gram) + torch.tril(gram, -1).T


# Eigenvalues below this share of the largest are rounding noise: the Gram side sums float32
# products (relative error ~1e-7 per entry), the kernel side is float64 throughout.
_RANK_TOL = {"gram": 1e-6, "kernel": 1e-12}


def gram_side(
    src: RowSource,
    dev,
    energy,
    chunk_rows,
    *,
    standardize,
    l2_normalize,
    backend,
    eig_method,
    progress,
    timings,
    comm: Comm,
    dim: int,
    reads_head: bool,
):
    n_local, d = src.num_rows, dim
    t0 = time.perf_counter()
    zero = torch.zeros(d, dtype=torch.float64, device=dev)
    left_out: list[int] = []  # this rank's rows with a NaN or inf
    passes = 3 if l2_normalize else 2

    def prep(chunk, shift, inv=None, start=None, l2=False):
        """gram_prep of the chunk's finite rows (noting the others when start is given)."""
        out, good = prep_finite(kernels.gram_prep, chunk, shift, inv, l2, backend=backend)
        if good is not None and start is not None:
            left_out.extend(left_out_rows(good, start))
        return out

    def head():  # an early mean estimate keeps the shifted sums small; the rows' magnitude
        if not reads_head:
            return zero, 0, 0.0
        for _, chunk in src.chunks(min(HEAD_ROWS, chunk_rows)):
            chunk = chunk.to(dev, non_blocking=True)
            centred, sums = prep(chunk, zero)
            if centred.shape[0]:  # a chunk of NaN rows only: the next one
                finite = chunk[torch.isfinite(chunk).all(dim=1)].to(torch.float64)
                return sums, centred.shape[0], head_magnitude(finite)
        return zero, 0, 0.0

    head_sums, head_rows, magnitude = comm.together(head)
    if comm.active:  # the same shift on every rank: the one rank that reads the head sends it
        both = comm.all_reduce_sum(torch.cat([head_sums, head_sums.new_tensor([head_rows, magnitude])]))
        head_sums, head_rows, magnitude = both[:d], both[d], float(both[d + 1])
    shift = head_sums / head_rows if head_rows > 0 else zero
    scale = value_scale(magnitude)  # rows are multiplied by it before their float32 products
    inv = None if scale == 1 else torch.full((d,), scale, dtype=torch.float64, device=dev)
    if l2_normalize:  # rows are centred (and standardised) before their unit scaling: moments first
        shift, inv = _column_moments(
            src,
            shift,
            inv,
            scale,
            standardize,
            chunk_rows=chunk_rows,
            dev=dev,
            backend=backend,
            comm=comm,
            left_out=left_out,
            bar=lambda: progress_bar(n_local, f"pass 1/{passes} (column moments)", progress),
        )
    gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
    colsum = torch.zeros(d, dtype=torch.float64, device=dev)

    def pass1():
        with progress_bar(n_local, f"pass {passes - 1}/{passes} (Gram)", progress) as bar:
            for start, chunk in src.chunks(chunk_rows):
                # the moments pass noted the rows it left out
                centred, sums = prep(chunk.to(dev, non_blocking=True), shift, inv, None if l2_normalize else start, l2_normalize)
                add_gram(gram, centred)
                colsum.add_(sums)
                bar.update(chunk.shape[0])

    comm.together(pass1)
    n = n_local - len(left_out)
    if comm.active:  # sums over the ranks (the lower triangle is all that mirror_lower reads)
        gram = comm.all_reduce_sum(gram)
        both = comm.all_reduce_sum(torch.cat([colsum, colsum.new_tensor([n])]))
        colsum, n = both[:d], int(both[d])
    if n == 0:  # every rank knows it (n is summed)
        raise InputError("every row holds a NaN or inf: there is nothing to score")
    gram = mirror_lower(gram)

    def finish():
        if l2_normalize:  # unit rows, decomposed as they are
            cov, mean, inv_scale, total = gram, shift, inv, float(gram.trace())
        else:
            cov, mean, inv_scale, total = _centred_gram(gram, colsum, shift, n, standardize, scale)
        timings["gram_pass"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        eig = top_eigenpairs(cov, energy, total, method=eig_method, rank_tol=_RANK_TOL["gram"])
        timings["eigen"] = time.perf_counter() - t1
        return mean, inv_scale, total, eig

    if comm.active:  # rank 0 solves; every rank gets its answer
        mean, inv_scale, total, eig = _share_solution(comm, comm.together(finish, main_only=True), dev)
        timings.setdefault("gram_pass", time.perf_counter() - t0)
    else:
        mean, inv_scale, total, eig = finish()
    gram = None  # not needed in pass 2

    t0 = time.perf_counter()
    w = (eig.vectors / eig.values.clamp_min(1e-300).sqrt()).to(torch.float32)
    scores = np.empty(n_local, dtype=np.float64)

    def pass2():
        with progress_bar(n_local, f"pass {passes}/{passes} (scores)", progress) as bar:
            for start, chunk in src.chunks(chunk_rows):
                chunk = chunk.to(dev, non_blocking=True)
                part = kernels.projected_sqnorm(chunk, mean, inv_scale, l2_normalize, w, backend=backend)
                scores[start : start + chunk.shape[0]] = part.cpu().numpy()
                bar.update(chunk.shape[0])

    comm.together(pass2)
    timings["score_pass"] = time.perf_counter() - t0
    # energies are those of the rows multiplied by `scale` (standardised or unit rows have no units)
    return EngineResult(scores, total, eig.values, eig.method, left_out, 1.0 if standardize or l2_normalize else scale)


def _column_moments(
    src: RowSource, shift, inv, scale: float, standardize: bool, *, chunk_rows, dev, backend, comm: Comm, left_out: list, bar
):
    """A pass for the column means (and, with standardize, 1 / std): the shift and column scale
    that centre (and standardise) the rows, still multiplied by `scale`. Notes the rows with a
    NaN or inf in left_out."""
    d = shift.shape[0]
    sums = torch.zeros(d, dtype=torch.float64, device=dev)
    squares = torch.zeros(d, dtype=torch.float64, device=dev)

    def one_pass():
        with bar() as progress:
            for start, chunk in src.chunks(chunk_rows):
                chunk = chunk.to(dev, non_blocking=True)
                (_, part, part_sq), good = prep_finite(kernels.sketch_prep, chunk, shift, inv, False, backend=backend)
                if good is not None:
                    left_out.extend(left_out_rows(good, start))
                sums.add_(part)
                squares.add_(part_sq)
                progress.update(chunk.shape[0])

    comm.together(one_pass)
    n = src.num_rows - len(left_out)
    if comm.active:
        both = comm.all_reduce_sum(torch.cat([sums, squares, sums.new_tensor([n])]))
        sums, squares, n = both[:d], both[d : 2 * d], int(both[2 * d])
    if n == 0:
        raise InputError("every row holds a NaN or inf: there is nothing to score")
    delta = sums / n
    var = (squares / n - delta * delta).clamp_min(0)  # of the rows multiplied by scale
    raw_second = var + (shift * scale + delta) ** 2  # mean(x_j^2), in the same units
    check_spread(n * float(var.sum()), n * float(raw_second.sum()), n)
    mean = shift + delta / scale
    if standardize:
        inv = inverse_std(var, raw_second) * scale
    return mean, inv


def _centred_gram(gram: torch.Tensor, colsum: torch.Tensor, shift: torch.Tensor, n: int, standardize: bool, scale: float = 1.0):
    """The centred (and, with standardize, scaled) Gram matrix from pass 1's sums of the rows
    shifted and multiplied by `scale`, with the mean, the column scale pass 2 applies after
    centring (or None) and the trace, in those units."""
    delta = colsum / n
    mean = shift + delta / scale
    cov = gram - n * torch.outer(delta, delta)  # centred Gram, exactly
    if not bool(torch.isfinite(cov).all()):
        raise InputError("the Gram matrix overflowed float32: values too large; rescale the vectors")
    raw_second = gram.diagonal() / n + (shift * scale) ** 2  # about mean(x_j^2) per column
    check_spread(float(cov.trace()), n * float(raw_second.sum()), n)
    inv_scale = None if scale == 1 else torch.full_like(mean, scale)
    if standardize:
        inv_std = inverse_std(cov.diagonal().clamp_min(0) / n, raw_second)
        cov = cov * torch.outer(inv_std, inv_std)
        inv_scale = inv_std * scale
    return cov, mean, inv_scale, float(cov.trace())


def _share_solution(comm: Comm, solution, dev):
    """Rank 0's (mean, inv_scale, total, eigenpairs) on every rank."""
    if comm.is_main:
        mean, inv_scale, total, eig = solution
        solution = (
            mean.cpu(),
            None if inv_scale is None else inv_scale.cpu(),
            total,
            eig.values.cpu(),
            eig.vectors.cpu(),
            eig.method,
        )
    mean, inv_scale, total, values, vectors, method = comm.broadcast_object(solution)
    inv_scale = None if inv_scale is None else inv_scale.to(dev)
    return mean.to(dev), inv_scale, total, TopEigen(values.to(dev), vectors.to(dev), method)


def kernel_side(
    src: RowSource,
    dev,
    energy,
    chunk_rows,
    *,
    standardize,
    l2_normalize,
    backend,
    eig_method,
    progress,
    timings,
    comm: Comm,
    dim: int,
    reads_head,
):
    """N < D: centre the (small) matrix in memory and take the N x N side. Distributed: every
    rank sends its finite rows to rank 0, which scores them all and sends each rank its own."""
    t0 = time.perf_counter()

    def load():  # this rank's finite rows, and which rows were left out
        chunks = [chunk for _, chunk in src.chunks(chunk_rows)]
        x = torch.cat(chunks).to(dev) if chunks else torch.zeros(0, dim, device=dev)
        good = torch.isfinite(x).all(dim=1)
        return x[good], torch.nonzero(~good).flatten().tolist()

    def solve(parts: list):
        x = torch.cat([part.to(dev, torch.float64) for part in parts])
        if x.shape[0] == 0:
            raise InputError("every row holds a NaN or inf: there is nothing to score")
        scores, total, values, method, scale = _kernel_solve(x, energy, standardize, l2_normalize, eig_method, timings, t0)
        splits = np.cumsum([int(part.shape[0]) for part in parts])[:-1]
        return np.split(scores.cpu().numpy(), splits), total, values.cpu(), method, scale

    x, left_out = comm.together(load)
    every = comm.gather_objects(x.cpu())  # as stored: float16 stores send half the bytes
    answer = comm.broadcast_object(comm.together(lambda: solve(every), main_only=True))
    timings.setdefault("gram_pass", time.perf_counter() - t0)
    parts, total, values, method, scale = answer
    scores = np.full(src.num_rows, np.nan)
    scores[np.setdiff1d(np.arange(src.num_rows), left_out)] = parts[comm.rank]
    return EngineResult(scores, total, values.to(dev), method, left_out, scale)


def _kernel_solve(rows: torch.Tensor, energy, standardize, l2_normalize, eig_method, timings, t0):
    """Scores of the rows (float64) on the N x N side."""
    n = rows.shape[0]
    scale = value_scale(head_magnitude(rows))
    rows = rows * scale
    raw_second = rows.pow(2).mean(dim=0)
    rows = rows - rows.mean(dim=0)
    var = rows.pow(2).mean(dim=0)
    check_spread(n * float(var.sum()), n * float(raw_second.sum()), n)
    if standardize:
        rows = rows * inverse_std(var, raw_second)
    if l2_normalize:  # unit rows, not centred again
        rows = kernels.twins.centre_rows(rows, torch.zeros_like(var), None, True)
    kernel = rows @ rows.T
    kernel = (kernel + kernel.T) / 2
    total = float(kernel.trace())
    timings["gram_pass"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eig = top_eigenpairs(kernel, energy, total, method=eig_method, rank_tol=_RANK_TOL["kernel"])
    timings["eigen"] = time.perf_counter() - t0
    scores = (eig.vectors**2).sum(dim=1)  # rows of U_k: the left singular vectors
    return scores, total, eig.values, eig.method, 1.0 if standardize or l2_normalize else scale
