"""End-to-end tests of the `scalselect` command line: score, select, info, demo, and bad input.

Most tests call `scalselect.cli.main([...])` in-process; one runs `python -m scalselect` in a
subprocess to prove the console entry point works and reports errors without a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalselect.cli import main
from scalselect.data import read_pool
from scalselect.stores import write_store
from matrices import reference, spectrum_matrix
from pool_files import write_pool
from tolerances import assert_scores_within, engine_tolerance


# ----------------------------------------------------------------------------- helpers


def run_cli(capsys, *args):
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def select_cmd(scores, data, out, budget="5"):
    """argv of `scalselect select`."""
    return ["select", "--scores", scores, "--data", data, "--budget", budget, "--out", out]


def assert_error(capsys, args, *substrings):
    """Exit code 2, exactly one non-empty line on stderr, naming the problem, no traceback."""
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2, (rc, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"scalselect {args[0]}: error: "), lines[0]
    assert "Traceback" not in err
    for s in substrings:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"
    return lines[0]


def make_matrix(seed, n, d, decay=0.93, offset=2.0):
    """Random n x d rows with a decaying spectrum (so k depends on energy) and a mean offset."""
    return spectrum_matrix(n, d, sv=decay ** np.arange(d), offset=offset, seed=seed, dtype=np.float32)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_method_scores(got, x, summary_path):
    """Scores the CLI wrote (in row order) against the float64 method, within what rounding
    allows the engine as the summary says it ran (tests/tolerances.py); returns the tolerance."""
    summary = json.loads(Path(summary_path).read_text())
    ref = reference(x, summary["settings"]["energy"])
    tol = engine_tolerance(
        ref, side=summary["side"], chunk_rows=summary["settings"]["chunk_rows"], eig_method=summary["eig_method"]
    )
    assert summary["k"] == ref.k and tol.k_stable
    assert np.all(np.abs(np.asarray(summary["singular_values"]) - ref.singular_values) <= tol.singular_values)
    assert_scores_within(got, ref.scores, tol.scores)
    return tol.scores


def check_scores_file(path, expected_ids):
    """Scores JSONL: one {sample_id, importance} per line, highest first, ids exactly as given."""
    recs = read_jsonl(path)
    with open(path, encoding="utf-8") as f:
        raw_lines = [ln for ln in f.read().split("\n") if ln]
    assert len(raw_lines) == len(expected_ids) == len(recs)
    for rec in recs:
        assert isinstance(rec, dict)
        assert set(rec) == {"sample_id", "importance"}
        assert isinstance(rec["importance"], float)
    ids = [r["sample_id"] for r in recs]
    # ids exactly as given: same values and the same JSON types (strings stay strings)
    assert sorted(map(repr, ids)) == sorted(map(repr, expected_ids))
    values = np.array([r["importance"] for r in recs])
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) <= 0), "scores are not sorted by importance, descending"
    return dict(zip(ids, values))


def check_summary(scores_path, n, d, energy):
    summary_path = scores_path.with_name(scores_path.name.split(".")[0] + ".summary.json")
    assert summary_path.is_file()
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["num_rows"] == n
    assert summary["dim"] == d
    k = summary["k"]
    assert isinstance(k, int) and 1 <= k <= min(n, d)
    assert summary["captured_energy"] >= energy - 1e-12
    assert summary["captured_energy"] <= 1 + 1e-9
    sv = summary["singular_values"]
    assert len(sv) == k
    assert all(a >= b for a, b in zip(sv, sv[1:])), "singular values not descending"
    assert all(v > 0 for v in sv)
    assert summary["settings"]["energy"] == energy
    assert isinstance(summary["timings_s"], dict) and summary["timings_s"]["total"] >= 0
    return summary


# ----------------------------------------------------------------------------- score


def test_score_npy_matches_reference(tmp_path, capsys):
    n, d = 1200, 48
    x = make_matrix(0, n, d)
    np.save(tmp_path / "reps.npy", x)
    out = tmp_path / "scores.jsonl"
    rc, stdout, _ = run_cli(capsys, "score", tmp_path / "reps.npy", "--out", out, "--quiet")
    assert rc == 0
    assert f"scored {n} samples of dim {d}" in stdout
    by_id = check_scores_file(out, list(range(n)))
    assert all(type(i) is int for i in by_id)
    summary = check_summary(out, n, d, 0.9)

    got = np.array([by_id[i] for i in range(n)])
    tol = assert_method_scores(got, x, out.with_name("scores.summary.json"))
    # leverage in a rank-k subspace sums to k exactly (each score within its rounding)
    assert abs(got.sum() - summary["k"]) <= tol.sum()


def test_score_npz_string_ids(tmp_path, capsys):
    n, d = 800, 32
    x = make_matrix(1, n, d)
    ids = [f"{i:06d}" for i in range(n - 1)] + ["abc"]
    ids[123] = "000123x"  # a non-numeric id among zero-padded ones
    np.savez(tmp_path / "all_representations.npz", representations=x, sample_ids=np.array(ids))
    out = tmp_path / "scores.jsonl"
    rc, _, _ = run_cli(capsys, "score", tmp_path / "all_representations.npz", "--out", out, "--quiet")
    assert rc == 0
    by_id = check_scores_file(out, ids)
    assert all(type(i) is str for i in by_id)
    assert "000000" in by_id and "000122" in by_id and "abc" in by_id  # leading zeros kept
    summary = check_summary(out, n, d, 0.9)
    # row i of the matrix is scored under ids[i]
    tol = assert_method_scores([by_id[s] for s in ids], x, out.with_name("scores.summary.json"))
    assert abs(sum(by_id.values()) - summary["k"]) <= tol.sum()


def test_score_store_equals_npy(tmp_path, capsys):
    n, d = 1500, 40
    x = make_matrix(2, n, d)
    ids = [f"s{i:05d}" for i in range(n)]
    write_store(tmp_path / "store", x, ids, dtype="float32", shard_rows=400)
    np.save(tmp_path / "reps.npy", x)
    out_store, out_npy = tmp_path / "store_scores.jsonl", tmp_path / "npy_scores.jsonl"
    assert run_cli(capsys, "score", tmp_path / "store", "--out", out_store, "--quiet")[0] == 0
    assert run_cli(capsys, "score", tmp_path / "reps.npy", "--out", out_npy, "--quiet")[0] == 0
    by_store = check_scores_file(out_store, ids)
    by_npy = check_scores_file(out_npy, list(range(n)))
    s_store = check_summary(out_store, n, d, 0.9)
    s_npy = check_summary(out_npy, n, d, 0.9)
    assert s_store["k"] == s_npy["k"]
    a = np.array([by_store[s] for s in ids])
    b = np.array([by_npy[i] for i in range(n)])
    # each within rounding of the method, so of each other
    assert_method_scores(a, x, tmp_path / "store_scores.summary.json")
    assert_method_scores(b, x, tmp_path / "npy_scores.summary.json")


def test_score_lower_energy_gives_smaller_k(tmp_path, capsys):
    n, d = 1000, 48
    np.save(tmp_path / "reps.npy", make_matrix(3, n, d))
    out_def, out_half = tmp_path / "default.jsonl", tmp_path / "half.jsonl"
    assert run_cli(capsys, "score", tmp_path / "reps.npy", "--out", out_def, "--quiet")[0] == 0
    assert run_cli(capsys, "score", tmp_path / "reps.npy", "--out", out_half, "--energy", "0.5", "--quiet")[0] == 0
    k_def = check_summary(out_def, n, d, 0.9)["k"]
    s_half = check_summary(out_half, n, d, 0.5)
    assert s_half["k"] <= k_def
    assert s_half["k"] < k_def  # with this decaying spectrum the two ranks differ
    by_id = check_scores_file(out_half, list(range(n)))
    tol = assert_method_scores(
        [by_id[i] for i in range(n)], np.load(tmp_path / "reps.npy"), out_half.with_name("half.summary.json")
    )
    assert abs(sum(by_id.values()) - s_half["k"]) <= tol.sum()


def test_score_fewer_rows_than_dims(tmp_path, capsys):
    """N < D takes the kernel side; the output contract is the same."""
    n, d = 90, 200
    x = make_matrix(4, n, d, decay=0.97)
    np.save(tmp_path / "wide.npy", x)
    out = tmp_path / "scores.jsonl"
    assert run_cli(capsys, "score", tmp_path / "wide.npy", "--out", out, "--quiet")[0] == 0
    by_id = check_scores_file(out, list(range(n)))
    summary = check_summary(out, n, d, 0.9)
    tol = assert_method_scores([by_id[i] for i in range(n)], x, out.with_name("scores.summary.json"))
    assert abs(sum(by_id.values()) - summary["k"]) <= tol.sum()


# ----------------------------------------------------------------------------- select


def llava_records(rng, n, ids):
    recs = []
    for i in range(n):
        rec = {}
        if ids is not None:
            rec["id"] = ids[i]
        rec["image"] = f"coco/{int(rng.integers(10**9)):09d}.jpg"
        rec["conversations"] = [
            {"from": "human", "value": f"<image>\nWhat is shown? {float(rng.random())}"},
            {"from": "gpt", "value": ["A cat.", "Un café ☕", "犬です"][int(rng.integers(3))]},
        ]
        if i % 7 == 0:
            rec["extra"] = {"nested": [1, 2.5, None, True]}
        recs.append(rec)
    return recs


def sharegpt_records(rng, n, ids):
    recs = []
    for i in range(n):
        rec = {
            "messages": [
                {"role": "user", "content": f"<image>Describe {int(rng.integers(1000))} — ü"},
                {"role": "assistant", "content": f"Ça va {float(rng.random())}"},
            ],
            "images": [f"img/{int(rng.integers(10**6))}.jpg"],
        }
        if ids is not None:
            rec["id"] = ids[i]
        recs.append(rec)
    return recs


def score_for(tmp_path, capsys, x, ids):
    """Score x (ids None: row index) and return the scores file path."""
    if ids is None:
        np.save(tmp_path / "reps.npy", x)
        src = tmp_path / "reps.npy"
    else:
        np.savez(tmp_path / "reps.npz", representations=x, sample_ids=np.array(ids))
        src = tmp_path / "reps.npz"
    out = tmp_path / "scores.jsonl"
    rc, _, err = run_cli(capsys, "score", src, "--out", out, "--quiet")
    assert rc == 0, err
    return out


def check_selection(tmp_path, capsys, records, container, layout, scores_path, budget, count):
    pool_path = write_pool(tmp_path / f"pool.{container}", records, container)
    out = tmp_path / f"subset.{container}"
    rc, stdout, err = run_cli(capsys, "select", "--scores", scores_path, "--data", pool_path, "--budget", budget, "--out", out)
    assert rc == 0, err
    assert f"selected {count} of {len(records)}" in stdout

    subset = read_pool(out)
    assert subset.layout == layout
    assert subset.container == container
    assert len(subset) == count
    # the raw file too: a JSON array, or one object per line
    text = out.read_text(encoding="utf-8")
    if container == "json":
        parsed = json.loads(text)
        assert isinstance(parsed, list)
    else:
        parsed = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    assert parsed == subset.records

    pool = read_pool(pool_path)
    top_ids = [r["sample_id"] for r in read_jsonl(scores_path)][:count]
    positions = sorted(pool.index_of()[sid] for sid in top_ids)
    expected = [records[p] for p in positions]  # verbatim, in pool order
    assert subset.records == expected

    summary = json.loads((tmp_path / "subset.selection.json").read_text(encoding="utf-8"))
    assert summary["selected"] == count
    assert summary["scored"] == len(records)
    return subset


@pytest.mark.parametrize("budget,count", [("37", 37), ("16%", 48)])
@pytest.mark.parametrize("container", ["json", "jsonl"])
@pytest.mark.parametrize("layout", ["llava", "sharegpt"])
def test_select_layouts_and_containers(tmp_path, capsys, layout, container, budget, count):
    n, d = 300, 24
    rng = np.random.default_rng(10)
    x = make_matrix(11, n, d)
    if layout == "llava":  # string ids, some zero-padded, one non-numeric
        ids = [f"{i:06d}" for i in range(n - 1)] + ["abc"]
        records = llava_records(rng, n, ids)
    else:  # no "id": samples are addressed by their 0-based index
        ids = None
        records = sharegpt_records(rng, n, None)
    scores = score_for(tmp_path, capsys, x, ids)
    if ids is None:
        assert all(type(r["sample_id"]) is int for r in read_jsonl(scores))
    check_selection(tmp_path, capsys, records, container, layout, scores, budget, count)


def test_select_llava_without_ids(tmp_path, capsys):
    n, d = 250, 16
    records = llava_records(np.random.default_rng(12), n, None)
    scores = score_for(tmp_path, capsys, make_matrix(13, n, d), None)
    check_selection(tmp_path, capsys, records, "jsonl", "llava", scores, "25%", 62)


def test_select_integer_ids(tmp_path, capsys):
    n, d = 260, 20
    rng = np.random.default_rng(14)
    ids = [int(v) for v in rng.permutation(10_000)[:n]]
    records = llava_records(rng, n, ids)
    scores = score_for(tmp_path, capsys, make_matrix(15, n, d), ids)
    assert all(type(r["sample_id"]) is int for r in read_jsonl(scores))
    check_selection(tmp_path, capsys, records, "json", "llava", scores, "50", 50)


def test_select_full_budget_returns_whole_pool(tmp_path, capsys):
    n, d = 120, 12
    records = sharegpt_records(np.random.default_rng(16), n, None)
    scores = score_for(tmp_path, capsys, make_matrix(17, n, d), None)
    subset = check_selection(tmp_path, capsys, records, "json", "sharegpt", scores, "100%", n)
    assert subset.records == records


def test_select_partial_scores_notes_unscored(tmp_path, capsys):
    """A scores file covering only part of the pool: the budget counts the scored samples."""
    n = 200
    rng = np.random.default_rng(18)
    ids = [f"id-{i}" for i in range(n)]
    records = llava_records(rng, n, ids)
    pool_path = write_pool(tmp_path / "pool.jsonl", records, "jsonl")
    scored = [ids[i] for i in rng.permutation(n)[:80]]
    values = rng.random(80) + 0.01
    with open(tmp_path / "scores.jsonl", "w", encoding="utf-8") as f:
        for i in np.argsort(-values):
            f.write(json.dumps({"sample_id": scored[i], "importance": float(values[i])}) + "\n")
    out = tmp_path / "subset.jsonl"
    rc, stdout, err = run_cli(
        capsys, "select", "--scores", tmp_path / "scores.jsonl", "--data", pool_path, "--budget", "50%", "--out", out
    )
    assert rc == 0, err
    assert "120 pool samples had no score" in stdout
    subset = read_pool(out)
    top = {scored[i] for i in np.argsort(-values)[:40]}
    assert len(subset) == 40
    assert set(subset.ids) == top
    assert subset.records == [r for r in records if r["id"] in top]


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def small_pool(tmp_path, capsys):
    """A 50-sample LLaVA pool and its scores file."""
    n = 50
    ids = [f"{i:04d}" for i in range(n)]
    records = llava_records(np.random.default_rng(20), n, ids)
    pool = write_pool(tmp_path / "pool.json", records, "json")
    scores = score_for(tmp_path, capsys, make_matrix(21, n, 8), ids)
    return pool, scores


def test_error_missing_input_file(tmp_path, capsys):
    assert_error(capsys, ["score", tmp_path / "nope.npy", "--out", tmp_path / "s.jsonl"], "nope.npy", "no such file")
    assert not (tmp_path / "s.jsonl").exists()


def test_error_missing_pool_and_scores(tmp_path, capsys, small_pool):
    pool, scores = small_pool
    assert_error(capsys, select_cmd(scores, tmp_path / "missing.json", tmp_path / "o.json"), "missing.json", "no such file")
    assert_error(capsys, select_cmd(tmp_path / "missing.jsonl", pool, tmp_path / "o.json"), "missing.jsonl", "no such file")
    assert not (tmp_path / "o.json").exists()


def test_error_malformed_pool_json(tmp_path, capsys, small_pool):
    _, scores = small_pool
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": "0000", "conversations": []},\n {"id": "0001", "conversations": [}\n]\n', encoding="utf-8")
    assert_error(capsys, select_cmd(scores, bad, tmp_path / "o.json"), "malformed JSON", "line 3 column")
    badl = tmp_path / "bad.jsonl"
    badl.write_text('{"id": "0000", "conversations": []}\n{"id": "0001", "conversations": [\n', encoding="utf-8")
    assert_error(capsys, select_cmd(scores, badl, tmp_path / "o.json"), "line 2 column")


def test_error_unknown_pool_layout(tmp_path, capsys, small_pool):
    _, scores = small_pool
    pool = write_pool(tmp_path / "odd.jsonl", [{"id": f"{i:04d}", "text": "hello"} for i in range(50)], "jsonl")
    assert_error(capsys, select_cmd(scores, pool, tmp_path / "o.json"), "unknown layout")


def test_error_duplicate_pool_ids(tmp_path, capsys, small_pool):
    _, scores = small_pool
    ids = [f"{i:04d}" for i in range(50)]
    ids[30] = ids[7]
    pool = write_pool(tmp_path / "dup.json", llava_records(np.random.default_rng(22), 50, ids), "json")
    assert_error(capsys, select_cmd(scores, pool, tmp_path / "o.json"), "duplicated sample id", "'0007'")


@pytest.mark.parametrize(
    "budget,expected",
    [
        ("0", "at least 1"),
        ("-5", "at least 1"),
        ("51", "exceeds the 50 scored samples"),
        ("150%", "percentage"),
        ("abc", "'abc'"),
    ],
)
def test_error_bad_budget(tmp_path, capsys, small_pool, budget, expected):
    pool, scores = small_pool
    line = assert_error(capsys, select_cmd(scores, pool, tmp_path / "o.json", budget), "budget", expected)
    assert budget in line
    assert not (tmp_path / "o.json").exists()


def test_error_scores_for_another_pool(tmp_path, capsys, small_pool):
    pool, _ = small_pool
    other = tmp_path / "other.jsonl"
    with open(other, "w", encoding="utf-8") as f:
        for i, sid in enumerate(["0001", "zzz-1", "zzz-2"]):
            f.write(json.dumps({"sample_id": sid, "importance": 3.0 - i}) + "\n")
    assert_error(capsys, select_cmd(other, pool, tmp_path / "o.json", "1"), "2 scored sample ids are not in pool", "'zzz-1'")
    # int ids do not match string ids that look the same
    with open(other, "w", encoding="utf-8") as f:
        f.write(json.dumps({"sample_id": 1, "importance": 1.0}) + "\n")
    assert_error(capsys, select_cmd(other, pool, tmp_path / "o.json", "1"), "not in pool")


def test_error_malformed_scores_line(tmp_path, capsys, small_pool):
    pool, _ = small_pool
    bad = tmp_path / "bad_scores.jsonl"
    bad.write_text('{"sample_id": "0001", "importance": 0.5}\n{"sample_id": "0002", "importance": \n', encoding="utf-8")
    assert_error(capsys, select_cmd(bad, pool, tmp_path / "o.json", "1"), "bad_scores.jsonl", "line 2")
    bad.write_text(
        '{"sample_id": "0001", "importance": 0.5}\n{"sample_id": "0002"}\n{"sample_id": "0003", "importance": 0.1}\n',
        encoding="utf-8",
    )
    assert_error(capsys, select_cmd(bad, pool, tmp_path / "o.json", "1"), "line 2")


@pytest.mark.parametrize(
    "bad_rows,chunk,width",
    [([37], None, 20), ([37, 38], 100, 20), ([0, 437], 100, 20), ([7], None, 100)],
    ids=["first-chunk-default", "first-chunk-of-5", "head-and-later", "kernel-side"],
)
def test_rows_with_nan_or_inf_are_left_out_and_reported(tmp_path, capsys, bad_rows, chunk, width):
    """A NaN or inf makes a row unusable: it is left out of the scoring (the others are scored
    as if it were not there), named in the summary, and the command says so."""
    x = make_matrix(30, 500 if width == 20 else 40, width)
    for i, row in enumerate(bad_rows):
        x[row, 3] = np.nan if i % 2 == 0 else np.inf
    np.save(tmp_path / "nan.npy", x)
    extra = [] if chunk is None else ["--chunk-rows", chunk]
    rc, out, err = run_cli(capsys, "score", tmp_path / "nan.npy", "--out", tmp_path / "s.jsonl", *extra)
    assert rc == 0, err
    assert f"left out {len(bad_rows)} rows holding NaN or inf" in out
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["excluded_non_finite"] == len(bad_rows) and summary["excluded_sample_ids"] == bad_rows
    scores = read_jsonl(tmp_path / "s.jsonl")
    assert len(scores) == len(x) - len(bad_rows) and not {r["sample_id"] for r in scores} & set(bad_rows)
    kept = [i for i in range(len(x)) if i not in bad_rows]  # scored as if the others were not there
    got = {r["sample_id"]: r["importance"] for r in scores}
    assert_method_scores([got[i] for i in kept], x[kept], tmp_path / "s.summary.json")


def test_every_row_non_finite_is_an_error(tmp_path, capsys):
    np.save(tmp_path / "nan.npy", np.full((20, 6), np.nan))
    assert_error(capsys, ["score", tmp_path / "nan.npy", "--out", tmp_path / "s.jsonl"], "every row holds a NaN or inf")


def test_error_non_2d_npy(tmp_path, capsys):
    np.save(tmp_path / "cube.npy", np.random.default_rng(33).standard_normal((4, 5, 6)))
    assert_error(capsys, ["score", tmp_path / "cube.npy", "--out", tmp_path / "s.jsonl"], "2-D", "(4, 5, 6)")
    np.save(tmp_path / "vec.npy", np.random.default_rng(34).standard_normal(10))
    assert_error(capsys, ["score", tmp_path / "vec.npy", "--out", tmp_path / "s.jsonl"], "2-D")


def test_error_not_npy_or_npz(tmp_path, capsys):
    path = tmp_path / "reps.csv"
    path.write_text("1,2,3\n4,5,6\n", encoding="utf-8")
    assert_error(capsys, ["score", path, "--out", tmp_path / "s.jsonl"], "reps.csv", ".npy or .npz")
    fake = tmp_path / "fake.npy"
    fake.write_text("not an array", encoding="utf-8")
    assert_error(capsys, ["score", fake, "--out", tmp_path / "s.jsonl"], "fake.npy", ".npy")


def test_argparse_missing_required_option(tmp_path, capsys):
    assert_error(capsys, ["score", tmp_path / "x.npy"], "--out", "see scalselect score --help")
    assert_error(capsys, ["select", "--scores", "s.jsonl", "--data", "p.json", "--out", "o.json"], "--budget")
    assert_error(capsys, ["score", tmp_path / "x.npy", "--out", "s.jsonl", "--seed", "one"], "invalid int value")


def test_subprocess_entry_point_error(tmp_path):
    """`python -m scalselect` runs; bad input gives exit 2 and exactly one stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "scalselect", "score", str(tmp_path / "absent.npy"), "--out", str(tmp_path / "s.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scalselect score: error: ")
    assert "absent.npy" in lines[0] and "no such file" in lines[0]
    assert proc.stdout == ""


