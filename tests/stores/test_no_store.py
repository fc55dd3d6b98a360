"""`scalselect run --no-store`: extraction feeds the sketch and no N x D store is written. Its
scores match the stored run's within the accuracy it states; killed with SIGKILL and resumed,
it gives the uninterrupted run's scores (up to float32 rounding)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scalselect import InputError, leverage_scores
from scalselect.select import read_scores
from scalselect.stores.sketch_store import SKETCH_INFO, SKETCH_ROWS
from scalselect.stores import open_rows
from matrices import reference
from tolerances import assert_scores_within, engine_tolerance, sketch_tolerance

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
DIM = 64  # the demo model's width


DEMO_SAMPLES = 80  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def run_argv(demo, out, *extra) -> list[str]:
    """A small pilot (20 of 82 samples) so that the pilot, its replay and the main pass all run."""
    return [
        sys.executable,
        "-m",
        "scalselect",
        "run",
        *demo["inputs"],
        "--out-dir",
        str(out),
        "--budget",
        "16%",
        "--workers",
        "0",
        "--quiet",
        "--batch-size",
        "1",
        "--shard-rows",
        "4",
        "--device",
        "cpu",
        "--pilot-rows",
        "20",
        *extra,
    ]


def run(demo, out, *extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(run_argv(demo, out, *extra), env=ENV, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def scores_by_id(out: Path) -> dict:
    ids, scores = read_scores(out / "scores.jsonl")
    return dict(zip(ids, scores))


def summary(out: Path) -> dict:
    return json.loads((out / "scores.summary.json").read_text(encoding="utf-8"))


def stored_rows(out: Path) -> tuple[list, np.ndarray]:
    """The ids and vectors of a stored run."""
    src = open_rows(out / "store")
    return list(src.ids), src.take(np.arange(len(src.ids))).double().numpy()


def rounding(stored: Path, sketch_size: int, standardize: bool = False) -> dict:
    """By id, how far a sketch of these vectors (of that size, its sums over at most every row
    at once) and the exact engine's stored scores may lie apart by rounding alone."""
    ids, x = stored_rows(stored)
    ref = reference(x, standardize=standardize)
    run_summary = summary(stored)
    exact = engine_tolerance(ref, side=run_summary["side"], chunk_rows=run_summary["settings"]["chunk_rows"])
    sketch = sketch_tolerance(ref, chunk_rows=len(ids), size=sketch_size)
    return dict(zip(ids, exact.scores + sketch.scores))


