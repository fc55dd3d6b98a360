"""Single-pass sketch scoring: ScalSelect's leverage scores from one read of the rows.

The exact engine (scoring.py) forms the D x D Gram matrix, O(N D^2), and reads the rows twice.
This one reads them once and costs O(N D l) with l << D:

1. Pilot: a random sample of rows (PILOT_ROWS) gives an early mean, which the pass subtracts
   (its `shift`), and the leading right singular directions of the sample. The test matrix
   Omega (D x l) is those directions plus l/8 Gaussian columns for what the sample missed.
   Without `sketch_size`, l covers the directions that hold all but a quarter of the energy
   left out of the top-k subspace (97.5 % at energy 0.9), and at least 2k, on the pilot.
2. Pass: for each chunk of shifted rows x~ the range sketch y = x~ Omega (l numbers per row) is
   kept, and Y^T X~ (l x D), Y^T Y (l x l), the column sums and the column sums of squares are
   accumulated in float64 (`Sketch.update`). A random holdout of rows is kept whole.
3. Solve: centring is linear, so the centred sums follow exactly from the shifted ones. With
   Y_c = Q R, the sums give B = Q^T A_c without a second read: the result is the exact SVD of
   P_Y A_c, the centred matrix projected onto the range of its sketch (what a two-pass
   randomized SVD gives). Its singular values give k, against the true total energy (tracked
   exactly), and each row's score is its leverage in the top-k left subspace, ||Q_i U~_k||^2,
   computed from its y row.

Error estimate, a posteriori: the holdout rows are scored twice, through their y rows like every
row, and from their full vectors with the right singular directions of P_Y A_c (Y_c^T A_c is
known, so these are one power step better than the sketch's own). The RMS difference, relative
to the mean score, estimates the scores' error: on the synthetic spectra of benchmarks/README.md
it came within a factor of 2.5 of the true error (erring low). The result is certified when the estimate is
at most CERTIFY_ERROR (there the top-16 % sets overlapped the exact ones by >= 0.99), else it
says so and the caller warns. The energy the sketch misses, ||A_c - P_Y A_c||_F^2, is reported
exactly too.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import kernels, options
from ..distributed import Comm
from ..errors import InputError
from ..stores import RowSource, sketch_store
from .eigen import rank_for_energy
from .rows import EngineResult, check_spread, head_magnitude, inverse_std, left_out_rows, prep_finite, progress_bar, value_scale

# Rows in the pilot sample (by default), and in the holdout that checks the result.
PILOT_ROWS = options.PILOT_ROWS
HOLDOUT_ROWS = 2048
# Largest estimated relative score error that is certified (see the module docstring).
CERTIFY_ERROR = 0.02
# y rows (N x l float32) larger than this are kept in a temporary file ($TMPDIR), not in memory.
SPILL_BYTES = 1 << 30
# Share of the test matrix's columns that are random rather than pilot directions (at least 8).
_RANDOM_SHARE = 1 / 8
# Eigenvalues below this share of the largest are float32 rounding, not range (Y^T Y), and
# sigma^2 below this share of sigma_1^2 not a direction (the exact Gram side's tolerance).
_RANGE_TOL = 1e-7
_RESOLVED_TOL = 1e-6


@dataclass
class Sketch:
    """The running float64 sums of one pass over the rows, shifted (centred after the pass)."""

    omega: torch.Tensor  # D x l float32 test matrix
    shift: torch.Tensor  # D float64, subtracted from every row before the products
    rows: torch.Tensor  # () float64 count of rows summed
    colsum: torch.Tensor  # D: sum of x~
    colsumsq: torch.Tensor  # D: sum of x~^2
    ytx: torch.Tensor  # l x D: Y^T X~ (this way round: the skinny GEMM runs 1.3x faster)
    ygram: torch.Tensor  # l x l: Y^T Y
    ysum: torch.Tensor  # l: sum of y
    scale: float = 1.0  # rows are multiplied by it after the shift (rows.value_scale)

    SUMS = sketch_store.SUMS  # the sums a sketch store's parts hold, by these names

    @classmethod
    def start(cls, omega: torch.Tensor, shift: torch.Tensor, scale: float = 1.0) -> "Sketch":
        d, size = omega.shape
        zeros = [
            torch.zeros(shape, dtype=torch.float64, device=omega.device)
            for shape in ((), (d,), (d,), (size, d), (size, size), (size,))
        ]
        return cls(omega.to(torch.float32).contiguous(), shift.to(omega.device, torch.float64), *zeros, scale)

    @property
    def size(self) -> int:
        return int(self.omega.shape[1])

    def update(self, chunk: torch.Tensor, backend: str = "auto"):
        """Add a chunk's finite rows (the chunk is on the sketch's device). Returns their y rows
        (float32) and a mask of the finite rows (None when all are). The elementwise part is
        the native prep kernel; the products are GEMMs."""
        inv = None if self.scale == 1 else torch.full_like(self.shift, self.scale)
        (centred, sums, squares), good = prep_finite(kernels.sketch_prep, chunk, self.shift, inv, False, backend=backend)
        y = centred @ self.omega
        self.rows += centred.shape[0]
        self.colsum += sums
        self.colsumsq += squares
        self.ytx += (y.T @ centred).to(torch.float64)
        self.ygram += (y.T @ y).to(torch.float64)
        self.ysum += y.sum(dim=0, dtype=torch.float64)
        return y, good

    def sums(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.SUMS]

    def with_sums(self, sums: list[torch.Tensor]) -> "Sketch":
        """This sketch's test matrix and shift with other sums (merged over ranks, say)."""
        return Sketch(self.omega, self.shift, *[s.to(self.omega.device) for s in sums], self.scale)


