"""The scored samples' vectors in a store, read in chunks for `compare` and `select --method
cluster`: what they need of the vectors is kept in memory that does not grow with the pool
(D x D sums, a sample of rows, and for k-means CLUSTER_DIMS numbers per sample).

Second moments are summed in float64 over float32 products of rows shifted by the first chunk's
mean, as the exact scoring engine sums its Gram matrix, and centred after the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError
from .store import open_rows

CLUSTER_DIMS = 64  # k-means runs on this many leading principal components


def scored_chunks(store, score_ids: list, chunk_rows: int = 8192):
    """(indices into score_ids, float32 rows) of the store's rows that are scored, in store order.
    Every scored sample must have a row."""
    src = open_rows(store)
    at = {sid: i for i, sid in enumerate(score_ids)}
    missing = len(at) - len(at.keys() & set(src.ids))
    if missing:
        example = next(sid for sid in score_ids if sid not in set(src.ids))
        raise InputError(f"{missing} scored samples have no vector in the store (e.g. {example!r}): "
                         "is it the store they were scored from?")
    for start, chunk in src.chunks(chunk_rows):
        where = [(row, at[sid]) for row, sid in enumerate(src.ids[start:start + chunk.shape[0]]) if sid in at]
        if where:
            rows, index = (list(t) for t in zip(*where))
            yield np.asarray(index, dtype=np.int64), chunk[rows].to(torch.float32)


def rows_of(store, score_ids: list, which: np.ndarray) -> torch.Tensor:
    """The vectors of score_ids[which] (a sample: read by row, not by a pass), float32, in that order."""
    src = open_rows(store)
    row = {sid: i for i, sid in enumerate(src.ids)}
    wanted = np.asarray([row[score_ids[i]] for i in which], dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    taken = src.take(wanted[order]).to(torch.float32)
    out = torch.empty_like(taken)
    out[torch.from_numpy(order)] = taken
    return out


@dataclass
class Moments:
    """The scored vectors' count, mean and centred Gram (float64), and for each named subset its
    Gram centred by the same (whole pool's) mean."""
    count: int
    mean: torch.Tensor
    gram: torch.Tensor
    subsets: dict = field(default_factory=dict)


class _Sums:
    """Shifted sums: sum of (x - c), sum of (x - c)(x - c)^T, the number of rows."""

    def __init__(self, dim: int):
        self.rows, self.sum = 0, torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, shifted: torch.Tensor) -> None:
        self.rows += shifted.shape[0]
        self.sum += shifted.sum(dim=0, dtype=torch.float64)
        self.outer += (shifted.T @ shifted).to(torch.float64)

    def centred_at(self, delta: torch.Tensor) -> torch.Tensor:
        """sum of (x - m)(x - m)^T with m = c + delta."""
        return self.outer - torch.outer(delta, self.sum) - torch.outer(self.sum, delta) \
            + self.rows * torch.outer(delta, delta)


def moments(store, score_ids: list, subsets: dict | None = None, on_chunk=None) -> Moments:
    """One pass over the scored vectors. `subsets`: name -> boolean mask over score_ids.
    `on_chunk(index, rows)` sees every chunk too (what else wants the same pass)."""
    subsets = subsets or {}
    shift = whole = None
    parts = {}
    for index, rows in scored_chunks(store, score_ids):
        if shift is None:
            shift = rows.double().mean(dim=0).float()
            whole = _Sums(rows.shape[1])
            parts = {name: _Sums(rows.shape[1]) for name in subsets}
        shifted = rows - shift
        whole.add(shifted)
        for name, mask in subsets.items():
            chosen = torch.from_numpy(mask[index])
            if chosen.any():
                parts[name].add(shifted[chosen])
        if on_chunk is not None:
            on_chunk(index, rows)
    if whole is None:
        raise InputError("no scored sample has a vector in the store")
    delta = whole.sum / whole.rows
    return Moments(whole.rows, shift.double() + delta, whole.centred_at(delta),
                   {name: part.centred_at(delta) for name, part in parts.items()})


def principal_rows(store, score_ids: list, dims: int = CLUSTER_DIMS) -> torch.Tensor:
    """The scored vectors on their `dims` leading principal directions (len(score_ids) x dims,
    float32, in score_ids' order): two passes, the Gram's and the projection's."""
    m = moments(store, score_ids)
    _, vectors = torch.linalg.eigh(m.gram)
    top = vectors[:, -min(dims, vectors.shape[1]):].flip(1).float()
    out = torch.empty(len(score_ids), top.shape[1])
    mean = m.mean.float()
    for index, rows in scored_chunks(store, score_ids):
        out[torch.from_numpy(index)] = (rows - mean) @ top
    return out
