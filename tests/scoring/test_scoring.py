"""The leverage-score engine against a float64 thin-SVD implementation of ScalSelect."""

import numpy as np
import pytest
import torch

from scalselect import InputError, leverage_scores, write_store
from scalselect.scoring.eigen import RESIDUAL_TOL, top_eigenpairs
from matrices import reference, spectrum_matrix
from tolerances import U64, assert_scores_within, for_result, summed


def assert_matches(res, x, **opts):
    """The float64 method's k, and every score and singular value within what rounding allows
    (tests/tolerances.py); the top 16 % the same but for rows that may reach the cut."""
    ref = reference(x, **opts)
    tol = for_result(res, ref)
    assert tol.k_stable and res.k == ref.k
    assert np.all(np.abs(res.singular_values - ref.singular_values) <= tol.singular_values)
    return assert_scores_within(res.scores, ref.scores, tol.scores)


CASES = {  # name: (n, d, rank, decay, offset)
    "tall": (3000, 200, 200, 0.8, 0.0),
    "wide (N < D)": (150, 400, 150, 0.5, 0.0),
    "square-ish": (500, 480, 480, 1.0, 0.0),
    "rank-deficient": (800, 120, 12, 0.3, 0.0),
    "mean 1000x spread": (2000, 96, 96, 0.7, 1000.0),
    "one column": (300, 1, 1, 0.0, 3.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scores_match_thin_svd_float32(name):
    n, d, rank, decay, offset = CASES[name]
    x = spectrum_matrix(n, d, rank=rank, decay=decay, offset=offset, seed=len(name), dtype=np.float32)
    res = leverage_scores(x, chunk_rows=257)
    assert res.side == ("kernel" if n < d else "gram")
    assert_matches(res, x)


def test_constant_columns_get_no_weight():
    x = spectrum_matrix(1000, 60, decay=0.6, seed=11, dtype=np.float32)
    x[:, [3, 17, 40]] = np.float32(7.25)
    assert_matches(leverage_scores(x, chunk_rows=300), x)
    assert_matches(leverage_scores(x, standardize=True), x, standardize=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_half_and_full_precision_inputs(dtype):
    x = spectrum_matrix(1500, 80, decay=0.7, offset=2.0, seed=5, dtype=dtype)
    res = leverage_scores(x, chunk_rows=400)
    assert_matches(res, x.double().numpy())  # the same rounded values, in float64


@pytest.mark.parametrize(
    "opts",
    [
        {"standardize": True},
        {"l2_normalize": True},
        {"standardize": True, "l2_normalize": True},
        {"energy": 0.5},
        {"energy": 0.99},
    ],
)
def test_options_match_reference(opts):
    for n, d in [(1200, 70), (60, 150)]:
        x = spectrum_matrix(n, d, rank=min(n, d), decay=0.6, offset=1.0, seed=n + d, dtype=np.float32)
        x *= np.random.default_rng(0).uniform(0.1, 10, d).astype(np.float32)  # uneven columns
        assert_matches(leverage_scores(x, **opts), x, **opts)


def test_scores_sum_to_k_and_stay_in_unit_interval():
    x = spectrum_matrix(2000, 50, decay=0.5, seed=9, dtype=np.float32)
    res = leverage_scores(x)
    tol = for_result(res, reference(x)).scores  # each score's rounding; the sum is exactly k in exact arithmetic
    assert abs(res.scores.sum() - res.k) <= tol.sum()
    assert res.scores.min() >= -tol.max() and res.scores.max() <= 1 + tol.max()
    assert res.captured_energy >= 0.9


def test_chunk_size_and_disk_give_the_same_result(tmp_path):
    x = spectrum_matrix(2500, 90, decay=0.6, offset=5.0, seed=2, dtype=np.float32)
    base = leverage_scores(x)
    for chunk in (1, 7, 1000, 10_000):  # each within rounding of the method: so of each other
        assert_matches(leverage_scores(x, chunk_rows=chunk), x)
    np.save(tmp_path / "x.npy", x)
    write_store(tmp_path / "store", x, [f"s{i}" for i in range(len(x))], dtype="float32", shard_rows=333)
    np.savez(tmp_path / "all_representations.npz", representations=x, sample_ids=np.array([f"s{i}" for i in range(len(x))]))
    for path in ("x.npy", "store", "all_representations.npz"):
        res = leverage_scores(tmp_path / path, chunk_rows=500)
        assert_matches(res, x)
    assert leverage_scores(tmp_path / "store").sample_ids[:2] == ["s0", "s1"]
    assert leverage_scores(np.load(tmp_path / "x.npy", mmap_mode="r")).k == base.k


def test_krylov_path_matches_full_eigh():
    """D above the full-eigh size, decaying spectrum: the block Krylov solver is used."""
    x = spectrum_matrix(2400, 1600, decay=1.0, offset=0.5, seed=4, dtype=np.float32)
    res = leverage_scores(x)
    assert res.eig_method == "krylov"
    assert_matches(res, x)


@pytest.mark.parametrize("decay,seed", [(0.5, 0), (1.0, 1), (2.0, 2)])
def test_top_eigenpairs_krylov_equals_full(decay, seed):
    gen = torch.Generator().manual_seed(seed)
    m = 700
    q = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))[0]
    vals = torch.arange(1, m + 1, dtype=torch.float64) ** -decay
    a = (q * vals) @ q.T
    full = top_eigenpairs(a, 0.8, method="full")
    kry = top_eigenpairs(a, 0.8, method="krylov", block=8)
    assert kry.k == full.k
    k = kry.k
    # a Ritz pair with residual r lies within min(r, r^2 / gap) of an eigenvalue (Kato-Temple);
    # the solver stops at r <= RESIDUAL_TOL ||A|| (||A|| = 1 here), LAPACK at p(m) u64 ||A||
    # (p(m) = m), and the matrix itself holds m u64 of rounding
    r = RESIDUAL_TOL
    lapack = 2 * m * U64
    gaps = torch.minimum(vals[:k] - vals[1 : k + 1], torch.cat([torch.tensor([1.0]), vals[: k - 1] - vals[1:k]]))
    ritz = torch.minimum(torch.full_like(gaps, r), r * r / gaps)
    assert torch.all((kry.values - vals[:k]).abs() <= ritz + lapack)
    assert torch.all((full.values - vals[:k]).abs() <= lapack)
    # same subspace: ||sin theta|| <= ||R||_F / gap at the cut (Davis-Kahan), R the k residuals
    gap = float(vals[k - 1] - vals[k])
    reach = np.sqrt(2) * (np.sqrt(k) * r + lapack) / gap
    assert torch.all((kry.vectors @ kry.vectors.T - full.vectors @ full.vectors.T).abs() <= reach)


@pytest.mark.parametrize("n", [50, 3])  # Gram side and N x N side
def test_identical_rows_are_refused(n):
    x = np.tile(np.random.default_rng(0).standard_normal(8), (n, 1)).astype(np.float32)
    with pytest.raises(InputError, match="identical"):
        leverage_scores(x)
    with pytest.raises(InputError, match="identical"):
        leverage_scores(x, standardize=True)


@pytest.mark.parametrize("n,d", [(500, 40), (20, 40)])
def test_energy_one_stops_at_the_rank(n, d):
    """energy=1 on rank-deficient data must not pull in null directions (1/sqrt(0))."""
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal((n, d))
        x[:, d - 10 :] = 3.0
        res = leverage_scores(x.astype(np.float32), energy=1.0)
        assert np.all(np.isfinite(res.scores))
        assert res.k == min(n - 1, d - 10)
        # leverage in a rank-k subspace sums to k: off by each score's rounding at most
        tol = for_result(res, reference(x.astype(np.float32), k=res.k)).scores
        assert abs(res.scores.sum() - res.k) <= tol.sum() + summed(n, U64) * res.k


def test_large_offset_in_float64_is_not_mistaken_for_identical_rows():
    rng = np.random.default_rng(3)
    for x in (1e6 + rng.standard_normal((2000, 64)), 3e6 + rng.standard_normal((20, 64))):
        assert_matches(leverage_scores(x), x)
    x = 1e6 + 100 * rng.standard_normal((2000, 64))
    assert_matches(leverage_scores(x, standardize=True), x, standardize=True)


@pytest.mark.parametrize("n", [20, 600])  # N x N side and Gram side
def test_standardize_ignores_constant_columns(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 40))
    with_constants = x.copy()
    with_constants[:, :10] = 0.1
    a = leverage_scores(with_constants, standardize=True, chunk_rows=77)
    assert_matches(a, x[:, 10:], standardize=True)  # the method without the constant columns
    assert a.total_energy == pytest.approx(n * 30, rel=summed(77))  # 30 standardised columns of energy n each


