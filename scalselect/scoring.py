"""The leverage-score engine: exact ScalSelect importance scores in two streaming passes.

Pass 1 accumulates the D x D Gram matrix of the rows shifted by an early mean estimate (float32
chunk products added into a float64 master, so memory is O(D^2 + chunk)) and the column sums.
The centred Gram follows exactly: C = G_s - N (mu - s)(mu - s)^T. Its leading eigenpairs give
V_k and sigma_k^2; k is the smallest rank whose energy reaches `energy` x trace(C). Pass 2 reads
each row once more and returns ||(x_i - mu) V_k Sigma_k^-1||^2, the leverage of row i in the top-k
left singular subspace of the centred matrix. When N < D the N x N kernel is the cheaper side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import kernels
from .eigen import METHODS, top_eigenpairs
from .errors import InputError
from .store import RowSource, open_rows

# Target size of one streamed chunk (its float32 centred copy).
_CHUNK_BYTES = 128 << 20


@dataclass
class LeverageResult:
    scores: np.ndarray          # float64, one per row, in input order
    sample_ids: list            # id of each row
    k: int                      # rank kept
    captured_energy: float      # sum of the top-k sigma^2 over the total
    singular_values: np.ndarray  # sigma_1 .. sigma_k of the centred (scaled) matrix
    total_energy: float         # sum of all sigma^2 (trace)
    num_rows: int
    dim: int
    side: str                   # "gram" (D x D) or "kernel" (N x N)
    eig_method: str             # "full" or "krylov"
    device: str
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"num_rows": self.num_rows, "dim": self.dim, "k": self.k,
                "captured_energy": self.captured_energy, "total_energy": self.total_energy,
                "singular_values": self.singular_values.tolist(), "side": self.side,
                "eig_method": self.eig_method, "device": self.device,
                "settings": self.settings, "timings_s": self.timings}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device must be auto, cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda was asked for, but no usable CUDA GPU is present")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device}: only {torch.cuda.device_count()} CUDA GPUs are present")
    return dev


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    # disable=None: draw only on a terminal, so errors and logs stay clean
    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, disable=None if enabled else True,
                leave=False, dynamic_ncols=True)


def _check_finite(sums: torch.Tensor, rows: torch.Tensor, start: int, ids: list) -> None:
    """A NaN or inf anywhere in `rows` makes its column sums non-finite: checking the d sums
    is free, and only then are the rows searched for the culprits."""
    if bool(torch.isfinite(sums).all()):
        return
    bad = ~torch.isfinite(rows).all(dim=1)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten() + start).tolist()
        named = ", ".join(f"row {r} (sample id {ids[r]!r})" for r in rows[:3])
        raise InputError(f"non-finite values (NaN or inf) in {len(rows)} rows of this chunk, first: {named}")


def leverage_scores(data, *, energy: float = 0.9, device: str = "auto", standardize: bool = False,
                    l2_normalize: bool = False, sample_ids=None, chunk_rows: int | None = None,
                    backend: str = "auto", eig_method: str = "auto", progress: bool = False) -> LeverageResult:
    """ScalSelect importance scores of the rows of `data`.

    data: numpy array / memmap / torch tensor (N x D), a `.npy` file, the reference's
    `all_representations.npz`, or a store directory (see scalselect.store).
    energy: share of the centred matrix's energy the kept subspace must hold (0 < energy <= 1).
    standardize: divide each centred column by its standard deviation (ddof 0) first.
    l2_normalize: scale each row to unit length before centring.
    """
    if not 0.0 < energy <= 1.0:
        raise InputError(f"energy must be in (0, 1], got {energy}")
    src = open_rows(data, sample_ids)
    dev = resolve_device(device)
    n, d = src.num_rows, src.dim
    if chunk_rows is None:
        chunk_rows = max(256, _CHUNK_BYTES // (4 * d))
    if int(chunk_rows) < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if eig_method not in METHODS:
        raise InputError(f"eig_method must be one of {METHODS}, not {eig_method!r}")
    settings = {"energy": energy, "standardize": standardize, "l2_normalize": l2_normalize,
                "chunk_rows": chunk_rows, "backend": backend, "eig_method": eig_method}
    timings: dict[str, float] = {}
    opts = dict(standardize=standardize, l2_normalize=l2_normalize, backend=backend,
                eig_method=eig_method, progress=progress, timings=timings)
    side = "kernel" if n < d else "gram"
    run_side = _kernel_side if side == "kernel" else _gram_side
    scores, total, top, eig = run_side(src, dev, energy, chunk_rows, **opts)
    if not np.all(np.isfinite(scores)):
        raise RuntimeError("scalselect produced non-finite scores; please report this with the input's shape")
    captured = float(top.sum()) / total
    return LeverageResult(
        scores=scores, sample_ids=list(src.ids), k=int(top.numel()), captured_energy=captured,
        singular_values=top.clamp_min(0).sqrt().cpu().numpy(), total_energy=total, num_rows=n,
        dim=d, side=side, eig_method=eig, device=str(dev), timings=timings, settings=settings)


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


def _check_spread(centred_energy: float, raw_energy: float, n: int) -> None:
    """Refuse a matrix whose rows are all equal up to rounding: there is nothing to rank."""
    if not centred_energy > 1e-24 * raw_energy:
        raise InputError(f"all {n} rows are identical (up to rounding): there is nothing to rank")


def _inv_std(var: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """1 / std per column for `standardize`. A column whose variance is rounding noise against
    its magnitude is constant and gets 0, so that noise is not blown up to unit variance."""
    constant = var <= 1e-20 * second_moment
    if bool(constant.all()):
        raise InputError("no column varies: after standardisation there is nothing to rank")
    return torch.where(constant, torch.zeros_like(var), 1.0 / var.clamp_min(1e-300).sqrt())


def _gram_side(src: RowSource, dev, energy, chunk_rows, *, standardize, l2_normalize, backend,
               eig_method, progress, timings):
    n, d = src.num_rows, src.dim
    t0 = time.perf_counter()
    gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
    colsum = torch.zeros(d, dtype=torch.float64, device=dev)
    shift = None
    with _progress(n, "pass 1/2 (Gram)", progress) as bar:
        for start, chunk in src.chunks(chunk_rows):
            chunk = chunk.to(dev, non_blocking=True)
            if shift is None:  # an early mean estimate keeps the shifted sums small
                head = chunk[:1024]
                zero = torch.zeros(d, dtype=torch.float64, device=dev)
                shift = kernels.gram_prep(head, zero, None, l2_normalize, backend=backend)[1] / head.shape[0]
                _check_finite(shift, head, start, src.ids)
            centred, sums = kernels.gram_prep(chunk, shift, None, l2_normalize, backend=backend)
            _check_finite(sums, chunk, start, src.ids)
            add_gram(gram, centred)
            colsum += sums
            bar.update(chunk.shape[0])
    gram = mirror_lower(gram)
    delta = colsum / n
    mean = shift + delta
    cov = gram - n * torch.outer(delta, delta)  # centred Gram, exactly
    if not bool(torch.isfinite(cov).all()):
        raise InputError("the Gram matrix overflowed float32: values too large; rescale the vectors")
    raw_second = gram.diagonal() / n + shift * shift  # about mean(x_j^2) per column
    _check_spread(float(cov.trace()), n * float(raw_second.sum()), n)
    inv_scale = None
    if standardize:
        inv_scale = _inv_std(cov.diagonal().clamp_min(0) / n, raw_second)
        cov = cov * torch.outer(inv_scale, inv_scale)
    total = float(cov.trace())
    timings["gram_pass"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    eig = top_eigenpairs(cov, energy, total, method=eig_method, rank_tol=_RANK_TOL["gram"])
    timings["eigen"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    w = (eig.vectors / eig.values.clamp_min(1e-300).sqrt()).to(torch.float32)
    scores = np.empty(n, dtype=np.float64)
    with _progress(n, "pass 2/2 (scores)", progress) as bar:
        for start, chunk in src.chunks(chunk_rows):
            chunk = chunk.to(dev, non_blocking=True)
            part = kernels.projected_sqnorm(chunk, mean, inv_scale, l2_normalize, w, backend=backend)
            scores[start:start + chunk.shape[0]] = part.cpu().numpy()
            bar.update(chunk.shape[0])
    timings["score_pass"] = time.perf_counter() - t0
    return scores, total, eig.values, eig.method


def _kernel_side(src: RowSource, dev, energy, chunk_rows, *, standardize, l2_normalize, backend,
                 eig_method, progress, timings):
    """N < D: centre the (small) matrix in memory and take the N x N side."""
    t0 = time.perf_counter()
    x = torch.cat([chunk for _, chunk in src.chunks(chunk_rows)]).to(dev)
    n = x.shape[0]
    zero = torch.zeros(x.shape[1], dtype=torch.float64, device=dev)
    rows = kernels.twins.centre_rows(x, zero, None, l2_normalize)
    _check_finite(rows.sum(dim=0), rows, 0, src.ids)
    raw_second = rows.pow(2).mean(dim=0)
    rows = rows - rows.mean(dim=0)
    var = rows.pow(2).mean(dim=0)
    _check_spread(n * float(var.sum()), n * float(raw_second.sum()), n)
    if standardize:
        rows = rows * _inv_std(var, raw_second)
    kernel = rows @ rows.T
    kernel = (kernel + kernel.T) / 2
    total = float(kernel.trace())
    timings["gram_pass"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eig = top_eigenpairs(kernel, energy, total, method=eig_method, rank_tol=_RANK_TOL["kernel"])
    timings["eigen"] = time.perf_counter() - t0
    scores = (eig.vectors ** 2).sum(dim=1)  # rows of U_k: the left singular vectors
    return scores.cpu().numpy(), total, eig.values, eig.method
