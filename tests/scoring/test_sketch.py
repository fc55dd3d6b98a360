"""The single-pass sketch engine (method="sketch") against the exact engine, on fresh random
matrices: its algebra is exact when the sketch spans everything, it is accurate and certified
where the spectrum decays, and it says so when it cannot certify."""

import gc
import warnings

import numpy as np
import pytest
import torch

from scalselect import InputError, leverage_scores
from scalselect.scoring import sketch as sketch_mod
from scalselect.scoring.sketch import Sketch, plan_test_matrix, sample_rows
from scalselect.stores import open_rows, write_store
from matrices import reference, spectrum_matrix
from tolerances import U32, assert_scores_within, energy_tolerance, reordered_sum, sketch_tolerance, summed


def decaying(n, d, seed, kind="exp"):
    """Rows with a known spectrum, heavy-tailed row weights and a mean far from the origin."""
    i = np.arange(1, d + 1)
    sv = {"exp": np.exp(-i / 12), "pow1": i**-1.0, "mid": i**-0.7, "slow": i**-0.3}[kind]
    return spectrum_matrix(n, d, sv=sv, weights=0.5, noise=1e-3, offset=3.0, seed=seed, dtype=torch.float32)


def top_overlap(a, b, share=0.16):
    m = int(round(share * len(a)))
    return len(set(np.argsort(-a)[:m]) & set(np.argsort(-b)[:m])) / m