# ----------------------------------------------------------------------------- info, demo


def test_info_text(capsys):
    rc, out, _ = run_cli(capsys, "info")
    assert rc == 0
    lines = out.splitlines()
    assert any(ln.startswith("cuda_archs:") for ln in lines)
    assert any(ln.startswith("version:") for ln in lines)


def test_info_json(capsys):
    rc, out, _ = run_cli(capsys, "info", "--json")
    assert rc == 0
    facts = json.loads(out)
    assert {"version", "native", "cuda", "cuda_archs", "gpu_usable"} <= set(facts)
    assert isinstance(facts["native"], bool)
    assert isinstance(facts["gpu_usable"], bool)
    import pyarrow

    import scalselect

    assert facts["version"] == scalselect.__version__
    assert facts["pyarrow"] == pyarrow.__version__  # Parquet and save_to_disk pools can be read


def test_demo_runs_twice(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    for _ in range(2):
        rc, out, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--n", 60, "--quiet")
        assert rc == 0, err
        assert "extracted 60 vectors, 2 skipped (1 no image, 1 unreadable image)" in out
        subset = read_pool(out_dir / "run" / "subset.json")
        assert subset.layout == "llava" and subset.container == "json"
        assert len(subset) == 10  # default budget: 16% of the 60 usable samples
        scores = read_jsonl(out_dir / "run" / "scores.jsonl")
        assert len(scores) == 60
        assert set(subset.ids) == {r["sample_id"] for r in scores[:10]}
        table = {
            line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:3] in ("coc", "gqa", "ocr", "tex", "vg ")
        }
        assert sum(int(pool) for pool, _ in table.values()) == 60
        assert sum(int(sub) for _, sub in table.values()) == 10


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert_error(capsys, ["demo", "--out", tmp_path, "--n", 60], "is not a demo folder")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_error_odd_matrix_files(tmp_path, capsys):
    """Files that once escaped as tracebacks: each is now one line and exit code 2."""
    (tmp_path / "empty.npy").write_bytes(b"")
    assert_error(capsys, ["score", tmp_path / "empty.npy", "--out", tmp_path / "s.jsonl"], "empty.npy")
    x = make_matrix(3, 30, 6)
    np.savez(tmp_path / "z.npz", representations=x)
    (tmp_path / "z.npz").rename(tmp_path / "z.npy")
    assert_error(capsys, ["score", tmp_path / "z.npy", "--out", tmp_path / "s.jsonl"], ".npz archive")
    np.savez(tmp_path / "scalar_ids.npz", representations=x, sample_ids=np.array(5))
    assert_error(capsys, ["score", tmp_path / "scalar_ids.npz", "--out", tmp_path / "s.jsonl"], "1-D")
    store = write_store(tmp_path / "store", x, dtype="float32")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"] = None
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert_error(capsys, ["score", store, "--out", tmp_path / "s.jsonl"], "corrupt manifest")
    np.save(tmp_path / "ok.npy", x)
    assert_error(capsys, ["score", tmp_path / "ok.npy", "--out", tmp_path / "s.jsonl", "--chunk-rows", "0"], "--chunk-rows")
    assert not (tmp_path / "s.jsonl").exists()


