"""`scalselect compare` on the demo's store: the figures mean what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalselect import leverage_scores
from scalselect.cli import main

METHODS = ["scalselect", "random", "length", "cluster"]


def compare(demo_run, tmp_path, budget, *extra):
    demo, out = demo_run
    target = tmp_path / f"compare-{budget.rstrip('%')}.json"
    assert main(["compare", "--store", str(out / "store"), "--scores", str(out / "scores.jsonl"),
                 "--data", str(demo["pool"]), "--budget", budget, "--clusters", "8", "--out", str(target),
                 *extra]) == 0
    return json.loads(target.read_text())


def test_the_whole_pool_is_covered_and_loses_only_the_energy_beyond_k(demo_run, tmp_path):
    report = compare(demo_run, tmp_path, "100%")
    exact = leverage_scores(demo_run[1] / "store", method="exact")
    assert report["k"] == exact.k and set(report["methods"]) == set(METHODS)
    for figures in report["methods"].values():
        assert figures["selected"] == report["eligible"] == 150
        assert figures["projection_error"] == pytest.approx(1 - exact.captured_energy, abs=1e-5)
        assert figures["coverage_mean"] == figures["coverage_max"] == 0
        assert figures["largest_share_gap"] == pytest.approx(0, abs=1e-12)


def test_a_budget_gives_sane_figures_for_every_method(demo_run, tmp_path, capsys):
    capsys.readouterr()
    report = compare(demo_run, tmp_path, "16%")
    printed = capsys.readouterr().out
    for method in METHODS:
        figures = report["methods"][method]
        assert figures["selected"] == 24
        assert 0 <= figures["projection_error"] <= 1
        assert 0 < figures["coverage_mean"] <= figures["coverage_max"]
        shares = figures["shares"]
        assert sum(v["subset"] for v in shares.values()) == pytest.approx(1)
        assert figures["largest_share_gap"] == pytest.approx(max(abs(v["pool"] - v["subset"]) for v in shares.values()))
        assert any(line.startswith(method) for line in printed.splitlines())
    # another seed: another random subset; scalselect's is the same (150 rows < the 2,000 probed,
    # so the coverage sample is every row whatever the seed)
    other = compare(demo_run, tmp_path, "16%", "--seed", "5")
    for name in ("selected", "projection_error", "coverage_mean", "coverage_max", "largest_share_gap"):
        # the probed rows come in another order: the mean may differ in its last bits
        assert other["methods"]["scalselect"][name] == pytest.approx(report["methods"]["scalselect"][name], rel=1e-12)
    assert other["methods"]["random"]["coverage_mean"] != report["methods"]["random"]["coverage_mean"]


def test_unknown_method_is_a_one_line_error(demo_run, tmp_path, capsys):
    demo, out = demo_run
    capsys.readouterr()
    assert main(["compare", "--store", str(out / "store"), "--scores", str(out / "scores.jsonl"), "--data",
                 str(demo["pool"]), "--budget", "10", "--methods", "scalselect,best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not 'best'" in err[0]
