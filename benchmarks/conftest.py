"""Collects each benchmark's best time and prints the ratios side by side at the end. Times are
taken by `scalselect bench`'s timer (scalselect/bench.py), with the garbage collector off."""

import gc
import json
import sys
from pathlib import Path

import pytest
import torch

from scalselect.bench import timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared slow path, tolerances

RESULTS: dict[str, float] = {}


@pytest.fixture
def record():
    """Run `fn` `rounds` times (no warm-up) and remember its best time under `name`."""

    def run(name, fn, rounds=3):
        gc.disable()
        try:
            stats, result = timed(fn, torch.device("cpu"), rounds, warmup=0)
        finally:
            gc.enable()
        RESULTS[name] = stats["best_s"]
        print(f"\n{name}: best {stats['best_s']:.4f} s, median {stats['median_s']:.4f} s of {rounds}")
        return result

    return run


RATIOS = [  # (label, numerator, denominator): > 1 means the denominator is faster
    ("reference (centre + thin SVD x2) / scalselect", "reference_svd", "scalselect"),
    ("pure-PyTorch Gram pipeline / scalselect", "torch_gram_pipeline", "scalselect"),
    ("scalselect with PyTorch twins / scalselect", "scalselect_twins", "scalselect"),
    ("scalselect / one torch X^T X", "scalselect", "torch_xtx"),
    ("scalselect, flat spectrum / one torch X^T X", "scalselect_flat", "torch_xtx"),
    ("gram_prep twin / native", "gram_prep_twin", "gram_prep_native"),
    ("projection twin / native fused (k=16)", "proj_twin_k16", "proj_native_k16"),
    ("projection twin / native fused (k=256)", "proj_twin_k256", "proj_native_k256"),
    ("projection twin / native fused (k=1024)", "proj_twin_k1024", "proj_native_k1024"),
    ("extraction: reference way / scalselect", "extract_reference", "extract_scalselect"),
    ("extraction: scalselect with twins / scalselect", "extract_scalselect_twins", "extract_scalselect"),
    ("attention mass: materialised [B,H,S,S] / native", "mass_materialised", "mass_native"),
    ("attention mass: twin / native", "mass_twin", "mass_native"),
    ("top-mass mean (D=4096): twin / native", "top_mean_twin", "top_mean_native"),
]


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("scalselect ratios (best of rounds)")
    for name, seconds in sorted(RESULTS.items()):
        tr.write_line(f"{name:32s} {seconds:9.3f} s")
    for label, num, den in RATIOS:
        if num in RESULTS and den in RESULTS:
            tr.write_line(f"{label:48s} {RESULTS[num] / RESULTS[den]:8.2f}x")
    out = Path(__file__).with_name("last_run.json")
    out.write_text(json.dumps(RESULTS, indent=1) + "\n")