def test_big_endian_and_integer_matrices_are_read(tmp_path, capsys):
    x = make_matrix(4, 300, 12)
    np.save(tmp_path / "le.npy", x.astype("<f4"))
    np.save(tmp_path / "be.npy", x.astype(">f4"))
    np.save(tmp_path / "int.npy", np.round(x * 100).astype(np.int32))
    scores = {}
    for name in ("le", "be", "int"):
        rc, _, err = run_cli(capsys, "score", tmp_path / f"{name}.npy", "--out", tmp_path / f"{name}.jsonl", "--quiet")
        assert rc == 0, err
        scores[name] = {r["sample_id"]: r["importance"] for r in read_jsonl(tmp_path / f"{name}.jsonl")}
    for name in ("le", "be"):  # each the method's scores of the same float32 values
        got = [scores[name][i] for i in range(300)]
        assert_method_scores(got, x, tmp_path / f"{name}.summary.json")
    assert len(scores["int"]) == 300


def test_outputs_never_overwrite_inputs(tmp_path, capsys, small_pool):
    pool, scores = small_pool
    before = scores.read_bytes()
    assert_error(capsys, select_cmd(scores, pool, scores), "would overwrite an input")
    assert_error(capsys, select_cmd(scores, pool, pool), "would overwrite an input")
    assert scores.read_bytes() == before
    x = make_matrix(5, 40, 6)
    np.save(tmp_path / "x.npy", x)
    assert_error(capsys, ["score", tmp_path / "x.npy", "--out", tmp_path / "x.npy"], "would overwrite")
    store = write_store(tmp_path / "st", x, dtype="float32")
    assert_error(capsys, ["score", store, "--out", store / "scores.jsonl"], "would overwrite")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)