def quiet_sketch(x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return leverage_scores(x, method="sketch", device="cpu", **options)


@pytest.mark.parametrize("options", [{}, {"standardize": True}, {"chunk_rows": 97}, {"standardize": True, "chunk_rows": 97}])
def test_a_sketch_that_spans_every_column_gives_the_exact_scores(options):
    """With l = D the sketch's range is the whole column space: P_Y A_c = A_c, so only rounding
    separates it from the exact engine. This checks the centring (and scaling) algebra."""
    x = decaying(3000, 40, seed=1, kind="slow")
    ref = reference(x, standardize=options.get("standardize", False))
    got = quiet_sketch(x, sketch_size=40, **options)
    assert got.method == "sketch" and got.side == "sketch" and got.k == ref.k
    tol = sketch_tolerance(ref, chunk_rows=got.settings["chunk_rows"])
    assert_scores_within(got.scores, ref.scores, tol.scores)
    assert np.all(np.abs(got.singular_values - ref.singular_values) <= tol.singular_values)
    assert abs(got.total_energy - float((ref.rows**2).sum())) <= energy_tolerance(ref)
    # nothing is left out but rounding
    assert got.sketch["residual_energy"] * got.total_energy <= energy_tolerance(ref) + tol.held
    assert got.sketch["certified"] and got.warnings() == []


@pytest.mark.parametrize("kind,seed", [("exp", 2), ("pow1", 3), ("exp", 4)])
def test_default_sketch_is_accurate_and_certified_where_the_spectrum_decays(kind, seed):
    x = decaying(12000, 256, seed=seed, kind=kind)
    exact = leverage_scores(x, method="exact")
    got = quiet_sketch(x, seed=seed)
    ref = reference(x)
    rounding = sketch_tolerance(ref, chunk_rows=got.settings["chunk_rows"], size=got.sketch["sketch_size"])
    assert got.sketch["sketch_size"] < 256 // 2, got.sketch  # much smaller than D
    assert got.k == exact.k
    assert top_overlap(got.scores, exact.scores) >= 0.99
    rel = np.sqrt(np.mean((got.scores - exact.scores) ** 2)) / exact.scores.mean()
    assert rel <= got.sketch["certify_error"]
    # the estimate is of the right size (the holdout sees the same error as the whole), and
    # rounding alone may make it up to the sketch's rounding
    assert got.sketch["score_error_estimate"] <= 3 * rel + np.sqrt(np.mean(rounding.scores**2)) / ref.scores.mean()
    assert got.sketch["score_error_estimate"] >= rel / 3
    assert got.sketch["certified"] and got.warnings() == []
    # P_Y A_c is a part of A_c: sigma^_j <= sigma_j, and sigma_j <= sigma^_j + ||A_c - P_Y A_c||_2
    # (Weyl), which the residual energy bounds; besides, the sketch's own rounding
    gap = ref.singular_values - got.singular_values
    assert np.all(gap >= -rounding.singular_values)
    assert np.all(gap <= np.sqrt(got.sketch["residual_energy"] * got.total_energy) + rounding.singular_values)
    assert abs(got.total_energy - float((ref.rows**2).sum())) <= energy_tolerance(ref)  # tracked exactly


def test_a_sketch_too_small_for_a_slow_spectrum_warns_and_auto_falls_back(monkeypatch):
    x = decaying(6000, 200, seed=5, kind="mid")
    with pytest.warns(RuntimeWarning, match="cannot certify"):
        got = leverage_scores(x, method="sketch", sketch_size=80)
    assert not got.sketch["certified"]
    assert got.sketch["score_error_estimate"] > got.sketch["certify_error"]
    assert len(got.warnings()) == 1 and "--method exact" in got.warnings()[0]
    assert got.summary()["warnings"] == got.warnings()
    # auto would not plan a sketch at this size; made to, it rejects the uncertified sketch
    assert leverage_scores(x, method="auto").sketch["auto_choice"].startswith("exact")
    monkeypatch.setattr(sketch_mod, "costs", lambda *a, **k: {"exact": 10.0, "sketch": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the exact engine's result is returned
        auto = leverage_scores(x, method="auto", sketch_size=80)
    assert auto.method == "exact" and "could not certify" in auto.sketch["auto_choice"]
    np.testing.assert_array_equal(auto.scores, leverage_scores(x, method="exact").scores)


def test_the_energy_a_small_sketch_cannot_reach_is_said():
    x = decaying(4000, 120, seed=6, kind="slow")
    with pytest.warns(RuntimeWarning, match="holds only"):
        got = leverage_scores(x, method="sketch", sketch_size=4)
    assert not got.sketch["energy_reached"] and got.k <= 4
    assert got.captured_energy < 0.9


def test_k_stays_within_the_resolved_directions_at_energy_one():
    """Energy 1 on a rank-20 matrix in 64 dimensions: the exact engine stops at the rank; so
    must the sketch, not reach into directions of rounding noise."""
    x = spectrum_matrix(3000, 64, sv=np.arange(20, 0, -1), offset=5.0, seed=14, dtype=torch.float32)
    exact = leverage_scores(x, method="exact", energy=1.0)
    got = quiet_sketch(x, energy=1.0, sketch_size=64)
    assert exact.k == 20 and got.k == exact.k
    ref = reference(x, k=20)
    assert_scores_within(got.scores, ref.scores, sketch_tolerance(ref, chunk_rows=got.settings["chunk_rows"]).scores)


def test_sums_do_not_depend_on_chunking_or_backend():
    """Sketch.update over chunks of 1, 7 and all rows, native and twin, equals the float64 sums."""
    x = decaying(300, 33, seed=7, kind="pow1")
    omega, shift, _ = plan_test_matrix(x[:100].double(), energy=0.9, standardize=False, sketch_size=12, max_size=33, seed=0)
    xs = x.double() - shift
    y = (xs.float() @ omega).double()
    want = {
        "rows": torch.tensor(300.0, dtype=torch.float64),
        "colsum": xs.sum(0),
        "colsumsq": (xs * xs).sum(0),
        "ytx": y.T @ xs,
        "ygram": y.T @ y,
        "ysum": y.sum(0),
    }
    # y: float32 products of the same float32 rows, summed over 33 terms in another order; the
    # float64 sums: reordered (u64); Y^T X and Y^T Y: float32 products of at most 300 rows, of
    # y rows off by dy and of rows rounded to float32 (u32 |x|)
    dy = 2 * summed(33) * (xs.abs().float() @ omega.abs()).double()
    ya, xa = y.abs() + dy, xs.abs()
    allowed = {
        "rows": torch.tensor(0.0, dtype=torch.float64),
        "colsum": reordered_sum(xs),
        "colsumsq": reordered_sum(xs * xs),
        "ytx": summed(300) * (ya.T @ xa) + dy.T @ xa + U32 * (ya.T @ xa),
        "ygram": summed(300) * (ya.T @ ya) + 2 * dy.T @ ya,
        "ysum": dy.sum(0) + reordered_sum(ya),
    }
    for backend in ("native", "torch"):
        for size in (1, 7, 300):
            sk = Sketch.start(omega, shift)
            ys = torch.cat([sk.update(x[lo : lo + size], backend)[0] for lo in range(0, 300, size)])
            assert torch.all((ys.double() - y).abs() <= dy), (backend, size)
            for name, value in want.items():
                assert torch.all((getattr(sk, name) - value).abs() <= allowed[name]), (backend, size, name)


def test_rows_with_nan_or_inf_are_left_out_as_by_the_exact_engine():
    x = decaying(5000, 64, seed=8)
    x[[3, 1200, 4999], [0, 5, 63]] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    ids = [f"s{i}" for i in range(5000)]
    exact = leverage_scores(x, method="exact", sample_ids=ids)
    got = quiet_sketch(x, sample_ids=ids)
    assert got.excluded == exact.excluded == ["s3", "s1200", "s4999"]
    assert got.sample_ids == exact.sample_ids and np.all(np.isfinite(got.scores))
    assert top_overlap(got.scores, exact.scores) >= 0.99


def test_y_rows_past_the_spill_size_go_to_a_file_and_give_the_same_scores(monkeypatch, tmp_path):
    """Above SPILL_BYTES the y rows are memory-mapped from a nameless temporary file: the same
    scores (NaN rows included), and nothing left behind."""
    x = decaying(3000, 48, seed=12)
    x[[7, 2000], [1, 2]] = float("nan")
    in_memory = quiet_sketch(x, chunk_rows=700)
    monkeypatch.setattr(sketch_mod, "SPILL_BYTES", 0)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    mapped = []
    made = sketch_mod.y_rows_buffer

    def y_rows(rows, width):  # notes whether the rows are mapped from a file in tmp_path
        ys = made(rows, width)
        with open("/proc/self/maps") as maps:
            mapped.append(any(str(tmp_path) in line for line in maps))
        return ys

    monkeypatch.setattr(sketch_mod, "y_rows_buffer", y_rows)
    got = quiet_sketch(x, chunk_rows=700)
    assert mapped == [True]
    np.testing.assert_array_equal(got.scores, in_memory.scores)
    assert got.excluded == in_memory.excluded == [7, 2000]
    gc.collect()
    with open("/proc/self/maps") as maps:  # the file is gone with its last mapping: its space is back
        assert not any(str(tmp_path) in line for line in maps)
    assert list(tmp_path.iterdir()) == []


def test_small_inputs_and_edges():
    x = decaying(5, 3, seed=9)
    got = quiet_sketch(x)  # fewer rows than the pilot: the pilot is every row
    assert got.sketch["pilot_rows"] == 5 and got.sketch["sketch_size"] == 3
    ref = reference(x)
    assert_scores_within(got.scores, ref.scores, sketch_tolerance(ref, chunk_rows=got.settings["chunk_rows"]).scores)
    capped = quiet_sketch(decaying(500, 20, seed=10), sketch_size=10_000)
    assert capped.sketch["sketch_size"] == 20
    with pytest.raises(InputError, match="--sketch-size"):
        leverage_scores(x, method="sketch", sketch_size=0)
    with pytest.raises(InputError, match="method"):
        leverage_scores(x, method="fast")
    with pytest.raises(InputError, match="identical"):
        leverage_scores(np.ones((50, 4), np.float32), method="sketch")
    nan = np.full((30, 4), np.nan, np.float32)
    with pytest.raises(InputError, match="finite"):
        leverage_scores(nan, method="sketch")


def test_same_seed_same_scores_other_seed_close():
    x = decaying(4000, 96, seed=11)
    a, b, c = (quiet_sketch(x, seed=s).scores for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert top_overlap(a, c) >= 0.99


def test_store_and_npy_inputs_are_sampled_in_place(tmp_path):
    x = decaying(3000, 48, seed=12)
    write_store(tmp_path / "store", x.numpy(), [f"r{i}" for i in range(3000)], dtype="float32", shard_rows=700)
    np.save(tmp_path / "x.npy", x.numpy())
    rows = sample_rows(3000, 50, 0)
    for src in (open_rows(tmp_path / "store"), open_rows(tmp_path / "x.npy"), open_rows(x), open_rows(x.numpy())):
        torch.testing.assert_close(src.take(rows).float(), x[torch.from_numpy(rows)])
    want = quiet_sketch(x)
    # the same rows in other chunks (the store's parts): each run within the sketch's rounding
    tol = sketch_tolerance(reference(x), chunk_rows=want.settings["chunk_rows"], size=want.sketch["sketch_size"])
    for path in (tmp_path / "store", tmp_path / "x.npy"):
        assert_scores_within(quiet_sketch(path).scores, want.scores, 2 * tol.scores)


def test_auto_takes_the_exact_engine_where_the_pilot_would_not_pay():
    x = decaying(3000, 64, seed=13)
    got = leverage_scores(x)  # the default method is auto
    assert got.method == "exact" and "pilot" in got.sketch["auto_choice"]
    np.testing.assert_array_equal(got.scores, leverage_scores(x, method="exact").scores)
    assert got.summary()["method"] == "exact" and got.summary()["warnings"] == []
