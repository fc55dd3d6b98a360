"""`scalselect bench --quick --device cpu`: every kernel, the three scoring baselines and the
extraction in one table and one JSON report, each timed entry beside what it is compared with."""

from __future__ import annotations

import json

from scalselect.cli import main

KERNELS = ["gram_prep", "projected_sqnorm", "projected_sqnorm", "attention_mass", "top_mass_mean"]
SCORING = ["reference (centre + thin SVD x2)", "pure-PyTorch Gram pipeline", "scalselect on its PyTorch twins"]


def test_bench_quick_on_the_cpu_times_every_kernel_scoring_and_extraction(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["device"] == "cpu" and report["quick"] and report["native"]["native"]
    entries = report["entries"]
    assert [e["what"].split()[0] for e in entries if e["group"] == "kernel"] == KERNELS
    assert [e["baseline"] for e in entries if e["group"] == "scoring"] == SCORING
    assert [e["group"] for e in entries][-1] == "extraction"
    for e in entries:
        assert 0 < e["ours"]["best_s"] <= e["ours"]["median_s"] and 0 < e["theirs"]["best_s"] <= e["theirs"]["median_s"]
        assert abs(e["ratio"] - e["theirs"]["best_s"] / e["ours"]["best_s"]) <= 1e-12 * e["ratio"]
        assert f"{e['ratio']:.2f}x" in printed
    # What is timed computes the same thing. The kernels and the engine sum float32 products of
    # at most 4,096 terms in another order than their baselines: each result within
    # 4,096 * 2^-24 (2.4e-4) of the largest, relative; the twins' engine is the same arithmetic.
    for e in entries[:-1]:
        assert e["max_rel_error"] <= 4096 * 2.0**-24, e
    assert entries[-1]["min_cosine"] > 0.99999  # the tests' bound for the fast path vs the reference way


def test_bench_says_in_one_line_when_there_is_nothing_native_to_time(monkeypatch, capsys):
    from scalselect import kernels

    monkeypatch.setattr(kernels, "build_info", lambda: {"native": False, "cuda": False, "error": "no module named _C"})
    assert main(["bench", "--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "compiled kernels are not available (no module named _C)" in err
