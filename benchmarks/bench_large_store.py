"""Scores a 1,000,000 x 4,096 float16 store streamed from disk; reports time and peak RSS.

    python benchmarks/bench_large_store.py [--rows 1000000] [--dim 4096] [--dir /tmp/scalselect-large]

The store (8.2 GB at the default size) is generated once, with a decaying spectrum, and reused.
Both the generation and `scalselect score` run in child processes and this parent stays small;
the peak RSS reported is the scoring child's own (benchmarks/measure.py), never the generator's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # matrices.py, the test matrices
from measure import timed  # noqa: E402  (benchmarks/measure.py)


def make_store(path: Path, rows: int, dim: int, rank: int = 256, shard_rows: int = 65536) -> None:
    import numpy as np
    from matrices import spectrum_matrix

    from scalselect import StoreWriter

    writer = StoreWriter(path, dim, "float16", meta={"benchmark": "bench_large_store"})
    for part, lo in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - lo)
        x = spectrum_matrix(n, dim, decay=0.7, rank=min(rank, dim), noise=0.01, offset=0.2, part=part, dtype=np.float16)
        writer.add(x, list(range(lo, lo + n)))
        print(f"\rwriting store: {lo + n}/{rows}", end="", file=sys.stderr)
    writer.close()
    print(file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/scalselect-large"))
    ap.add_argument("--write-store-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    store = args.dir / f"store-{args.rows}x{args.dim}"
    if args.write_store_only:
        make_store(store, args.rows, args.dim)
        return
    if not (store / "manifest.json").exists():
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--rows",
                str(args.rows),
                "--dim",
                str(args.dim),
                "--dir",
                str(args.dir),
                "--write-store-only",
            ],
            check=True,
        )
    out = args.dir / "scores.jsonl"
    run = timed(
        [sys.executable, "-m", "scalselect", "score", str(store), "--out", str(out), "--quiet", "--method", "exact"]
    )  # the exact engine, as recorded
    wall, peak_gb = run["wall_s"], run["peak_mib"] / 1024
    summary = json.loads((args.dir / "scores.summary.json").read_text())
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "dtype": "float16",
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_gb, 2),
        "k": summary["k"],
        "timings_s": {k: round(v, 1) for k, v in summary["timings_s"].items()},
        "store_gib": round(args.rows * args.dim * 2 / 2**30, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