@pytest.fixture(scope="module")
def stored(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("stored") / "run"
    run(demo, out, "--method", "exact")
    return out


@pytest.fixture(scope="module")
def uninterrupted(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("nostore") / "run"
    run(demo, out, "--no-store")
    return out


def test_no_vectors_are_stored_and_the_sketch_store_is_complete(uninterrupted):
    sketch = uninterrupted / "sketch"
    assert not (uninterrupted / "store").exists()
    assert (sketch / SKETCH_INFO).is_file()
    manifest = json.loads((sketch / SKETCH_ROWS / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_rows"] == 80 and manifest["num_skipped"] == 2
    assert manifest["dim"] == summary(uninterrupted)["sketch"]["sketch_size"] <= DIM
    assert all("sidecar" in shard for shard in manifest["shards"])
    assert summary(uninterrupted)["method"] == "sketch" and summary(uninterrupted)["dim"] == DIM


def test_scores_match_the_stored_run_within_the_stated_accuracy(stored, uninterrupted):
    want, got = scores_by_id(stored), scores_by_id(uninterrupted)
    assert sorted(got) == sorted(want)  # the same 80 samples scored, the same 2 skipped
    ids = sorted(want)
    a, b = np.array([want[i] for i in ids]), np.array([got[i] for i in ids])
    error = np.sqrt(np.mean((a - b) ** 2)) / a.mean()
    stated = summary(uninterrupted)["sketch"]
    allowed = rounding(stored, stated["sketch_size"])
    rounding_error = np.sqrt(np.mean(np.array([allowed[i] for i in ids]) ** 2)) / a.mean()
    # the holdout's estimate is of the right size; certified means within CERTIFY_ERROR
    assert error <= 3 * stated["score_error_estimate"] + rounding_error
    if stated["certified"]:
        assert error <= 3 * stated["certify_error"]
    assert summary(uninterrupted)["k"] == summary(stored)["k"]


def test_a_sketch_as_wide_as_the_vectors_gives_the_stored_scores(demo, stored, tmp_path):
    out = tmp_path / "run"
    run(demo, out, "--no-store", "--sketch-size", str(DIM))
    want, got = scores_by_id(stored), scores_by_id(out)
    ids = sorted(want)
    a, b = np.array([want[i] for i in ids]), np.array([got[i] for i in ids])
    allowed = rounding(stored, DIM)  # as wide as the vectors: the method itself, but for rounding
    assert_scores_within(b, a, np.array([allowed[i] for i in ids]))
    assert summary(out)["sketch"]["certified"]
    # the sketch store scores again, e.g. standardised, but never with the exact engine
    sketch = out / "sketch"
    again = leverage_scores(sketch, standardize=True)
    assert again.method == "sketch" and len(again.scores) == 80
    exact = leverage_scores(stored / "store", standardize=True, method="exact")
    allowed = rounding(stored, DIM, standardize=True)
    by_id = dict(zip(exact.sample_ids, exact.scores))
    assert_scores_within(again.scores, [by_id[i] for i in again.sample_ids], np.array([allowed[i] for i in again.sample_ids]))
    with pytest.raises(InputError, match="sketch"):
        leverage_scores(sketch, method="exact")
    with pytest.raises(InputError, match="l2_normalize"):
        leverage_scores(sketch, l2_normalize=True)


def parts(out: Path) -> int:
    return len(list((out / "sketch" / SKETCH_ROWS).glob("shard-*.part.json")))


@pytest.mark.parametrize("when", ["after the first part", "half way"])
def test_sigkill_then_resume_gives_the_uninterrupted_scores(demo, stored, uninterrupted, tmp_path, when):
    out = tmp_path / "run"
    ready = {"after the first part": lambda: parts(out) >= 1, "half way": lambda: parts(out) >= 10}[when]
    job = subprocess.Popen(run_argv(demo, out, "--no-store"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ready():
        assert job.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    assert not (out / "scores.jsonl").exists()
    assert not (out / "sketch" / SKETCH_ROWS / "manifest.json").exists()

    run(demo, out, "--no-store", "--resume")
    want, got = scores_by_id(uninterrupted), scores_by_id(out)
    assert sorted(got) == sorted(want)
    # the same rows and sums, grouped in other parts: the float32 products round differently,
    # each run within the sketch's rounding of the same sketch in exact arithmetic
    ids, x = stored_rows(stored)
    size = summary(out)["sketch"]["sketch_size"]
    allowed = sketch_tolerance(reference(x), chunk_rows=len(ids), size=size).scores
    assert_scores_within([got[i] for i in ids], [want[i] for i in ids], 2 * allowed)
    assert summary(out)["k"] == summary(uninterrupted)["k"]


def test_no_store_refuses_the_exact_engine_and_a_used_folder(demo, uninterrupted, tmp_path):
    proc = subprocess.run(
        run_argv(demo, tmp_path / "x", "--no-store", "--method", "exact"), env=ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--no-store keeps no vectors" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(run_argv(demo, uninterrupted, "--no-store"), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not empty" in proc.stderr, proc.stderr


def test_a_damaged_part_of_a_finished_sketch_is_one_line_on_resume(demo, uninterrupted, tmp_path):
    """Its sums are in the finished sketch: a part cannot be redone in place."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    part = sorted((out / "sketch" / SKETCH_ROWS).glob("shard-*.npy"))[2]
    data = bytearray(part.read_bytes())
    data[-1] ^= 0x01
    part.write_bytes(data)
    proc = subprocess.run(run_argv(demo, out, "--no-store", "--resume"), env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"part {part.stem}: {part.name}: its bytes do not match" in proc.stderr
    assert "extract into a new folder" in proc.stderr


def test_a_resume_must_ask_for_the_same_sketch_and_a_plan_must_match_its_rows(demo, uninterrupted, stored, tmp_path):
    import shutil

    from scalselect.pipeline import ExtractOptions, extract_store

    proc = subprocess.run(
        run_argv(demo, uninterrupted, "--no-store", "--resume", "--sketch-size", "5"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "made with other settings" in proc.stderr and "sketch_size_asked" in proc.stderr
    with pytest.raises(InputError, match="holds a store of vectors"):  # never over a store of vectors
        extract_store(
            demo["model"],
            demo["pool"],
            demo["images"],
            stored / "store",
            ExtractOptions(no_store=True, resume=True, device="cpu", progress=False),
        )
    copy = tmp_path / "sketch"
    shutil.copytree(uninterrupted / "sketch", copy)
    with np.load(copy / "sketch-plan.npz") as z:
        omega, shift = z["omega"], z["shift"]
    np.savez(copy / "sketch-plan.npz", omega=omega[:, ::-1].copy(), shift=shift)
    with pytest.raises(InputError, match="not the plan its rows were made with"):
        leverage_scores(copy)


def _tamper(sketch: Path, how: str) -> None:
    info = json.loads((sketch / "sketch.json").read_text(encoding="utf-8"))
    rows = sketch / SKETCH_ROWS
    sidecar = sorted(rows.glob("*.sidecar.npz"))[0]
    if how == "plan summary not an object":
        info["plan"] = [1, 2]
    elif how == "value scale not a number":
        info["plan"]["value_scale"] = "big"
    elif how == "settings not an object":
        info["settings"] = 3
    elif how == "summary not JSON":
        (sketch / "sketch.json").write_text("{", encoding="utf-8")
        return
    elif how == "plan arrays cut short":
        (sketch / "sketch-plan.npz").write_bytes((sketch / "sketch-plan.npz").read_bytes()[:100])
        return
    elif how == "a part's sums removed":
        sidecar.unlink()
        return
    elif how == "a part's sums changed":
        raw = bytearray(sidecar.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        sidecar.write_bytes(bytes(raw))
        return
    (sketch / "sketch.json").write_text(json.dumps(info), encoding="utf-8")


@pytest.mark.parametrize(
    "how",
    [
        "plan summary not an object",
        "value scale not a number",
        "settings not an object",
        "summary not JSON",
        "plan arrays cut short",
        "a part's sums removed",
        "a part's sums changed",
    ],
)
def test_a_tampered_sketch_store_is_one_line_and_exit_2(uninterrupted, tmp_path, capsys, how):
    import shutil

    from scalselect.cli import main

    copy = tmp_path / "sketch"
    shutil.copytree(uninterrupted / "sketch", copy)
    _tamper(copy, how)
    capsys.readouterr()
    assert main(["score", str(copy), "--out", str(tmp_path / "s.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "s.jsonl").exists()
