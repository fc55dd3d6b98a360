"""The leverage-score engine: exact ScalSelect importance scores in two streaming passes.

Pass 1 accumulates the D x D Gram matrix of the rows shifted by an early mean estimate (float32
chunk products added into a float64 master, so memory is O(D^2 + chunk)) and the column sums.
The centred Gram follows exactly: C = G_s - N (mu - s)(mu - s)^T. Its leading eigenpairs give
V_k and sigma_k^2; k is the smallest rank whose energy reaches `energy` x trace(C). Pass 2 reads
each row once more and returns ||(x_i - mu) V_k Sigma_k^-1||^2, the leverage of row i in the top-k
left singular subspace of the centred matrix. When N < D the N x N kernel is the cheaper side.

Under torchrun (a `Comm` of more than one process) the input is a store and each rank reads
only its share of the shards (`store.part_shards`). The shift is the one a single process
takes, the mean of the store's first rows, sent by the rank that holds them to all (so each
shard's float32 products are the very ones of a single process, and the scores agree with it
to float64 rounding, not just float32's); pass 1 runs locally and its Gram matrix, column sums
and row count are summed over the ranks; rank 0 finds the eigenpairs and broadcasts them; pass
2 scores each rank's own rows.
On the N x N side every rank sends its rows to rank 0, which scores them all and sends each
rank its own scores back. Each rank's result holds its own rows; `gather_result` collects all
of them, in store order, on rank 0. An error one rank meets in its local work is held until the
end of that step, when every rank learns of it (`Comm.together`), so no rank is left waiting in a
collective: the rank that met it raises it, the others raise "rank R: <message>".
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import kernels, options
from ..distributed import Comm
from ..errors import InputError
from ..options import PILOT_ROWS, ScoreOptions, resolve_device
from ..store import RowSource, check_ids, open_rows, part_shards, read_manifest, read_store
from . import sketch
from .eigen import TopEigen, top_eigenpairs
from .rows import EngineResult, check_spread, head_magnitude, inverse_std, left_out_rows, prep_finite, progress_bar, value_scale

# Target size of one streamed chunk (its float32 centred copy).
_CHUNK_BYTES = 128 << 20
# Rows of the early mean estimate that the Gram side shifts by (at most; the first chunk's).
_HEAD_ROWS = 1024


@dataclass
class LeverageResult:
    scores: np.ndarray          # float64, one per row, in input order (distributed: this rank's rows)
    sample_ids: list            # id of each row (distributed: this rank's rows)
    k: int                      # rank kept
    captured_energy: float      # sum of the top-k sigma^2 over the total
    singular_values: np.ndarray  # sigma_1 .. sigma_k of the centred (scaled) matrix
    total_energy: float         # sum of all sigma^2 (trace)
    num_rows: int               # all rows of the input (distributed: of every rank together)
    dim: int
    side: str                   # "gram" (D x D) or "kernel" (N x N)
    eig_method: str             # "full" or "krylov"
    device: str
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    world: int = 1              # processes that scored the input together
    rank: int = 0               # the process whose rows `scores` holds
    shards: list = field(default_factory=list)  # distributed: [(manifest index, rows)] of `scores`
    excluded: list = field(default_factory=list)  # ids of the rows with a NaN or inf: not scored
    method: str = "exact"       # "exact" or "sketch" (what ran; see `sketch` for auto's reason)
    sketch: dict = field(default_factory=dict)  # the sketch's plan and error estimate, or auto's choice

    def without_excluded(self) -> "LeverageResult":
        """The rows left out (NaN scores) dropped from scores and sample_ids, their ids listed."""
        keep = ~np.isnan(self.scores)
        return replace(self, scores=self.scores[keep],
                       sample_ids=[i for i, k in zip(self.sample_ids, keep) if k],
                       excluded=self.excluded + [i for i, k in zip(self.sample_ids, keep) if not k])

    def summary(self) -> dict:
        return {"num_rows": self.num_rows, "num_scored": len(self.scores), "dim": self.dim, "k": self.k,
                "captured_energy": self.captured_energy, "total_energy": self.total_energy,
                "singular_values": self.singular_values.tolist(), "side": self.side,
                "eig_method": self.eig_method, "device": self.device, "world_size": self.world,
                "excluded_non_finite": len(self.excluded), "excluded_sample_ids": self.excluded[:100],
                "method": self.method, "sketch": self.sketch, "warnings": self.warnings(),
                "settings": self.settings, "timings_s": self.timings}

    def warnings(self) -> list[str]:
        """Lines the user should read: a sketch that cannot certify its accuracy."""
        text = sketch.warning_text(self.sketch, self.settings["energy"]) if self.method == "sketch" else None
        return [text] if text else []


def _check_scores(scores: np.ndarray, excluded: list) -> None:
    """Every score is finite but those of the rows left out (NaN)."""
    if not np.all(np.isfinite(np.delete(scores, excluded))):
        raise RuntimeError("scalselect produced non-finite scores; please report this with the input's shape")


@dataclass
class _Part:
    """This rank's share of a store, and what every rank needs to know of the whole store."""
    src: RowSource
    shards: list        # [(manifest index, rows)], in the order src reads them
    num_rows: int       # of the whole store
    dim: int
    head_rank: int      # the rank that reads the store's first rows (its first non-empty shard)
    positions: np.ndarray  # the index of each of src's rows in the whole store


