"""ScalSelect's importance scores: `leverage_scores` reads a store (or a matrix), picks the engine
(the exact one, exact.py; the one-pass sketch, sketch.py) and returns a LeverageResult.

The exact engine, in two streaming passes: pass 1 accumulates the D x D Gram matrix of the rows
shifted by an early mean estimate (float32 chunk products added into a float64 master, so memory
is O(D^2 + chunk)) and the column sums.
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
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import options
from ..distributed import Comm
from ..errors import InputError
from ..options import PILOT_ROWS, ScoreOptions, resolve_device
from ..stores import RowSource, check_ids, open_rows, part_shards, read_manifest, read_store, sketch_store
from . import exact, sketch

# Target size of one streamed chunk (its float32 centred copy).
_CHUNK_BYTES = 128 << 20


@dataclass
class LeverageResult:
    scores: np.ndarray  # float64, one per row, in input order (distributed: this rank's rows)
    sample_ids: list  # id of each row (distributed: this rank's rows)
    k: int  # rank kept
    captured_energy: float  # sum of the top-k sigma^2 over the total
    singular_values: np.ndarray  # sigma_1 .. sigma_k of the centred (scaled) matrix
    total_energy: float  # sum of all sigma^2 (trace)
    num_rows: int  # all rows of the input (distributed: of every rank together)
    dim: int
    side: str  # "gram" (D x D) or "kernel" (N x N)
    eig_method: str  # "full" or "krylov"
    device: str
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    world: int = 1  # processes that scored the input together
    rank: int = 0  # the process whose rows `scores` holds
    shards: list = field(default_factory=list)  # distributed: [(manifest index, rows)] of `scores`
    excluded: list = field(default_factory=list)  # ids of the rows with a NaN or inf: not scored
    method: str = "exact"  # "exact" or "sketch" (what ran; see `sketch` for auto's reason)
    sketch: dict = field(default_factory=dict)  # the sketch's plan and error estimate, or auto's choice

    def without_excluded(self) -> "LeverageResult":
        """The rows left out (NaN scores) dropped from scores and sample_ids, their ids listed."""
        keep = ~np.isnan(self.scores)
        return replace(
            self,
            scores=self.scores[keep],
            sample_ids=[i for i, k in zip(self.sample_ids, keep) if k],
            excluded=self.excluded + [i for i, k in zip(self.sample_ids, keep) if not k],
        )

    def summary(self) -> dict:
        return {
            "num_rows": self.num_rows,
            "num_scored": len(self.scores),
            "dim": self.dim,
            "k": self.k,
            "captured_energy": self.captured_energy,
            "total_energy": self.total_energy,
            "singular_values": self.singular_values.tolist(),
            "side": self.side,
            "eig_method": self.eig_method,
            "device": self.device,
            "world_size": self.world,
            "excluded_non_finite": len(self.excluded),
            "excluded_sample_ids": self.excluded[:100],
            "method": self.method,
            "sketch": self.sketch,
            "warnings": self.warnings(),
            "settings": self.settings,
            "timings_s": self.timings,
        }

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
    shards: list  # [(manifest index, rows)], in the order src reads them
    num_rows: int  # of the whole store
    dim: int
    head_rank: int  # the rank that reads the store's first rows (its first non-empty shard)
    positions: np.ndarray  # the index of each of src's rows in the whole store


def _open_part(data, sample_ids, comm: Comm) -> _Part:
    """Open rank comm.rank's shards of the store `data`; duplicate ids over all ranks are refused."""

    def open_part() -> _Part:
        if sample_ids is not None:
            raise InputError("sample_ids cannot be given when scoring with several processes: the store names its rows")
        if not isinstance(data, (str, os.PathLike)) or not Path(data).is_dir():
            what = repr(str(data)) if isinstance(data, (str, os.PathLike)) else type(data).__name__
            raise InputError(
                f"with {comm.world} processes the input must be a store directory "
                f"(each process reads its share of the shards), not {what}"
            )
        part = (comm.rank, comm.world)
        src = read_store(data, part=part)
        manifest = read_manifest(data)  # checked by read_store
        entries = manifest["shards"]
        rows = [int(entry["rows"]) for entry in entries]
        shards = [(i, rows[i]) for i in part_shards(len(entries), part)]
        first = next(i for i, count in enumerate(rows) if count)  # read_store: some shard has rows
        starts = np.cumsum([0] + rows)
        positions = np.concatenate([np.arange(starts[i], starts[i] + count) for i, count in shards] or [np.zeros(0, np.int64)])
        return _Part(src, shards, sum(rows), int(manifest["dim"]), first % comm.world, positions)

    part = comm.together(open_part)
    every = comm.gather_objects(part.src.ids)

    def check_all_ids() -> None:  # rank 0: each part's ids are unique, but over all parts?
        ids = [i for ids in every for i in ids]
        check_ids(ids, len(ids), str(data))

    comm.together(check_all_ids, main_only=True)
    return part


