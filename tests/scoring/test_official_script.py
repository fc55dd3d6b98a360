"""scalselect against the paper's own scoring script (`scripts/cur.py` of the ScalSelect code, as
tests/official.py restates it): for every combination of its options, the same k, the same
scores and the same top of the ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalselect import leverage_scores
from scalselect.cli import main
from matrices import reference, spectrum_matrix
from official import official
from tolerances import assert_scores_within, engine_tolerance, for_result

OPTIONS = [{}, {"standardize": True}, {"l2_normalize": True}, {"standardize": True, "l2_normalize": True}]


def decaying(n: int, d: int, seed: int) -> np.ndarray:
    """Rows with a decaying spectrum, columns of unequal scale, a mean far from the origin."""
    return spectrum_matrix(n, d, decay=0.6, columns=(0.2, 3.0), offset=5.0, seed=seed, dtype=np.float32)


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
    assert (
        main(
            ["score", str(tmp_path / "all_representations.npz"), "--out", str(out), "--standardize", "--l2-normalize", "--quiet"]
        )
        == 0
    )
    capsys.readouterr()
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want, k = official(x, True, True)
    summary = json.loads((tmp_path / "scores.summary.json").read_text(encoding="utf-8"))
    assert summary["k"] == k and summary["method"] == "exact"
    by_id = {r["sample_id"]: r["importance"] for r in records}
    got = np.array([by_id[f"sample_{i}"] for i in range(len(x))])
    tol = engine_tolerance(
        reference(x, standardize=True, l2_normalize=True),
        side=summary["side"],
        chunk_rows=summary["settings"]["chunk_rows"],
        eig_method=summary["eig_method"],
    )
    assert_scores_within(got, want, tol.scores, top_share=0.16)
    assert np.max(np.abs(got - want) / want) <= 1e-5


@pytest.mark.parametrize("n,d", [(2000, 48), (40, 90)])
def test_a_nan_row_and_tiny_values_with_every_option(n, d):
    """Rows of 1e-30 (scaled by a power of two before their float32 products) and a row
    holding a NaN (left out, as by the exact engine without options): the official scores of
    the other rows."""
    x = decaying(n, d, 5) * np.float32(1e-30)
    x[7, 3] = np.nan
    keep = np.arange(n) != 7
    for options in OPTIONS:
        got = leverage_scores(x, method="exact", sample_ids=list(range(n)), **options)
        assert got.excluded == [7]
        want, k = official(x[keep], options.get("standardize", False), options.get("l2_normalize", False))
        assert got.k == k
        assert_scores_within(got.scores, want, for_result(got, reference(x[keep], **options)).scores)
