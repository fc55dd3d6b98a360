"""`scalselect compare`: training-free quality figures of the subsets that several selection
methods pick at one budget, from the same store and scores. The eligible vectors are held in
memory (float32), as `select --method cluster` holds them.

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

from .baselines import IMAGE_FOLDER, source_of
from .eigen import centred_spectrum, rank_for_energy
from .errors import InputError
from .select import top_positions, vectors_of

COVERAGE_SAMPLE = 2000


def compare_methods(pool, score_ids: list, scores: np.ndarray, vectors: tuple, budget, methods: list[str], *,
                    seed: int = 0, energy: float = 0.9, source_by: str = IMAGE_FOLDER, clusters: int = 100) -> dict:
    """{"k", "budget", "methods": {method: figures}} for the subsets each method picks."""
    data = torch.from_numpy(vectors_of(score_ids, vectors, np.float64))
    data = (data - data.mean(dim=0)).float()
    values = centred_spectrum(data)
    total = float(values.sum())
    if not total > 0:
        raise InputError("every vector is the same: there is nothing to compare")
    k = rank_for_energy(values, total, energy) or len(values)
    probe = np.random.default_rng(seed).choice(len(score_ids), size=min(COVERAGE_SAMPLE, len(score_ids)),
                                               replace=False)
    position = pool.index_of()
    where = [position[sid] for sid in score_ids]
    sources = pool.map(lambda r: source_of(r, pool.layout, source_by), where)
    pool_share = {s: c / len(sources) for s, c in Counter(sources).items()}
    at = {p: i for i, p in enumerate(where)}  # pool position -> eligible row
    report = {"k": k, "energy": energy, "eligible": len(score_ids), "source_by": source_by, "methods": {}}
    for method in methods:
        chosen, summary = top_positions(pool, score_ids, scores, budget, method=method, seed=seed,
                                        vectors=vectors, clusters=clusters)
        subset = data[[at[p] for p in chosen]]
        right = torch.linalg.svd(subset, full_matrices=False).Vh[:k].T  # D x k (fewer if S is small)
        inside = float((data @ right).double().pow(2).sum())
        # distances computed directly, not through |a|^2 - 2ab + |b|^2 (whose rounding leaves a
        # vector 1e-5 away from itself)
        nearest = torch.cdist(data[probe].double(), subset.double(),
                              compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        got = Counter(sources[at[p]] for p in chosen)
        shares = {s: {"pool": pool_share[s], "subset": got[s] / len(chosen)} for s in sorted(pool_share)}
        report["methods"][method] = {
            "selected": summary["selected"],
            "projection_error": max(0.0, 1 - inside / total),
            "coverage_mean": float(nearest.mean()), "coverage_max": float(nearest.max()),
            "largest_share_gap": max(abs(v["pool"] - v["subset"]) for v in shares.values()),
            "shares": shares}
    return report


def table(report: dict) -> str:
    """The figures as a fixed-width table, one method per line."""
    lines = [f"{'method':<12}{'selected':>9}{'proj. error':>13}{'coverage mean':>15}{'coverage max':>14}"
             f"{'largest share gap':>19}"]
    for method, m in report["methods"].items():
        lines.append(f"{method:<12}{m['selected']:>9}{m['projection_error']:>13.4f}{m['coverage_mean']:>15.4g}"
                     f"{m['coverage_max']:>14.4g}{m['largest_share_gap']:>18.1%}")
    return "\n".join(lines)