@dataclass
class SketchSolution:
    """What scoring the rows needs, and what the summary reports."""

    ymean: torch.Tensor  # l float64: the mean y row, subtracted before projecting
    w: torch.Tensor  # l x k float32: ||(y_i - ymean) w||^2 is row i's score
    values: torch.Tensor  # sigma^_1^2 .. sigma^_k^2 (float64, descending)
    total: float  # exact energy of the centred (scaled) matrix
    mean: torch.Tensor  # D float64 column mean
    inv_scale: torch.Tensor | None  # D float64 column scale (standardize), else None
    direct: torch.Tensor  # D x k float64: ||(x_i - mean) inv_scale direct||^2 scores a whole row
    info: dict = field(default_factory=dict)
    value_scale: float = 1.0  # the factor the rows were multiplied by (1 when standardised)

    def to(self, device) -> "SketchSolution":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SketchSolution(
            move(self.ymean),
            move(self.w),
            move(self.values),
            self.total,
            move(self.mean),
            move(self.inv_scale),
            move(self.direct),
            self.info,
            self.value_scale,
        )


def sample_rows(num_rows: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row indices drawn uniformly (all rows when there are fewer), ascending."""
    if num_rows <= count:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=count, replace=False))


def holdout_rows(num_rows: int, pilot_rows: int, seed: int) -> np.ndarray:
    """The holdout's row indices, ascending: HOLDOUT_ROWS drawn from the rows outside the pilot
    (whose directions the test matrix holds, so they would flatter it)."""
    spare = np.setdiff1d(np.arange(num_rows), sample_rows(num_rows, pilot_rows, seed))
    return spare[sample_rows(len(spare), HOLDOUT_ROWS, seed + 1)]


def plan_test_matrix(
    pilot: torch.Tensor,
    *,
    energy: float,
    standardize: bool,
    sketch_size: int | None,
    max_size: int,
    seed: int,
    every_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(Omega, shift, plan) from the pilot's finite rows (CPU). The centred pilot H (p x D)
    gives its leading right singular vectors through the p x p kernel H H^T. every_row: the
    pilot is the whole input (small), so the default size is the largest, and the sketch exact."""
    pilot = pilot[torch.isfinite(pilot).all(dim=1)]
    if pilot.shape[0] < 2:
        raise InputError(
            "fewer than 2 rows of the pilot sample are finite (no NaN or inf): there is "
            "nothing to plan a sketch from; use --method exact"
        )
    h = pilot.to(torch.float64)
    shift = h.mean(dim=0)
    scale = value_scale(head_magnitude(h))  # the pass multiplies its shifted rows by it
    h = (h - shift) * scale
    inv = None
    if standardize:  # directions of the scaled pilot, mapped back to the unscaled rows below
        std = h.pow(2).mean(dim=0).sqrt()
        inv = torch.where(std > 0, 1.0 / std.clamp_min(1e-300), torch.zeros_like(std))
        h = h * inv
    values, vectors = torch.linalg.eigh(h @ h.T)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    resolved = int((values > _RANGE_TOL * values[0]).sum()) if values[0] > 0 else 0
    total = float(values.sum())
    pilot_k = rank_for_energy(values, total, energy) or resolved
    if sketch_size is None and every_row:
        size = max_size
    elif sketch_size is None:
        covered = rank_for_energy(values, total, 1 - (1 - energy) / 4) or resolved
        wanted = max(covered, 2 * pilot_k)
        size = wanted + max(8, math.ceil(wanted * _RANDOM_SHARE))
    else:
        size = sketch_size
    size = max(1, min(size, max_size))
    directions = min(resolved, size - min(size, max(8, math.ceil(size * _RANDOM_SHARE))))
    right = h.T @ (vectors[:, :directions] / values[:directions].sqrt())  # D x directions, orthonormal
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(pilot.shape[1], size - directions, generator=gen, dtype=torch.float64)
    if inv is not None:  # Y = A_c Omega should span the scaled matrix's top range
        right, noise = right * inv[:, None], noise * inv[:, None]
    # orthonormal columns: Y is then no worse conditioned than the rows themselves, which keeps
    # the float32 y rows' rounding small after whitening
    omega = torch.linalg.qr(torch.cat([right, noise], dim=1)).Q
    plan = {
        "pilot_rows": int(pilot.shape[0]),
        "pilot_k": pilot_k,
        "pilot_directions": directions,
        "sketch_size": size,
        "value_scale": scale,
    }
    return omega.to(torch.float32), shift, plan


def solve(sketch: Sketch, energy: float, standardize: bool) -> SketchSolution:
    """The leading singular triplets of P_Y A_c from the pass's sums."""
    n = float(sketch.rows)
    delta = sketch.colsum / n
    ymean = sketch.ysum / n
    ytx = sketch.ytx - n * torch.outer(ymean, delta)  # Y_c^T A_c
    ygram = sketch.ygram - n * torch.outer(ymean, ymean)  # Y_c^T Y_c
    col_energy = (sketch.colsumsq - n * delta * delta).clamp_min(0)  # centred energy per column
    scale = sketch.scale  # the sums are of rows multiplied by it: so is everything below
    raw_second = sketch.colsumsq / n - delta * delta + (sketch.shift * scale + delta) ** 2  # mean(x_j^2)
    check_spread(float(col_energy.sum()), n * float(raw_second.sum()), int(n))
    inv = None if scale == 1 else torch.full_like(delta, scale)  # applied to whole rows, after centring
    if standardize:
        inv_std = inverse_std(col_energy / n, raw_second)
        ytx = ytx * inv_std
        col_energy = col_energy * inv_std * inv_std
        inv = inv_std * scale
    total = float(col_energy.sum())
    lam, vecs = torch.linalg.eigh((ygram + ygram.T) / 2)
    keep = lam > _RANGE_TOL * lam.max().clamp_min(1e-300)
    whiten = vecs[:, keep] / lam[keep].sqrt()  # Q = Y_c whiten: orthonormal columns
    b = whiten.T @ ytx  # Q^T A_c, r x D
    values, left = torch.linalg.eigh(b @ b.T)
    values, left = values.flip(0).clamp_min(0), left.flip(1)
    # directions below float32 rounding are noise: k never reaches into them (energy near 1)
    resolved = max(1, int((values > _RESOLVED_TOL * values[0]).sum()))
    k = rank_for_energy(values, total, energy)
    reached = k is not None
    k = min(k or resolved, resolved)
    w = whiten @ left[:, :k]
    residual = max(total - float(values.sum()), 0.0)
    info = {
        "sketch_size": sketch.size,
        "range_rank": int(keep.sum()),
        "energy_reached": reached,
        "sketch_energy": float(values.sum()) / total,
        "residual_energy": residual / total,
        "residual_ratio": math.sqrt(residual / float(values[k - 1])) if values[k - 1] > 0 else math.inf,
    }
    return SketchSolution(
        ymean,
        w.to(torch.float32),
        values[:k],
        total,
        sketch.shift + delta / scale,
        inv,
        (ytx.T @ w) / values[:k],
        info,
        1.0 if standardize else scale,
    )


def holdout_errors(solution: SketchSolution, rows: torch.Tensor, ys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sketch scores, direct scores) of the holdout rows: through their y rows, and from their
    whole vectors with the right singular directions of P_Y A_c."""
    through_y = kernels.twins.projected_sqnorm(ys, solution.ymean, None, False, solution.w)
    whole = kernels.twins.centre_rows(rows, solution.mean, solution.inv_scale, False)
    direct = (whole @ solution.direct).pow(2).sum(dim=1)
    return through_y.cpu().numpy(), direct.cpu().numpy()


def error_estimate(through_y: np.ndarray, direct: np.ndarray) -> dict:
    """The holdout's relative RMS score difference and rank correlation, and the verdict."""
    if len(direct) < 2:
        return {"holdout_rows": len(direct), "score_error_estimate": None, "holdout_spearman": None}
    error = float(np.sqrt(np.mean((through_y - direct) ** 2)) / max(np.mean(direct), 1e-300))
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable") for v in (through_y, direct)]
    spearman = float(np.corrcoef(*ranks)[0, 1]) if np.std(ranks[0]) > 0 else 1.0
    return {"holdout_rows": len(direct), "score_error_estimate": error, "holdout_spearman": spearman}


def certify(info: dict) -> dict:
    """Certified: the energy was reached, and either the holdout's estimate or the residual
    ratio (the missed energy against the weakest kept direction, a pessimistic bound that only
    a sketch holding nearly everything meets) is at most CERTIFY_ERROR."""
    estimate = info.get("score_error_estimate")
    info["certify_error"] = CERTIFY_ERROR
    info["certified"] = bool(
        info["energy_reached"]
        and (info["residual_ratio"] <= CERTIFY_ERROR or (estimate is not None and estimate <= CERTIFY_ERROR))
    )
    return info


def warning_text(info: dict, energy: float) -> str | None:
    """One line for the user when the sketch cannot certify its result, else None."""
    if not info.get("energy_reached", True):
        return (
            f"the sketch of size {info['sketch_size']} holds only {info['sketch_energy']:.1%} of the "
            f"energy, less than the {energy:.0%} asked for: k is capped and the scores are "
            "approximate; use --method exact or a larger --sketch-size"
        )
    if not info.get("certified", True):
        estimate = info.get("score_error_estimate")
        said = "cannot be estimated (too few rows)" if estimate is None else f"is estimated at {estimate:.1%}"
        return (
            f"the sketch cannot certify its scores: their error {said}, above {CERTIFY_ERROR:.0%}; "
            f"the spectrum decays too slowly for a sketch of size {info['sketch_size']}; "
            "use --method exact or a larger --sketch-size"
        )
    return None


def costs(n: int, d: int, size: int, k: int, pilot_rows: int = PILOT_ROWS) -> dict:
    """Rough float32 multiply-add counts of the two engines. exact: the Gram (lower blocks, 5/8 of
    N D^2) and the projection. sketch: the pilot (a float64 p x p kernel, 2x, and its eigh,
    ~12 p^3 on this scale), the pass's two products, Y^T Y and the projection of the y rows."""
    pilot = 2 * pilot_rows**2 * d + 12 * pilot_rows**3
    return {"exact": n * d * (5 * d / 8 + k), "sketch": pilot + n * size * (2 * d + size + k)}


def may_pay(n: int, d: int) -> bool:
    """Whether "auto" should plan a sketch at all: the pilot alone must cost under half the
    exact engine."""
    return n >= d and 2 * costs(n, d, 0, 0)["sketch"] < costs(n, d, 0, 0)["exact"]


def sketch_side(
    src: RowSource,
    dev,
    energy,
    chunk_rows,
    *,
    standardize,
    backend,
    progress,
    timings,
    comm: Comm,
    dim: int,
    num_rows: int,
    positions: np.ndarray,
    pilot_source,
    sketch_size: int | None,
    seed: int,
    pilot_rows: int,
    auto: bool,
    details: dict,
):
    """Scores of this rank's rows from one pass, as scoring's sides return them. With `auto`,
    None (and why, in details) when the pilot predicts that the exact engine costs less than
    twice the sketch. positions: the index of each of this rank's rows among all rows;
    pilot_source(): a RowSource of every row (called on the rank that plans, rank 0)."""
    t0 = time.perf_counter()

    def plan():
        pilot = pilot_source().take(sample_rows(num_rows, pilot_rows, seed))
        return plan_test_matrix(
            pilot,
            energy=energy,
            standardize=standardize,
            sketch_size=sketch_size,
            max_size=min(dim, num_rows),
            seed=seed,
            every_row=num_rows <= pilot_rows,
        )

    omega, shift, planned = comm.broadcast_object(comm.together(plan, main_only=True)) if comm.active else plan()
    timings["pilot"] = time.perf_counter() - t0
    details.update(planned)
    size = planned["sketch_size"]
    if auto:
        cost = costs(num_rows, dim, size, planned["pilot_k"], pilot_rows)
        details["cost_estimate"] = cost
        if not 2 * cost["sketch"] < cost["exact"]:
            details["auto_choice"] = "exact: the pilot's spectrum asks for a sketch that is not 2x cheaper"
            return None
        details["auto_choice"] = "sketch: the pilot's spectrum allows a sketch at under half the exact cost"

    t0 = time.perf_counter()
    sketch = Sketch.start(omega.to(dev), shift, planned["value_scale"])
    ys = y_rows_buffer(src.num_rows, size)  # the range sketch, kept per row
    # this rank's share of the holdout (the same rows whatever the world size), kept whole as
    # the pass meets them
    holdout = np.nonzero(np.isin(positions, holdout_rows(num_rows, pilot_rows, seed)))[0]
    held: list[torch.Tensor] = []
    left_out: list[int] = []

    def one_pass():
        with progress_bar(src.num_rows, "sketch pass", progress) as bar:
            for start, chunk in src.chunks(chunk_rows):
                mine = holdout[(holdout >= start) & (holdout < start + len(chunk))] - start
                held.append(chunk[torch.from_numpy(mine)])
                y, good = sketch.update(chunk.to(dev, non_blocking=True), backend)
                if good is None:
                    ys[start : start + len(y)] = y.cpu()
                else:
                    good = good.cpu()
                    left_out.extend(left_out_rows(good, start))
                    ys[torch.arange(start, start + len(good))[good]] = y.cpu()
                bar.update(len(chunk))

    comm.together(one_pass)
    timings["sketch_pass"] = time.perf_counter() - t0
    rows = torch.cat(held) if held else torch.zeros(0, dim)
    y_chunks = ((lo, ys[lo : lo + chunk_rows]) for lo in range(0, src.num_rows, chunk_rows))
    scores, found = finish(
        sketch,
        comm,
        energy=energy,
        standardize=standardize,
        held=(rows, ys[torch.from_numpy(holdout)]),
        y_chunks=y_chunks,
        num_local=src.num_rows,
        dev=dev,
        backend=backend,
        timings=timings,
        details=details,
    )
    return EngineResult(scores, found.total, found.values, "sketch", left_out, found.value_scale)


def y_rows_buffer(rows: int, width: int) -> torch.Tensor:
    """Zeroed float32 rows x width: in memory, or past SPILL_BYTES memory-mapped from a temporary
    file (its pages go back to the disk, not to swap). The file has no name: the space returns
    when the tensor is dropped."""
    if rows * width * 4 <= SPILL_BYTES:
        return torch.zeros(rows, width, dtype=torch.float32)
    with tempfile.TemporaryFile(prefix="scalselect-y-") as f:
        try:  # the space taken now: a sparse file that runs out of room mid-pass ends in SIGBUS
            os.posix_fallocate(f.fileno(), 0, rows * width * 4)
        except OSError as exc:
            raise InputError(
                f"no room for the sketch's y rows ({rows * width * 4 / 2**30:.1f} GiB) in "
                f"{tempfile.gettempdir()}: {exc.strerror or exc}; point TMPDIR at a disk "
                "with room"
            ) from None
        return torch.from_numpy(np.memmap(f, dtype=np.float32, mode="r+", shape=(rows, width)))


def finish(
    sketch: Sketch, comm: Comm, *, energy, standardize, held, y_chunks, num_local, dev, backend, timings, details
) -> tuple[np.ndarray, SketchSolution]:
    """After the pass: every rank's sums together, rank 0's solve for all, the holdout's error
    estimate (every rank's holdout), and this rank's scores from its y rows.
    held: (whole rows, their y rows) of this rank's holdout; y_chunks: (first row, y rows)."""
    t0 = time.perf_counter()
    sums = sketch.sums()
    if comm.active:
        flat = comm.all_reduce_sum(torch.cat([s.reshape(-1) for s in sums]))
        sums = [piece.reshape(s.shape) for piece, s in zip(flat.split([s.numel() for s in sums]), sums)]
        sketch = sketch.with_sums(sums)
    if not all(bool(torch.isfinite(s).all()) for s in sums):
        raise InputError("the sketch's sums overflowed: values too large; rescale the vectors")
    if int(sketch.rows) == 0:
        raise InputError("every row holds a NaN or inf: there is nothing to score")
    found = comm.together(lambda: solve(sketch, energy, standardize).to("cpu"), main_only=True)
    found = comm.broadcast_object(found) if comm.active else found
    rows, ys = held
    finite = torch.isfinite(rows).all(dim=1)
    pairs = comm.together(lambda: holdout_errors(found, rows[finite].to(torch.float64), ys[finite]))
    if comm.active:
        every = comm.all_gather_objects(pairs)
        pairs = tuple(np.concatenate([p[i] for p in every]) for i in range(2))
    details.update(certify(found.info | error_estimate(*pairs)))
    timings["solve"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    found = found.to(dev)
    scores = np.empty(num_local, dtype=np.float64)
    for lo, part in y_chunks:
        scores[lo : lo + len(part)] = (
            kernels.projected_sqnorm(part.to(dev), found.ymean, None, False, found.w, backend=backend).cpu().numpy()
        )
    timings["score_pass"] = time.perf_counter() - t0
    return scores, found


class SketchSink:
    """Takes an extraction's parts in place of a store writer: each part is sketched and its y
    rows, its own sums and its holdout rows are committed together (`StoreWriter.add`)."""

    def __init__(
        self, writer, omega: torch.Tensor, shift: torch.Tensor, scale: float, device, holdout_ids: set, backend: str = "auto"
    ):
        self.writer, self.backend = writer, backend
        self.omega, self.shift, self.scale = omega.to(device), shift, scale
        self.dim = int(omega.shape[0])  # the width of the vectors it takes
        self.holdout_ids = holdout_ids

    def add(self, vectors: np.ndarray, ids, skipped=()) -> None:
        part = Sketch.start(self.omega, self.shift, self.scale)  # this part's sums only
        x = torch.from_numpy(np.ascontiguousarray(vectors))
        y, good = part.update(x.to(self.omega.device), self.backend)
        if good is not None:
            raise InputError("a vector to sketch is not finite")  # the extraction refuses these first
        held = np.array([i for i, sample_id in enumerate(ids) if sample_id in self.holdout_ids], np.int64)
        sums = {name: value.cpu().numpy() for name, value in zip(Sketch.SUMS, part.sums())}
        self.writer.add(y.cpu().numpy(), ids, skipped, sketch_store.part_sidecar(sums, vectors, held))


def score_store(
    path: Path,
    plan: tuple,
    src: RowSource,
    shard_entries: list,
    dev,
    *,
    comm: Comm,
    energy,
    standardize,
    sketch_size,
    backend,
    chunk_rows,
    timings,
    details,
):
    """Scores of a sketch store's rows (this rank's shards: `src` and their manifest entries);
    plan: its `read_plan`."""
    t0 = time.perf_counter()

    def gather():  # the plan, checked, and this rank's parts' sums and holdout
        omega, shift, info = plan
        sketch_store.check_rows_plan(path, omega, shift, sketch_size)
        sketch = Sketch.start(omega.to(dev), shift, sketch_store.plan_scale(info))
        held, held_y = [], []
        for entry in shard_entries:
            sums, holdout, holdout_y = sketch_store.read_sketch_part(path / sketch_store.SKETCH_ROWS, entry)
            for name, total in zip(Sketch.SUMS, sketch.sums()):
                total += torch.from_numpy(sums[name]).to(total)
            if len(holdout):
                held.append(torch.from_numpy(holdout))
                held_y.append(torch.from_numpy(holdout_y))
        cat = lambda parts, width: torch.cat(parts) if parts else torch.zeros(0, width)  # noqa: E731
        return sketch, info, (cat(held, omega.shape[0]), cat(held_y, omega.shape[1]))

    sketch, info, held = comm.together(gather)
    details.update(info.get("plan", {}))
    timings["sketch_sums"] = time.perf_counter() - t0
    scores, found = finish(
        sketch,
        comm,
        energy=energy,
        standardize=standardize,
        held=held,
        y_chunks=src.chunks(chunk_rows),
        num_local=src.num_rows,
        dev=dev,
        backend=backend,
        timings=timings,
        details=details,
    )
    return EngineResult(scores, found.total, found.values, "sketch", [], found.value_scale)
