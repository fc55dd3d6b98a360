"""scalselect against the paper's own scoring script (`scripts/cur.py` of the ScalSelect code),
restated here from its definition: for every combination of its options, the same k, the same
scores and the same top of the ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalselect import leverage_scores
from scalselect.cli import main
from tolerances import assert_scores_within, engine_tolerance, for_result, reference

OPTIONS = [{}, {"standardize": True}, {"l2_normalize": True}, {"standardize": True, "l2_normalize": True}]


def official(x: np.ndarray, standardize: bool, l2_normalize: bool, threshold: float = 0.9):
    """The script's preprocessing and scores, in float64: centre; divide by the population std
    (a zero std counts as 1); scale rows to unit length (a zero norm counts as 1); thin SVD of
    that matrix as it is; k is one past the first index whose cumulative energy share reaches
    the threshold (searchsorted), clamped to [1, rank]; leverage of the top k left vectors."""
    a = np.asarray(x, dtype=np.float64).copy()
    a -= a.mean(axis=0, keepdims=True)
    if standardize:
        std = a.std(axis=0, keepdims=True)
        std[std == 0] = 1
        a /= std
    if l2_normalize:
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        norms[norms == 0] = 1
        a = a / norms
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    energy = np.cumsum(s ** 2) / np.sum(s ** 2)
    k = max(1, min(int(np.searchsorted(energy, threshold)) + 1, len(s)))
    return (u[:, :k] ** 2).sum(axis=1), k


def decaying(n: int, d: int, seed: int) -> np.ndarray:
    """Rows with a decaying spectrum, columns of unequal scale, a mean far from the origin."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.6
    x = x @ np.linalg.qr(rng.standard_normal((d, d)))[0] * rng.uniform(0.2, 3.0, d)
    return (x + 5 * rng.uniform(0.5, 1.5, d)).astype(np.float32)


@pytest.mark.parametrize("options", OPTIONS, ids=["centre", "standardize", "l2", "standardize+l2"])
@pytest.mark.parametrize("n,d,seed", [(3000, 128, 1), (150, 400, 2)])  # the Gram side, the N x N side
def test_every_option_combination_gives_the_official_scores(options, n, d, seed):
    x = decaying(n, d, seed)
    want, k = official(x, options.get("standardize", False), options.get("l2_normalize", False))
    got = leverage_scores(x, method="exact", **options)
    assert got.side == ("gram" if n >= d else "kernel")
    assert got.k == k
    ref = reference(x, **options)  # the same method, as the rounding model takes it
    np.testing.assert_allclose(ref.scores, want, rtol=1e-12, atol=0)
    tol = for_result(got, ref)
    assert tol.k_stable
    assert_scores_within(got.scores, want, tol.scores, top_share=0.16)
    assert np.max(np.abs(got.scores - want) / want) <= 1e-5  # what a user comparing the two expects


def test_auto_takes_the_exact_engine_for_l2_normalize_and_the_sketch_refuses_it():
    from scalselect import InputError

    x = decaying(2000, 64, 3)
    got = leverage_scores(x, l2_normalize=True)
    assert got.method == "exact" and "l2_normalize" in got.sketch["auto_choice"]
    with pytest.raises(InputError, match="--method exact"):
        leverage_scores(x, l2_normalize=True, method="sketch")


def test_the_cli_scores_the_official_input_file_as_the_script_does(tmp_path, capsys):
    """all_representations.npz in, the script's defaults (standardize and L2) asked for by flag."""
    x = decaying(1200, 96, 4)
    ids = np.array([f"sample_{i}" for i in range(len(x))])
    np.savez(tmp_path / "all_representations.npz", representations=x, sample_ids=ids)
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(tmp_path / "all_representations.npz"), "--out", str(out), "--standardize",
                 "--l2-normalize", "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want, k = official(x, True, True)
    summary = json.loads((tmp_path / "scores.summary.json").read_text(encoding="utf-8"))
    assert summary["k"] == k and summary["method"] == "exact"
    by_id = {r["sample_id"]: r["importance"] for r in records}
    got = np.array([by_id[f"sample_{i}"] for i in range(len(x))])
    tol = engine_tolerance(reference(x, standardize=True, l2_normalize=True), side=summary["side"],
                           chunk_rows=summary["settings"]["chunk_rows"], eig_method=summary["eig_method"])
    assert_scores_within(got, want, tol.scores, top_share=0.16)
    assert np.max(np.abs(got - want) / want) <= 1e-5
