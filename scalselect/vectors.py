"""The scored samples' vectors in a store, read in chunks for `compare` and `select --method
cluster`: what they need of the vectors is kept in memory that does not grow with the pool
(D x D sums, a sample of rows, and for k-means CLUSTER_DIMS numbers per sample).

Second moments: each chunk is centred on its own mean, its Gram taken as one float32 product,
and the chunks merged in float64 (Chan et al.'s pairwise update), so the precision does not hang
on how well one chunk stands for the pool (a pool sorted by source, a small first shard).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError
from .stores import open_rows

CLUSTER_DIMS = 64  # k-means runs on this many leading principal components


def scored_chunks(store, score_ids: list, chunk_rows: int = 8192):
    """(indices into score_ids, float32 rows) of the store's rows that are scored, in store order.
    Every scored sample must have a row."""
    src = open_rows(store)
    at = {sid: i for i, sid in enumerate(score_ids)}
    _all_stored(src, score_ids)
    for start, chunk in src.chunks(chunk_rows):
        where = [(row, at[sid]) for row, sid in enumerate(src.ids[start : start + chunk.shape[0]]) if sid in at]
        if where:
            rows, index = (list(t) for t in zip(*where))
            vectors = chunk[rows].to(torch.float32)
            finite = torch.isfinite(vectors).all(dim=1)
            if not finite.all():  # scoring leaves such rows out: this is another store
                bad = score_ids[index[int(torch.nonzero(~finite)[0])]]
                raise InputError(
                    f"scored sample {bad!r} has a vector holding NaN or inf in the store: is it the store it was scored from?"
                )
            yield np.asarray(index, dtype=np.int64), vectors


def _all_stored(src, score_ids: list) -> None:
    """Every scored sample must have a row in the store."""
    stored = set(src.ids)
    missing = [sid for sid in score_ids if sid not in stored]
    if missing:
        raise InputError(
            f"{len(missing)} scored samples have no vector in the store (e.g. {missing[0]!r}): "
            "is it the store they were scored from?"
        )


def rows_of(store, score_ids: list, which: np.ndarray) -> torch.Tensor:
    """The vectors of score_ids[which] (a sample: read by row, not by a pass), float32, in that order."""
    src = open_rows(store)
    _all_stored(src, score_ids)
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
    """The count, mean (float64) and centred Gram sum (x - mean)(x - mean)^T (float64) of the
    rows added so far."""

    def __init__(self, dim: int):
        self.rows, self.mean = 0, torch.zeros(dim, dtype=torch.float64)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, rows: torch.Tensor) -> None:
        """Merge a chunk: its own centred Gram (float32 product), then the pairwise update."""
        n = rows.shape[0]
        mean = rows.double().mean(dim=0)
        centred = rows - mean.float()
        off = centred.double().mean(dim=0)  # what float32 rounding of the mean left: n off off^T
        gram = (centred.T @ centred).double() - n * torch.outer(off, off)
        delta, total = mean - self.mean, self.rows + n
        self.gram += gram + torch.outer(delta, delta) * (self.rows * n / total)
        self.mean += delta * (n / total)
        self.rows = total

    def centred_at(self, mean: torch.Tensor) -> torch.Tensor:
        """sum of (x - m)(x - m)^T for another centre m."""
        delta = self.mean - mean
        return self.gram + self.rows * torch.outer(delta, delta)


def moments(store, score_ids: list, subsets: dict | None = None, on_chunk=None) -> Moments:
    """One pass over the scored vectors. `subsets`: name -> boolean mask over score_ids.
    `on_chunk(index, rows)` sees every chunk too (what else wants the same pass)."""
    subsets = subsets or {}
    whole, parts = None, {}
    for index, rows in scored_chunks(store, score_ids):
        if whole is None:
            whole = _Sums(rows.shape[1])
            parts = {name: _Sums(rows.shape[1]) for name in subsets}
        whole.add(rows)
        for name, mask in subsets.items():
            chosen = torch.from_numpy(mask[index])
            if chosen.any():
                parts[name].add(rows[chosen])
        if on_chunk is not None:
            on_chunk(index, rows)
    if whole is None:
        raise InputError("no scored sample has a vector in the store")
    return Moments(whole.rows, whole.mean, whole.gram, {name: part.centred_at(whole.mean) for name, part in parts.items()})


def principal_rows(store, score_ids: list, dims: int = CLUSTER_DIMS) -> torch.Tensor:
    """The scored vectors on their `dims` leading principal directions (len(score_ids) x dims,
    float32, in score_ids' order): two passes, the Gram's and the projection's."""
    m = moments(store, score_ids)
    _, vectors = torch.linalg.eigh(m.gram)
    top = vectors[:, -min(dims, vectors.shape[1]) :].flip(1).float()
    out = torch.empty(len(score_ids), top.shape[1])
    mean = m.mean.float()
    for index, rows in scored_chunks(store, score_ids):
        out[torch.from_numpy(index)] = (rows - mean) @ top
    return out


def kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = 25, chunk: int = 8192) -> np.ndarray:
    """Cluster labels of the rows of x (float32 on its device): k-means++ seeding from a
    seeded generator, then Lloyd's iterations until no label changes. An emptied cluster is
    reseeded with the row farthest from its centre."""
    n = x.shape[0]
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    sq = x.pow(2).sum(dim=1)

    def distances(centres):  # squared distances to the nearest centre, and its index
        best = torch.empty(n, device=x.device)
        label = torch.empty(n, dtype=torch.int64, device=x.device)
        csq = centres.pow(2).sum(dim=1)
        for lo in range(0, n, chunk):
            d = sq[lo : lo + chunk, None] - 2 * x[lo : lo + chunk] @ centres.T + csq
            best[lo : lo + chunk], label[lo : lo + chunk] = d.min(dim=1)
        return best.clamp_min(0), label

    centres = x[int(torch.randint(n, (1,), generator=gen))][None]
    for _ in range(1, k):
        best, _ = distances(centres)
        weights = best.cpu().double()
        pick = (
            int(torch.multinomial(weights / weights.sum(), 1, generator=gen))
            if weights.sum() > 0
            else int(torch.randint(n, (1,), generator=gen))
        )
        centres = torch.cat([centres, x[pick][None]])
    labels = None
    for _ in range(iterations):
        best, new = distances(centres)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(best.argmax())
            centres[empty] = x[far]
            best[far] = 0
    return labels.cpu().numpy()
