"""`scalselect compare` on the demo's store: the figures mean what they say."""

from __future__ import annotations

import json

import numpy as np

from scalselect import leverage_scores
from scalselect.cli import main
from scalselect.stores import open_rows
from tolerances import DRAWS, LAMBDA, U64, chunked_gram_error, summed

METHODS = ["scalselect", "random", "length", "cluster"]


def compare(demo_run, tmp_path, budget, *extra):
    demo, out = demo_run
    target = tmp_path / f"compare-{budget.rstrip('%')}.json"
    assert (
        main(
            [
                "compare",
                "--store",
                str(out / "store"),
                "--scores",
                str(out / "scores.jsonl"),
                "--data",
                str(demo["pool"]),
                "--budget",
                budget,
                "--clusters",
                "8",
                "--out",
                str(target),
                *extra,
            ]
        )
        == 0
    )
    return json.loads(target.read_text())


def test_the_whole_pool_is_covered_and_loses_only_the_energy_beyond_k(demo_run, tmp_path):
    report = compare(demo_run, tmp_path, "100%")
    exact = leverage_scores(demo_run[1] / "store", method="exact")
    assert report["k"] == exact.k and set(report["methods"]) == set(METHODS)
    # the energy beyond k, from the float64 Gram; the pass's Gram rounding (the model, drawn)
    chunks = [rows.double().numpy() for _, rows in open_rows(demo_run[1] / "store").chunks(8192)]
    x = np.vstack(chunks)
    gram = (x - x.mean(axis=0)).T @ (x - x.mean(axis=0))
    lost = lambda g: 1 - np.linalg.eigvalsh(g)[::-1][: exact.k].sum() / np.trace(g)  # noqa: E731
    rng = np.random.default_rng(0)
    allowed = LAMBDA * max(abs(lost(gram + chunked_gram_error(chunks, rng)) - lost(gram)) for _ in range(DRAWS))
    for figures in report["methods"].values():
        assert figures["selected"] == report["eligible"] == 150
        assert abs(figures["projection_error"] - lost(gram)) <= allowed
        assert figures["coverage_mean"] == figures["coverage_max"] == 0
        assert figures["largest_share_gap"] == 0  # the same counts over the same total


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
        assert abs(sum(v["subset"] for v in shares.values()) - 1) <= summed(len(shares), U64)  # rounded shares
        assert figures["largest_share_gap"] == max(abs(v["pool"] - v["subset"]) for v in shares.values())
        assert any(line.startswith(method) for line in printed.splitlines())
    # another seed: another random subset; scalselect's is the same (150 rows < the 2,000 probed,
    # so the coverage sample is every row whatever the seed)
    other = compare(demo_run, tmp_path, "16%", "--seed", "5")
    mine, again = report["methods"]["scalselect"], other["methods"]["scalselect"]
    for name in ("selected", "projection_error", "coverage_max", "largest_share_gap"):
        assert again[name] == mine[name], name
    # the probed rows come in another order: their mean is a float64 sum in another order
    assert abs(again["coverage_mean"] - mine["coverage_mean"]) <= 2 * summed(150, U64) * mine["coverage_mean"]
    assert other["methods"]["random"]["coverage_mean"] != report["methods"]["random"]["coverage_mean"]


def test_unknown_method_is_a_one_line_error(demo_run, tmp_path, capsys):
    demo, out = demo_run
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                "--store",
                str(out / "store"),
                "--scores",
                str(out / "scores.jsonl"),
                "--data",
                str(demo["pool"]),
                "--budget",
                "10",
                "--methods",
                "scalselect,best",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not 'best'" in err[0]