def test_scores_file_ids_and_values_are_strict(tmp_path, capsys, small_pool):
    pool, _ = small_pool
    bad = tmp_path / "s.jsonl"
    for line, expected in [
        ('{"sample_id": true, "importance": 1.0}', "string or an integer"),
        ('{"sample_id": [1], "importance": 1.0}', "string or an integer"),
        ('{"sample_id": "0001", "importance": "7"}', "must be a number"),
    ]:
        bad.write_text(line + "\n", encoding="utf-8")
        assert_error(capsys, select_cmd(bad, pool, tmp_path / "o.json", "1"), expected)
    bad.write_bytes(b'{"sample_id": "0001", "importance": 1.0}\n\xff\xfe\n')
    assert_error(capsys, select_cmd(bad, pool, tmp_path / "o.json", "1"), "UTF-8")


def test_unwritable_output_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", make_matrix(6, 40, 6))
    (tmp_path / "taken").mkdir()
    assert_error(capsys, ["score", tmp_path / "x.npy", "--out", tmp_path / "taken", "--quiet"], "taken")


def test_outputs_get_the_usual_file_mode(tmp_path, capsys, small_pool):
    import os
    import stat

    pool, scores = small_pool
    rc, _, err = run_cli(capsys, "select", "--scores", scores, "--data", pool, "--budget", "5", "--out", tmp_path / "sub.json")
    assert rc == 0, err
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "sub.json").stat().st_mode) == 0o666 & ~umask