def _open_part(data, sample_ids, comm: Comm) -> _Part:
    """Open rank comm.rank's shards of the store `data`; duplicate ids over all ranks are refused."""
    def open_part() -> _Part:
        if sample_ids is not None:
            raise InputError("sample_ids cannot be given when scoring with several processes: "
                             "the store names its rows")
        if not isinstance(data, (str, os.PathLike)) or not Path(data).is_dir():
            what = repr(str(data)) if isinstance(data, (str, os.PathLike)) else type(data).__name__
            raise InputError(f"with {comm.world} processes the input must be a store directory "
                             f"(each process reads its share of the shards), not {what}")
        part = (comm.rank, comm.world)
        src = read_store(data, part=part)
        manifest = read_manifest(data)  # checked by read_store
        entries = manifest["shards"]
        rows = [int(entry["rows"]) for entry in entries]
        shards = [(i, rows[i]) for i in part_shards(len(entries), part)]
        first = next(i for i, count in enumerate(rows) if count)  # read_store: some shard has rows
        starts = np.cumsum([0] + rows)
        positions = np.concatenate([np.arange(starts[i], starts[i] + count) for i, count in shards] or
                                   [np.zeros(0, np.int64)])
        return _Part(src, shards, sum(rows), int(manifest["dim"]), first % comm.world, positions)

    part = comm.together(open_part)
    every = comm.gather_objects(part.src.ids)

    def check_all_ids() -> None:  # rank 0: each part's ids are unique, but over all parts?
        ids = [i for ids in every for i in ids]
        check_ids(ids, len(ids), str(data))

    comm.together(check_all_ids, main_only=True)
    return part


