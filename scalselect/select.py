"""Scores files and budgets: which samples of a pool to keep."""

from __future__ import annotations

import collections
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from . import options
from .atomic import atomic_open, json_text
from .data import Pool, write_subset
from .errors import InputError


def write_scores(path: str | os.PathLike, sample_ids: list, scores: np.ndarray) -> None:
    """One {"sample_id", "importance"} object per line, highest first (ties: input order)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    with atomic_open(path) as f:
        for i in order:
            f.write(json_text({"sample_id": sample_ids[i], "importance": float(scores[i])}) + "\n")


def read_scores(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """Sample ids and importances from a scores JSONL file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scores {path}: no such file")
    ids, values, seen = [], [], set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"scores {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            sid, value = rec["sample_id"], rec["importance"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # ValueError: 5000-digit numbers too
            raise InputError(
                f'scores {path}, line {line_no}: expected {{"sample_id": ..., "importance": <number>}} ({exc})'
            ) from None
        if not isinstance(sid, (str, int)) or isinstance(sid, bool):
            raise InputError(f"scores {path}, line {line_no}: sample_id must be a string or an integer")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"scores {path}, line {line_no}: importance must be a number")
        try:
            value = float(value)
        except OverflowError:
            raise InputError(f"scores {path}, line {line_no}: importance {str(value)[:20]}... is too large") from None
        if not math.isfinite(value):
            raise InputError(f"scores {path}, line {line_no}: importance is not finite")
        if sid in seen:
            raise InputError(f"scores {path}, line {line_no}: sample id {sid!r} appears twice")
        seen.add(sid)
        ids.append(sid)
        values.append(value)
    if not ids:
        raise InputError(f"scores {path}: no scores in the file")
    return ids, np.asarray(values, dtype=np.float64)


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def parse_budget(budget: str | int | float, n: int) -> int:
    """'100000' -> 100000; '16%' -> round(0.16 n) (at least 1); must end up in 1..n."""
    text = str(budget).strip()
    match = _PERCENT.match(text)
    if match:
        pct = float(match.group(1))
        if not 0 < pct <= 100:
            raise InputError(f"budget {text}: a percentage must be in (0%, 100%]")
        count = max(1, int(round(pct / 100 * n)))
    else:
        try:
            count = int(text)
        except ValueError:
            raise InputError(f"budget {text!r}: expected a count like 100000 or a share like 16%") from None
        if count <= 0:
            raise InputError(f"budget {count}: must be at least 1")
    if count > n:
        raise InputError(f"budget {count} exceeds the {n} scored samples")
    return count


def top_positions(
    pool: Pool,
    score_ids: list,
    scores: np.ndarray,
    budget: str | int,
    *,
    method: str = "scalselect",
    seed: int = 0,
    stratify_by: str | None = None,
    shares: dict | None = None,
    store=None,
    clusters: int = 100,
) -> tuple[list[int], dict]:
    """Pool positions of the `budget` samples `method` picks among the scored ones, and a
    summary of the choice (see scalselect.baselines for the methods and stratification).
    store: the store (or .npy, or matrix) the scores came from, for method "cluster"."""
    from .baselines import apportion, choose, conversation_length, random_ranking, source_of

    options.SelectOptions(method, seed, stratify_by, shares, store, clusters).check()
    index = pool.index_of()
    missing = [sid for sid in score_ids if sid not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        raise InputError(
            f"{len(missing)} scored sample ids are not in pool {pool.path} (e.g. {shown}): is the scores file for another pool?"
        )
    count = parse_budget(budget, len(score_ids))
    where = np.asarray([index[sid] for sid in score_ids], dtype=np.int64)
    ranking = {
        "scalselect": lambda: scores,
        "random": lambda: random_ranking(len(where), seed),
        "cluster": lambda: random_ranking(len(where), seed),
        "length": lambda: np.asarray(pool.map(lambda r: conversation_length(r, pool.layout), where), dtype=np.float64),
    }[method]()
    groups = quotas = None
    if method == "cluster":
        groups = _cluster_labels(score_ids, store, clusters, seed).tolist()
    elif stratify_by is not None:
        groups = pool.map(lambda r: source_of(r, pool.layout, stratify_by), where)
    if groups is not None:
        # counted as Python values: numpy's string arrays would drop a trailing NUL of a source name
        sizes = dict(sorted(collections.Counter(groups).items()))
        weights = dict.fromkeys(sizes, 1.0) if method == "cluster" else (shares or sizes)  # clusters: equal
        quotas = apportion(sizes, count, weights)
    chosen = choose(ranking, count, groups, quotas)
    positions = sorted(where[chosen].tolist())
    summary = {
        "pool": str(pool.path),
        "pool_size": len(pool),
        "scored": len(score_ids),
        "unscored_in_pool": len(pool) - len(score_ids),
        "selected": len(chosen),
        "method": method,
    }
    if method != "scalselect":
        summary["seed"] = seed
    if len(chosen):
        summary["min_selected_importance"] = float(scores[chosen].min())
        summary["max_importance"] = float(scores.max())
    if groups is not None:
        total = sum(float(weights.get(g, 0)) for g in sizes)
        summary["strata"] = {
            "by": "k-means cluster" if method == "cluster" else stratify_by,
            "groups": {
                str(g): {
                    "eligible": int(sizes[g]),
                    "subset": int(quotas[g]),
                    "target": round(count * float(weights.get(g, 0)) / total, 2),
                }
                for g in sorted(sizes, key=str)
            },
        }
    return positions, summary


def _cluster_labels(score_ids: list, store, clusters: int, seed: int) -> np.ndarray:
    """k-means labels of the scored samples' vectors, on their leading principal components
    (scalselect.vectors.CLUSTER_DIMS of them: two passes over the store, N x 64 in memory)."""
    from .vectors import kmeans, principal_rows  # torch: only the cluster method needs it

    return kmeans(principal_rows(store, score_ids), clusters, seed)


def select_subset(pool: Pool, score_ids: list, scores: np.ndarray, budget: str | int, out: str | os.PathLike, **method) -> dict:
    """Write the samples `top_positions` picks (by default the top-`budget` scores) to `out` in
    the pool's own format; `method` keywords go to top_positions."""
    positions, summary = top_positions(pool, score_ids, scores, budget, **method)
    write_subset(pool, positions, out)
    summary["out"] = str(out)
    summary["format"] = f"{pool.layout} {pool.container}"
    return summary
