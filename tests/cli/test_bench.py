"""`scalselect bench --quick --device cpu`: every kernel, the three scoring baselines and the
extraction in one table and one JSON report, each timed entry beside what it is compared with."""

from __future__ import annotations

import json

from scalselect.cli import main

KERNELS = ["gram_prep", "projected_sqnorm", "projected_sqnorm", "attention_mass", "top_mass_mean"]
SCORING = [
    "reference (centre + thin SVD x2, numpy on the CPU)",
    "pure-PyTorch Gram pipeline",
    "scalselect on its PyTorch twins",
]


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
    for e in entries:  # each side timed, every ratio printed, and each result within its bound
        assert e["ours"]["best_s"] > 0 and e["theirs"]["best_s"] > 0
        assert f"{e['ratio']:.2f}x" in printed
        assert e["agrees"], e
    # the bounds are the bench's own; here, independently: the kernels' float32 sums over at most
    # 4,096 terms, and the tests' cosine bound for the fast path
    assert all(e["max_rel_error"] <= 4096 * 2.0**-24 for e in entries if e["group"] == "kernel")
    assert entries[-1]["min_cosine"] >= 0.99999


def test_bench_exits_1_when_a_result_is_beyond_its_bound(monkeypatch, capsys):
    """A kernel that computes something else is a failed check: exit 1, one line naming it."""
    from scalselect import bench, kernels

    real = kernels.top_mass_mean
    monkeypatch.setattr(kernels, "top_mass_mean", lambda *a, **k: (real(*a, **k)[0] * 1.01, real(*a, **k)[1]))
    monkeypatch.setattr(bench, "scoring_entries", lambda device, quick: [])  # the kernels are enough here
    monkeypatch.setattr(bench, "extraction_entries", lambda device, quick, workdir: [])
    assert main(["bench", "--quick", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1
    assert "1 result(s) beyond their bounds: kernel top_mass_mean" in err[-1]


def test_bench_json_to_stdout_keeps_the_messages_out_of_it(monkeypatch, capfd):
    from scalselect import bench

    monkeypatch.setattr(bench, "kernel_entries", lambda device, quick: [])
    monkeypatch.setattr(bench, "scoring_entries", lambda device, quick: [])
    monkeypatch.setattr(bench, "extraction_entries", lambda device, quick, workdir: [])
    assert main(["bench", "--quick", "--device", "cpu", "--json", "-"]) == 0
    printed = capfd.readouterr()
    report = json.loads(printed.out)  # nothing but the JSON (written to the file descriptor)
    assert "scalselect bench on cpu" in printed.err
    assert report["entries"] == [] and report["device"] == "cpu"


def test_bench_says_in_one_line_when_there_is_nothing_native_to_time(monkeypatch, capsys):
    from scalselect import kernels

    monkeypatch.setattr(kernels, "build_info", lambda: {"native": False, "cuda": False, "error": "no module named _C"})
    assert main(["bench", "--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "compiled kernels are not available (no module named _C)" in err
