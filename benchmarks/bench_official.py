"""scalselect against the paper's scoring script's way (benchmarks/official_way.py), whole
process against whole process: the same all_representations.npz in, a scores JSONL out.

    python benchmarks/bench_official.py [--dir /tmp/scalselect-official] [--sizes 4000x512,...]
                                        [--fidelity-size 4000x512] [--skip-fidelity]

Fidelity (one size, the four combinations of --standardize and --l2-normalize): k of each, the
largest relative difference of their scores, the overlap of their top-16 % sets, and each
against the same steps in float64. Race (every size, centre only: the paper's released
setting): wall time and peak RSS of each process (os.wait4: that child's own maximum), and
their ratios. The matrices (decaying spectrum, columns of unequal scale, a mean far from the
origin, float32) are made once in --dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from matrices import spectrum_matrix  # noqa: E402  (the test matrices)
from official import official as official_float64  # noqa: E402  (the restated script, in float64)
from measure import timed  # noqa: E402  (benchmarks/measure.py)

OPTIONS = {
    "centre": [],
    "standardize": ["--standardize"],
    "l2": ["--l2-normalize"],
    "standardize + l2": ["--standardize", "--l2-normalize"],
}


def matrix(n: int, d: int, seed: int = 0, chunk: int = 10_000) -> np.ndarray:
    """n x d float32 rows: sigma_i ~ i^-0.6 in a random basis, columns scaled 0.2..3, offset ~5
    (the matrices of tests/scoring/test_official_script.py), made chunk rows at a time."""
    out = np.empty((n, d), dtype=np.float32)
    for part, lo in enumerate(range(0, n, chunk)):
        out[lo : lo + chunk] = spectrum_matrix(
            min(chunk, n - lo), d, decay=0.6, columns=(0.2, 3.0), offset=5.0, seed=seed, part=part, dtype=np.float32
        )
    return out


def npz_of(directory: Path, n: int, d: int) -> Path:
    path = directory / f"{n}x{d}" / "all_representations.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, representations=matrix(n, d), sample_ids=np.array([f"sample_{i}" for i in range(n)]))
    return path


def official(npz: Path, out: Path, flags: list[str]) -> dict:
    run = timed([sys.executable, str(HERE / "official_way.py"), str(npz), str(out), *flags])
    run["k"] = json.loads(run.pop("stdout").strip().splitlines()[-1])["k"]
    return run


def ours(npz: Path, out: Path, flags: list[str]) -> dict:
    run = timed([sys.executable, "-m", "scalselect", "score", str(npz), "--out", str(out), "--quiet", *flags])
    run.pop("stdout")
    run["k"] = json.loads(out.with_name(f"{out.stem}.summary.json").read_text(encoding="utf-8"))["k"]
    return run


def read_scores(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return {r["sample_id"]: r["importance"] for r in map(json.loads, f)}


def compared(a: dict, b: dict, share: float = 0.16) -> dict:
    ids = sorted(a)
    x, y = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    top = max(1, int(round(share * len(ids))))
    overlap = len(set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top])) / top
    return {"max_rel_diff": float(np.max(np.abs(x - y) / np.abs(y))), "top16_overlap": overlap}


def fidelity(directory: Path, n: int, d: int) -> list[dict]:
    npz = npz_of(directory, n, d)
    with np.load(npz) as data:
        x = data["representations"]
    rows = []
    for name, flags in OPTIONS.items():
        slug = name.replace(" + ", "-")
        theirs, mine = npz.with_name(f"official-{slug}.jsonl"), npz.with_name(f"ours-{slug}.jsonl")
        a, b = official(npz, theirs, flags), ours(npz, mine, flags)
        got_a, got_b = read_scores(theirs), read_scores(mine)
        exact, k = official_float64(x, "--standardize" in flags, "--l2-normalize" in flags)
        exact = {f"sample_{i}": float(v) for i, v in enumerate(exact)}
        rows.append(
            {
                "options": name,
                "k_official": a["k"],
                "k_scalselect": b["k"],
                "k_float64": k,
                "scalselect_vs_official": compared(got_b, got_a),
                "official_vs_float64": compared(got_a, exact),
                "scalselect_vs_float64": compared(got_b, exact),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def race(directory: Path, sizes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    for n, d in sizes:
        npz = npz_of(directory, n, d)
        theirs, mine = npz.with_name("official.jsonl"), npz.with_name("ours.jsonl")
        a, b = official(npz, theirs, []), ours(npz, mine, [])
        rows.append(
            {
                "rows": n,
                "dim": d,
                "official": a,
                "scalselect": b,
                "time_ratio": b["wall_s"] / a["wall_s"],
                "memory_ratio": b["peak_mib"] / a["peak_mib"],
                "same_k": a["k"] == b["k"],
                **compared(read_scores(mine), read_scores(theirs)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scalselect-official"))
    parser.add_argument("--sizes", default="4000x512,20000x4096,100000x4096")
    parser.add_argument("--fidelity-size", default="4000x512")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every row here too")
    args = parser.parse_args()
    size = lambda text: tuple(int(v) for v in text.lower().split("x"))  # noqa: E731
    args.dir.mkdir(parents=True, exist_ok=True)
    report = {}
    if not args.skip_fidelity:
        report["fidelity"] = fidelity(args.dir, *size(args.fidelity_size))
    report["race"] = race(args.dir, [size(s) for s in args.sizes.split(",")])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
