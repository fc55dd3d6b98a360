"""`scalselect compare` in one pass over the store against the same figures computed with every
vector in memory (SVD of each subset, cdist against it), side by side.

    python benchmarks/bench_compare.py [--rows 100000] [--dim 1024] [--dir /tmp/scalselect-compare]

A float16 store of --rows x --dim vectors (a decaying spectrum, far from the origin), a JSON pool
naming them, random scores. Each way runs in its own child process (its peak RSS is its own) on
the methods scalselect, random and length at a 16 % budget; the figures must agree. Then the
streamed `select --method cluster` (k-means on 64 principal components) is timed alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # matrices.py, the test matrices

METHODS = ["scalselect", "random", "length"]


def make_inputs(folder: Path, rows: int, dim: int) -> dict:
    from matrices import spectrum_matrix

    from scalselect.select import write_scores
    from scalselect.stores import write_store

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"store": folder / "store", "pool": folder / "pool.json", "scores": folder / "scores.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    ids = [f"s{i:07d}" for i in range(rows)]
    with_store = [
        spectrum_matrix(min(20000, rows - lo), dim, decay=0.8, offset=3.0, part=part, dtype=np.float16)
        for part, lo in enumerate(range(0, rows, 20000))
    ]  # generated in pieces: the parent stays small
    write_store(paths["store"], np.concatenate(with_store), ids, dtype="float16")
    sources = ["coco", "gqa", "ocr_vqa", "textvqa", "vg"]
    paths["pool"].write_text(
        json.dumps(
            [
                {
                    "id": sid,
                    "image": f"{sources[i % 5]}/{i}.jpg",
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + "q" * (1 + i % 50)},
                        {"from": "gpt", "value": "a"},
                    ],
                }
                for i, sid in enumerate(ids)
            ]
        )
    )
    write_scores(paths["scores"], ids, np.random.default_rng(0).random(rows))
    return paths


def in_memory(pool, ids, scores, store, budget, methods, seed=0, energy=0.9):
    """The figures with every vector in memory, as compare computed them before it streamed."""
    import torch

    from scalselect.compare import COVERAGE_SAMPLE
    from scalselect.scoring.eigen import centred_spectrum, rank_for_energy
    from scalselect.select import top_positions
    from scalselect.stores import load_representations

    store_ids, x = load_representations(store)
    row = {sid: i for i, sid in enumerate(store_ids)}
    data = torch.from_numpy(x[[row[sid] for sid in ids]].astype(np.float64))
    data = (data - data.mean(dim=0)).float()
    values = centred_spectrum(data)
    total = float(values.sum())
    k = rank_for_energy(values, total, energy) or len(values)
    probe = np.random.default_rng(seed).choice(len(ids), size=min(COVERAGE_SAMPLE, len(ids)), replace=False)
    at = {p: i for i, p in enumerate(pool.index_of()[sid] for sid in ids)}
    out = {}
    for method in methods:
        chosen, _ = top_positions(pool, ids, scores, budget, method=method, seed=seed)
        subset = data[[at[p] for p in chosen]]
        right = torch.linalg.svd(subset, full_matrices=False).Vh[:k].T
        nearest = (
            torch.cdist(data[probe].double(), subset.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        )
        out[method] = {
            "projection_error": 1 - float((data @ right).double().pow(2).sum()) / total,
            "coverage_mean": float(nearest.mean()),
            "coverage_max": float(nearest.max()),
        }
    return {"k": k, "methods": out}


def child(way: str, paths: dict) -> dict:
    from scalselect.compare import compare_methods
    from scalselect.data import read_pool
    from scalselect.select import read_scores, top_positions

    pool = read_pool(paths["pool"])
    ids, scores = read_scores(paths["scores"])
    t0 = time.perf_counter()
    if way == "cluster":
        top_positions(pool, ids, scores, "16%", method="cluster", store=paths["store"], clusters=100)
        report = {}
    else:
        run = compare_methods if way == "stream" else in_memory
        report = run(pool, ids, scores, paths["store"], "16%", METHODS)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "k": report.get("k"),
        "figures": {
            m: {key: f[key] for key in ("projection_error", "coverage_mean", "coverage_max")}
            for m, f in report.get("methods", {}).items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/scalselect-compare"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    paths = make_inputs(args.dir / f"{args.rows}x{args.dim}", args.rows, args.dim)
    if args.child:
        print(json.dumps(child(args.child, paths)))
        return
    results = {}
    for way in ("in-memory", "stream", "cluster"):
        done = subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim), "--dir", str(args.dir), "--child", way],
            capture_output=True,
            text=True,
            check=True,
        )
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["in-memory"], results["stream"]
    assert a["k"] == b["k"], (a["k"], b["k"])
    worst = max(
        abs(a["figures"][m][key] - b["figures"][m][key]) / max(1e-12, abs(a["figures"][m][key]))
        for m in METHODS
        for key in a["figures"][m]
    )
    print(
        f"{args.rows:,} x {args.dim} float16 store, methods {', '.join(METHODS)}, budget 16 %, k = {a['k']}; "
        f"largest relative difference of the figures: {worst:.1e}\n"
    )
    print("| way | time | peak RSS |")
    print("| --- | --- | --- |")
    print(f"| every vector in memory | {a['seconds']:.1f} s | {a['peak_gib']:.2f} GiB |")
    print(
        f"| one pass (compare) | {b['seconds']:.1f} s ({b['seconds'] / a['seconds']:.2f}×) | "
        f"{b['peak_gib']:.2f} GiB ({b['peak_gib'] / a['peak_gib']:.2f}×) |"
    )
    c = results["cluster"]
    print(f"| select --method cluster, streamed (alone) | {c['seconds']:.1f} s | {c['peak_gib']:.2f} GiB |")


if __name__ == "__main__":
    main()