def leverage_scores(
    data,
    *,
    energy: float = 0.9,
    device: str = "auto",
    standardize: bool = False,
    l2_normalize: bool = False,
    sample_ids=None,
    chunk_rows: int | None = None,
    backend: str = "auto",
    eig_method: str = "auto",
    progress: bool = False,
    comm: Comm | None = None,
    method: str = "auto",
    sketch_size: int | None = None,
    seed: int = 0,
    pilot_rows: int | None = None,
) -> LeverageResult:
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
    ScoreOptions(
        energy=energy,
        device=device,
        standardize=standardize,
        l2_normalize=l2_normalize,
        chunk_rows=chunk_rows,
        method=method,
        sketch_size=sketch_size,
        seed=seed,
        pilot_rows=PILOT_ROWS if pilot_rows is None else pilot_rows,
        backend=backend,
        eig_method=eig_method,
    ).check()

    comm = comm if comm is not None else Comm()
    sketched = sketch_store.is_sketch_store(data)  # `run --no-store`: y rows and sums, no vectors
    rows = Path(data) / sketch_store.SKETCH_ROWS if sketched else data
    if sketched and method == "exact":
        raise InputError(
            f"{data} holds a sketch (run --no-store), not the vectors the exact engine "
            "needs; score it with --method sketch or auto"
        )
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
        plan = sketch_store.read_plan(Path(data))
        d = int(plan[0].shape[0])
    dev = resolve_device(device)
    if chunk_rows is None:
        chunk_rows = max(256, _CHUNK_BYTES // (4 * d))
    pilot_rows = PILOT_ROWS if pilot_rows is None else pilot_rows
    settings = {
        "energy": energy,
        "standardize": standardize,
        "l2_normalize": l2_normalize,
        "chunk_rows": chunk_rows,
        "backend": backend,
        "eig_method": eig_method,
        "method": method,
        "sketch_size": sketch_size,
        "seed": seed,
        "pilot_rows": pilot_rows,
    }
    timings: dict[str, float] = {}
    opts = dict(
        standardize=standardize,
        l2_normalize=l2_normalize,
        backend=backend,
        eig_method=eig_method,
        progress=progress and comm.is_main,
        timings=timings,
        comm=comm,
        dim=d,
        reads_head=reads_head,
    )
    side = "kernel" if n < d else "gram"
    details: dict = {}
    found = None
    if sketched:
        found = sketch.score_store(
            Path(data),
            plan,
            src,
            entries,
            dev,
            comm=comm,
            energy=energy,
            standardize=standardize,
            sketch_size=sketch_size,
            backend=backend,
            chunk_rows=chunk_rows,
            timings=timings,
            details=details,
        )
    elif method == "auto" and l2_normalize:
        details["auto_choice"] = "exact: l2_normalize needs the column moments before the pass"
    elif method == "sketch" or (method == "auto" and sketch.may_pay(n, d)):
        found = sketch.sketch_side(
            src,
            dev,
            energy,
            chunk_rows,
            standardize=standardize,
            backend=backend,
            progress=progress and comm.is_main,
            timings=timings,
            comm=comm,
            dim=d,
            num_rows=n,
            positions=part.positions if comm.active else np.arange(n),
            pilot_source=lambda: read_store(data) if comm.active else src,
            sketch_size=sketch_size,
            seed=seed,
            pilot_rows=pilot_rows,
            auto=method == "auto",
            details=details,
        )
        if found is not None and method == "auto" and not details["certified"]:
            details["auto_choice"] = "exact: the sketch could not certify its scores"
            found = None
    elif method == "auto":
        details["auto_choice"] = "exact: at this size a sketch's pilot alone costs over half the exact engine"
    if found is not None:
        side, chosen = "sketch", "sketch"
    else:
        found = (exact.kernel_side if side == "kernel" else exact.gram_side)(src, dev, energy, chunk_rows, **opts)
        chosen = "exact"
    scores, total, top, eig, left_out, scale = found
    scores[left_out] = np.nan
    comm.together(lambda: _check_scores(scores, left_out))
    captured = float(top.sum()) / total
    result = LeverageResult(
        scores=scores,
        sample_ids=list(src.ids),
        k=int(top.numel()),
        captured_energy=captured,
        singular_values=(top.clamp_min(0).sqrt() / scale).cpu().numpy(),
        total_energy=total / scale / scale,
        num_rows=n,
        dim=d,
        side=side,
        eig_method=eig,
        device=str(dev),
        timings=timings,
        settings=settings,
        world=comm.world,
        rank=comm.rank,
        shards=shards,
        method=chosen,
        sketch=details,
    )
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
            pieces.append((index, rows, ids[lo : lo + rows], scores[lo : lo + rows]))
            lo += rows
    pieces.sort(key=lambda piece: piece[0])
    ids = [i for piece in pieces for i in piece[2]]
    scores = np.concatenate([piece[3] for piece in pieces])
    if len(ids) != result.num_rows:
        raise RuntimeError(f"gathered {len(ids)} scores for a store of {result.num_rows} rows")
    return replace(result, scores=scores, sample_ids=ids, shards=[piece[:2] for piece in pieces]).without_excluded()