def test_bad_input_is_named():
    x = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    x[23, 2] = np.nan
    res = leverage_scores(x, chunk_rows=10)  # a row with a NaN is left out, and named
    assert res.excluded == [23] and 23 not in res.sample_ids and len(res.scores) == 39
    with pytest.raises(InputError, match="energy"):
        leverage_scores(x[:10], energy=1.5)
    with pytest.raises(InputError, match="2-D"):
        leverage_scores(np.ones(5))
    with pytest.raises(InputError, match="empty"):
        leverage_scores(np.ones((0, 4)))
    with pytest.raises(InputError, match="duplicate"):
        leverage_scores(x[:3], sample_ids=["a", "b", "a"])
    with pytest.raises(InputError, match="--chunk-rows"):
        leverage_scores(x, chunk_rows=0)
    with pytest.raises(InputError, match="eig_method"):
        leverage_scores(x, eig_method="lanczos")


def test_a_first_chunk_of_nan_rows_does_not_cost_the_shift():
    """The shift comes from the first finite rows: data far from the origin whose first chunk is
    all NaN is scored as if those rows were not there (a zero shift would cancel it away)."""
    x = (1e4 + 0.1 * np.random.default_rng(9).standard_normal((6000, 32))).astype(np.float32)
    x[:1024] = np.nan
    got = leverage_scores(x, chunk_rows=1024)
    assert got.excluded == list(range(1024))
    assert_matches(got, x[1024:])
