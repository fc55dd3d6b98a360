"""The sketch engine against the exact one: accuracy on several spectra and on vectors extracted
from a tiny checkpoint, then time and peak memory at N = 200,000, D = 4,096, side by side.

    python benchmarks/bench_sketch.py [--rows 200000] [--dim 4096] [--dir /tmp/scalselect-sketch]
                                      [--skip-accuracy] [--skip-large]

Accuracy (in this process): Spearman rho of the scores, overlap of the top-16 % sets, the largest
relative error of sigma_1..sigma_k, the RMS score error relative to the mean score, and what the
sketch estimated it to be. Large (one child process per engine, so that each peak RSS is its
own): the float16 matrices are generated once as .npy files and read from disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from matrices import spectrum_matrix  # noqa: E402  (the test matrices)

SPECTRA = {  # singular values of the signal, i = 1..D
    "fast: exp(-i/40)": lambda i: np.exp(-i / 40),
    "i^-1": lambda i: i**-1.0,
    "slow: i^-0.7": lambda i: i**-0.7,
    "flat: i^-0.3": lambda i: i**-0.3,
}


def rows_with_spectrum(n, d, spectrum, rank, part=0, dtype=torch.float32):
    """n rows (block `part` of one matrix): Gaussian coordinates scaled by the spectrum (rank
    `rank`) in a random basis, heavy-tailed row weights, 1e-3 isotropic noise and a mean far
    from the origin."""
    return spectrum_matrix(
        n, d, sv=SPECTRA[spectrum](np.arange(1, rank + 1)), weights=0.5, noise=1e-3, offset=0.3, part=part, dtype=dtype
    )


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable") for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def compare(exact, sketch) -> dict:
    a, b = exact.scores, sketch.scores
    m = int(round(0.16 * len(a)))
    k = min(exact.k, sketch.k)
    return {
        "k": exact.k,
        "k_sketch": sketch.k,
        "sketch_size": sketch.sketch.get("sketch_size"),
        "spearman": spearman(a, b),
        "top16_overlap": len(set(np.argsort(-a)[:m]) & set(np.argsort(-b)[:m])) / m,
        "sigma_rel_err": float(
            np.max(np.abs(sketch.singular_values[:k] - exact.singular_values[:k]) / exact.singular_values[:k])
        ),
        "score_rms_err": float(np.sqrt(np.mean((a - b) ** 2)) / np.mean(a)),
        "estimate": sketch.sketch.get("score_error_estimate"),
        "certified": sketch.sketch.get("certified"),
    }


def sketch_quietly(x, **options):
    from scalselect import leverage_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return leverage_scores(x, method="sketch", device="cpu", **options)


def tiny_checkpoint_vectors(work: Path, n: int = 3000) -> np.ndarray:
    """Vectors of the demo's generated pool from a tiny random LLaVA 256 wide (extracted once)."""
    from scalselect.demo import prepare_demo
    from scalselect.models.tiny import save_tiny_llava
    from scalselect.pipeline import ExtractOptions, extract_store
    from scalselect.stores import load_representations

    store = work / f"tiny-store-{n}"
    if not (store / "manifest.json").exists():
        demo = prepare_demo(work / f"tiny-demo-{n}", n=n)
        model = save_tiny_llava(
            work / "tiny-model-256", image_size=56, text_hidden=256, text_heads=4, text_kv_heads=2, vision_hidden=64
        )
        extract_store(
            model, demo["pool"], demo["images"], store, ExtractOptions(device="cpu", store_dtype="float32", progress=False)
        )
    return load_representations(store)[1]


def accuracy(work: Path) -> list[dict]:
    from scalselect import leverage_scores

    rows = []
    n, d = 20_000, 1024
    for name in SPECTRA:
        x = rows_with_spectrum(n, d, name, d)
        exact = leverage_scores(x, method="exact")
        rows.append({"input": f"{name}, {n:,} x {d:,}", **compare(exact, sketch_quietly(x))})
        print(rows[-1], file=sys.stderr, flush=True)
    vectors = tiny_checkpoint_vectors(work)
    exact = leverage_scores(vectors, method="exact")
    rows.append(
        {"input": f"tiny LLaVA vectors, {vectors.shape[0]:,} x {vectors.shape[1]}", **compare(exact, sketch_quietly(vectors))}
    )
    print(rows[-1], file=sys.stderr, flush=True)
    return rows


def make_matrix(path: Path, n: int, d: int, spectrum: str, rank: int = 1024, block: int = 16384) -> None:
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=(n, d))
    for part, lo in enumerate(range(0, n, block)):
        out[lo : lo + block] = rows_with_spectrum(min(block, n - lo), d, spectrum, min(rank, d), part, np.float16)
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


def peak_rss_gib() -> float:
    """This process's peak resident memory. (VmHWM starts afresh at exec; ru_maxrss would carry
    the parent's peak over.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(path: str, method: str, out: str) -> None:
    from scalselect import leverage_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t0 = time.perf_counter()
        result = leverage_scores(path, method=method, device="cpu")
        wall = time.perf_counter() - t0
    np.save(out + ".npy", result.scores)
    np.save(out + ".sv.npy", result.singular_values)
    info = {
        "wall_s": wall,
        "peak_rss_gib": peak_rss_gib(),
        "k": result.k,
        "method": result.method,
        "sketch": result.sketch,
        "timings_s": result.timings,
    }
    Path(out + ".json").write_text(json.dumps(info))


def run_child(path: Path, method: str, work: Path) -> dict:
    out = str(work / f"{path.stem}-{method}")
    subprocess.run([sys.executable, __file__, "--child", str(path), method, out], check=True)
    info = json.loads(Path(out + ".json").read_text())
    info["scores"], info["sv"] = np.load(out + ".npy"), np.load(out + ".sv.npy")
    return info


def large(work: Path, n: int, d: int) -> list[dict]:
    from types import SimpleNamespace

    rows = []
    for spectrum in ("fast: exp(-i/40)", "slow: i^-0.7"):
        path = work / f"{spectrum.split(':')[0]}-{n}x{d}.npy"
        if not path.exists():  # in a child: this process stays small
            subprocess.run([sys.executable, __file__, "--make", str(path), str(n), str(d), spectrum], check=True)
        runs = {method: run_child(path, method, work) for method in ("exact", "sketch", "auto")}
        ref = SimpleNamespace(
            scores=runs["exact"]["scores"], singular_values=runs["exact"]["sv"], k=runs["exact"]["k"], sketch={}
        )
        for method, info in runs.items():
            got = SimpleNamespace(scores=info["scores"], singular_values=info["sv"], k=info["k"], sketch=info["sketch"])
            row = {
                "input": f"{spectrum}, {n:,} x {d:,} float16",
                "method": method,
                "ran": info["method"],
                "wall_s": round(info["wall_s"], 1),
                "peak_rss_gib": round(info["peak_rss_gib"], 2),
                "vs_exact": round(info["wall_s"] / runs["exact"]["wall_s"], 3),
                "timings_s": {k: round(v, 1) for k, v in info["timings_s"].items()},
            }
            if method != "exact":
                row.update(compare(ref, got))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "scalselect-sketch")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.make:
        make_matrix(Path(args.make[0]), int(args.make[1]), int(args.make[2]), args.make[3])
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    report = {}
    if not args.skip_accuracy:
        report["accuracy"] = accuracy(args.dir)
    if not args.skip_large:
        report["large"] = large(args.dir, args.rows, args.dim)
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