def leverage_scores(data, *, energy: float = 0.9, device: str = "auto", standardize: bool = False,
                    l2_normalize: bool = False, sample_ids=None, chunk_rows: int | None = None,
                    backend: str = "auto", eig_method: str = "auto", progress: bool = False,
                    comm: Comm | None = None, method: str = "auto", sketch_size: int | None = None,
                    seed: int = 0, pilot_rows: int | None = None) -> LeverageResult:
    """ScalSelect importance scores of the rows of `data`.

    data: numpy array / memmap / torch tensor (N x D), a `.npy` file, the reference's
    `all_representations.npz`, or a store directory (see scalselect.store).
    energy: share of the centred matrix's energy the kept subspace must hold (0 < energy <= 1).
    The rows are prepared as the reference implementation's flags say, in its order: centre
    each column; with standardize, divide it by its standard deviation (ddof 0; a constant
    column stays 0); with l2_normalize, scale each row to unit length and decompose that
    matrix as it is (it is not centred again). l2_normalize needs the column moments before
    the rows are prepared: an extra pass over them, in the exact engine only.
    comm: with more than one process (torchrun; see scalselect.distributed) `data` must be a
    store directory, every rank must call this with the same arguments, and each scores only
    its share of the shards: the result's `scores` and `sample_ids` are that rank's rows (k,
    sigma, energies and num_rows are those of the whole store). `gather_result` collects them.
    A rank may have no rows at all (more ranks than shards): it takes part with nothing.
    method: "exact" (two passes, the D x D Gram), "sketch" (one pass, a randomized sketch of
    size sketch_size, chosen from a pilot sample when None; see scalselect.sketch) or "auto":
    the sketch when N >= D and the pilot's spectrum makes it at least 2x cheaper (sketch.costs;
    about N >= 40,000 at D = 4,096), and then only if it certifies its accuracy (else the exact
    engine runs after it).
    The result's `sketch` holds the sketch's plan and error estimate, and auto's reason; a
    sketch that cannot certify its accuracy says so in `warnings()` and with a RuntimeWarning.
    seed: the pilot sample's and the test matrix's random seed; pilot_rows: its size (default
    sketch.PILOT_ROWS).
    """
    ScoreOptions(energy=energy, device=device, standardize=standardize, l2_normalize=l2_normalize,
                 chunk_rows=chunk_rows, method=method, sketch_size=sketch_size, seed=seed,
                 pilot_rows=PILOT_ROWS if pilot_rows is None else pilot_rows, backend=backend,
                 eig_method=eig_method).check()

    comm = comm if comm is not None else Comm()
    sketched = sketch.is_sketch_store(data)  # `run --no-store`: y rows and sums, no vectors
    rows = Path(data) / sketch.SKETCH_ROWS if sketched else data
    if sketched and method == "exact":
        raise InputError(f"{data} holds a sketch (run --no-store), not the vectors the exact engine "
                         "needs; score it with --method sketch or auto")
    if l2_normalize and sketched:
        raise InputError(options.sketch_without_l2(f"{data}, a sketch store (run --no-store),"))
    if comm.active:
        part = _open_part(rows, sample_ids, comm)
        src, n, d, shards = part.src, part.num_rows, part.dim, part.shards
        reads_head = comm.rank == part.head_rank
    else:
        src = open_rows(rows, sample_ids)
        n, d, shards, reads_head = src.num_rows, src.dim, [], True
    if sketched:
        entries = read_manifest(rows)["shards"]
        entries = [entries[i] for i, _ in shards] if comm.active else entries
        plan = sketch.read_plan(Path(data))
        d = int(plan[0].shape[0])
    dev = resolve_device(device)
    if chunk_rows is None:
        chunk_rows = max(256, _CHUNK_BYTES // (4 * d))
    pilot_rows = PILOT_ROWS if pilot_rows is None else pilot_rows
    settings = {"energy": energy, "standardize": standardize, "l2_normalize": l2_normalize,
                "chunk_rows": chunk_rows, "backend": backend, "eig_method": eig_method,
                "method": method, "sketch_size": sketch_size, "seed": seed, "pilot_rows": pilot_rows}
    timings: dict[str, float] = {}
    opts = dict(standardize=standardize, l2_normalize=l2_normalize, backend=backend,
                eig_method=eig_method, progress=progress and comm.is_main, timings=timings,
                comm=comm, dim=d, reads_head=reads_head)
    side = "kernel" if n < d else "gram"
    details: dict = {}
    found = None
    if sketched:
        found = sketch.score_store(Path(data), plan, src, entries, dev, comm=comm, energy=energy, standardize=standardize,
                                   sketch_size=sketch_size, backend=backend,
                                   chunk_rows=chunk_rows, timings=timings, details=details)
    elif method == "auto" and l2_normalize:
        details["auto_choice"] = "exact: l2_normalize needs the column moments before the pass"
    elif method == "sketch" or (method == "auto" and sketch.may_pay(n, d)):
        found = sketch.sketch_side(src, dev, energy, chunk_rows, standardize=standardize, backend=backend,
                                   progress=progress and comm.is_main, timings=timings, comm=comm, dim=d, num_rows=n,
                                   positions=part.positions if comm.active else np.arange(n),
                                   pilot_source=lambda: read_store(data) if comm.active else src,
                                   sketch_size=sketch_size, seed=seed, pilot_rows=pilot_rows,
                                   auto=method == "auto", details=details)
        if found is not None and method == "auto" and not details["certified"]:
            details["auto_choice"] = "exact: the sketch could not certify its scores"
            found = None
    elif method == "auto":
        details["auto_choice"] = "exact: at this size a sketch's pilot alone costs over half the exact engine"
    if found is not None:
        side, chosen = "sketch", "sketch"
    else:
        found = (_kernel_side if side == "kernel" else _gram_side)(src, dev, energy, chunk_rows, **opts)
        chosen = "exact"
    scores, total, top, eig, left_out, scale = found
    scores[left_out] = np.nan
    comm.together(lambda: _check_scores(scores, left_out))
    captured = float(top.sum()) / total
    result = LeverageResult(
        scores=scores, sample_ids=list(src.ids), k=int(top.numel()), captured_energy=captured,
        singular_values=(top.clamp_min(0).sqrt() / scale).cpu().numpy(), total_energy=total / scale / scale, num_rows=n,
        dim=d, side=side, eig_method=eig, device=str(dev), timings=timings, settings=settings,
        world=comm.world, rank=comm.rank, shards=shards, method=chosen, sketch=details)
    for text in result.warnings():
        if comm.is_main:
            warnings.warn(f"scalselect: {text}", RuntimeWarning, stacklevel=2)
    # distributed: the rows stay aligned with the shards until gather_result
    return result if comm.active else result.without_excluded()


def gather_result(result: LeverageResult, comm: Comm | None) -> LeverageResult | None:
    """Every rank's rows of a distributed `leverage_scores`, in store order (the manifest's
    shard order, as one process gives them), on rank 0; None on the other ranks. Every rank
    must call it. With one process the result itself."""
    if comm is None or not comm.active:
        return result
    every = comm.gather_objects((result.shards, result.sample_ids, result.scores))
    if not comm.is_main:
        return None
    pieces = []
    for shards, ids, scores in every:
        lo = 0
        for index, rows in shards:
            pieces.append((index, rows, ids[lo:lo + rows], scores[lo:lo + rows]))
            lo += rows
    pieces.sort(key=lambda piece: piece[0])
    ids = [i for piece in pieces for i in piece[2]]
    scores = np.concatenate([piece[3] for piece in pieces])
    if len(ids) != result.num_rows:
        raise RuntimeError(f"gathered {len(ids)} scores for a store of {result.num_rows} rows")
    return replace(result, scores=scores, sample_ids=ids,
                   shards=[piece[:2] for piece in pieces]).without_excluded()


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


def _gram_side(src: RowSource, dev, energy, chunk_rows, *, standardize, l2_normalize, backend,
               eig_method, progress, timings, comm: Comm, dim: int, reads_head: bool):
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
        for _, chunk in src.chunks(min(_HEAD_ROWS, chunk_rows)):
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
        shift, inv = _column_moments(src, shift, inv, scale, standardize, chunk_rows=chunk_rows, dev=dev,
                                     backend=backend, comm=comm, left_out=left_out,
                                     bar=lambda: progress_bar(n_local, f"pass 1/{passes} (column moments)", progress))
    gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
    colsum = torch.zeros(d, dtype=torch.float64, device=dev)

    def pass1():
        with progress_bar(n_local, f"pass {passes - 1}/{passes} (Gram)", progress) as bar:
            for start, chunk in src.chunks(chunk_rows):
                # the moments pass noted the rows it left out
                centred, sums = prep(chunk.to(dev, non_blocking=True), shift, inv,
                                     None if l2_normalize else start, l2_normalize)
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
                scores[start:start + chunk.shape[0]] = part.cpu().numpy()
                bar.update(chunk.shape[0])

    comm.together(pass2)
    timings["score_pass"] = time.perf_counter() - t0
    # energies are those of the rows multiplied by `scale` (standardised or unit rows have no units)
    return EngineResult(scores, total, eig.values, eig.method, left_out, 1.0 if standardize or l2_normalize else scale)


def _column_moments(src: RowSource, shift, inv, scale: float, standardize: bool, *, chunk_rows, dev, backend,
                    comm: Comm, left_out: list, bar):
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
                (_, part, part_sq), good = prep_finite(kernels.sketch_prep, chunk, shift, inv, False,
                                                        backend=backend)
                if good is not None:
                    left_out.extend(left_out_rows(good, start))
                sums.add_(part)
                squares.add_(part_sq)
                progress.update(chunk.shape[0])

    comm.together(one_pass)
    n = src.num_rows - len(left_out)
    if comm.active:
        both = comm.all_reduce_sum(torch.cat([sums, squares, sums.new_tensor([n])]))
        sums, squares, n = both[:d], both[d:2 * d], int(both[2 * d])
    if n == 0:
        raise InputError("every row holds a NaN or inf: there is nothing to score")
    delta = sums / n
    var = (squares / n - delta * delta).clamp_min(0)   # of the rows multiplied by scale
    raw_second = var + (shift * scale + delta) ** 2      # mean(x_j^2), in the same units
    check_spread(n * float(var.sum()), n * float(raw_second.sum()), n)
    mean = shift + delta / scale
    if standardize:
        inv = inverse_std(var, raw_second) * scale
    return mean, inv


def _centred_gram(gram: torch.Tensor, colsum: torch.Tensor, shift: torch.Tensor, n: int, standardize: bool,
                  scale: float = 1.0):
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
        solution = (mean.cpu(), None if inv_scale is None else inv_scale.cpu(), total,
                    eig.values.cpu(), eig.vectors.cpu(), eig.method)
    mean, inv_scale, total, values, vectors, method = comm.broadcast_object(solution)
    inv_scale = None if inv_scale is None else inv_scale.to(dev)
    return mean.to(dev), inv_scale, total, TopEigen(values.to(dev), vectors.to(dev), method)


def _kernel_side(src: RowSource, dev, energy, chunk_rows, *, standardize, l2_normalize, backend,
                 eig_method, progress, timings, comm: Comm, dim: int, reads_head):
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
        scores, total, values, method, scale = _kernel_solve(x, energy, standardize, l2_normalize, eig_method,
                                                             timings, t0)
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
    scores = (eig.vectors ** 2).sum(dim=1)  # rows of U_k: the left singular vectors
    return scores, total, eig.values, eig.method, 1.0 if standardize or l2_normalize else scale
