"""`scalselect compare`: training-free quality figures of the subsets that several selection
methods pick at one budget, from the same store and scores, in one pass over the store (see
scalselect.vectors: the vectors are never held in memory together).

For each method's subset S of the eligible (scored) samples, with X the eligible vectors centred
by their mean:
- projection error: the share of X's energy outside the top-k right singular subspace of S's
  rows (centred by the same mean), k being the pool's own rank at the scoring energy. A subset
  that spans the pool's dominant directions scores low.
- coverage: for a seeded sample of pool vectors, the distance to the nearest vector of S
  (mean and max). A subset that leaves regions of the pool empty scores high.
- balance: each source's share of S against its share of the pool, and the largest gap.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from . import options
from .baselines import IMAGE_FOLDER, source_of
from .scoring.eigen import rank_for_energy
from .errors import InputError
from .select import top_positions
from .vectors import moments, rows_of

COVERAGE_SAMPLE = 2000
CANDIDATES = 8  # nearest rows by a product, then measured directly


def compare_methods(
    pool,
    score_ids: list,
    scores: np.ndarray,
    store,
    budget,
    methods: list[str],
    *,
    seed: int = 0,
    energy: float = 0.9,
    source_by: str = IMAGE_FOLDER,
    clusters: int = 100,
) -> dict:
    """{"k", "budget", "methods": {method: figures}} for the subsets each method picks, from one
    pass over the store's scored vectors (plus, for "cluster", its own two)."""
    energy, seed = options.share(energy, "--energy"), options.seed(seed)
    position = pool.index_of()
    where = [position[sid] for sid in score_ids]
    sources = pool.map(lambda r: source_of(r, pool.layout, source_by), where)
    pool_share = {s: c / len(sources) for s, c in Counter(sources).items()}
    at = {p: i for i, p in enumerate(where)}  # pool position -> eligible row
    chosen, subsets = {}, {}
    for method in methods:
        chosen[method], _ = top_positions(
            pool, score_ids, scores, budget, method=method, seed=seed, store=store, clusters=clusters
        )
        subsets[method] = np.zeros(len(score_ids), dtype=bool)
        subsets[method][[at[p] for p in chosen[method]]] = True
    probe = np.random.default_rng(seed).choice(len(score_ids), size=min(COVERAGE_SAMPLE, len(score_ids)), replace=False)
    probed = rows_of(store, score_ids, probe).double()
    nearest = {method: torch.full((len(probe),), float("inf"), dtype=torch.float64) for method in methods}

    def cover(index, rows):
        for method, mask in subsets.items():
            picked = rows[torch.from_numpy(mask[index])]
            if len(picked):
                nearest[method] = torch.minimum(nearest[method], nearest_distances(probed, picked))

    m = moments(store, score_ids, subsets, on_chunk=cover)
    values = torch.linalg.eigvalsh(m.gram).flip(0).clamp_min(0)
    total = float(m.gram.trace())  # the energy, as `inside` measures it: from the same matrix
    if not total > 0:
        raise InputError("every vector is the same: there is nothing to compare")
    k = rank_for_energy(values, total, energy) or len(values)
    report = {"k": k, "energy": energy, "eligible": len(score_ids), "source_by": source_by, "methods": {}}
    for method in methods:
        # the top-k right singular vectors of the subset's (pool-centred) rows
        right = torch.linalg.eigh(m.subsets[method])[1][:, -min(k, len(chosen[method])) :]
        inside = float((right * (m.gram @ right)).sum())
        got = Counter(sources[at[p]] for p in chosen[method])
        shares = {s: {"pool": pool_share[s], "subset": got[s] / len(chosen[method])} for s in sorted(pool_share)}
        report["methods"][method] = {
            "selected": len(chosen[method]),
            "projection_error": max(0.0, 1 - inside / total),
            "coverage_mean": float(nearest[method].mean()),
            "coverage_max": float(nearest[method].max()),
            "largest_share_gap": max(abs(v["pool"] - v["subset"]) for v in shares.values()),
            "shares": shares,
        }
    return report


def nearest_distances(probe: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The distance from each probe row (float64) to its nearest row of `rows`. The CANDIDATES
    nearest by |a|^2 - 2ab + |b|^2 (one float64 GEMM, both centred on the probe's mean) are
    measured directly: the product alone leaves a vector ~1e-8 away from itself, direct
    distances for every pair cost ~20x more. (In float32 the product could misorder more than
    CANDIDATES near-duplicates.)"""
    centre = probe.mean(dim=0)
    a, b = probe - centre, rows.double() - centre
    approx = a.pow(2).sum(dim=1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(dim=1)
    nearest = approx.topk(min(CANDIDATES, b.shape[0]), dim=1, largest=False).indices
    rows = rows.double()
    return torch.cat(
        [
            (probe[lo : lo + 256, None, :] - rows[nearest[lo : lo + 256]]).pow(2).sum(dim=-1).sqrt().min(dim=1).values
            for lo in range(0, probe.shape[0], 256)
        ]
    )  # 256 x 8 x D at a time


def table(report: dict) -> str:
    """The figures as a fixed-width table, one method per line."""
    lines = [
        f"{'method':<12}{'selected':>9}{'proj. error':>13}{'coverage mean':>15}{'coverage max':>14}{'largest share gap':>19}"
    ]
    for method, m in report["methods"].items():
        lines.append(
            f"{method:<12}{m['selected']:>9}{m['projection_error']:>13.4f}{m['coverage_mean']:>15.4g}"
            f"{m['coverage_max']:>14.4g}{m['largest_share_gap']:>18.1%}"
        )
    return "\n".join(lines)
