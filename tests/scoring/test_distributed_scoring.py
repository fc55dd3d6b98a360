"""Distributed scoring under torchrun (gloo, CPU): real processes against one process.

Each launch runs tests/dist_score_main.py on every rank for a list of jobs (one process group
for several stores, since starting torch takes seconds); the scores rank 0 gathers must match
`leverage_scores(store)` in this process, run with the ranks' one thread: same ids in store
order, same k, every score within what a reordered float64 sum allows, the same top 16 %.
"""

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from scalselect import InputError, leverage_scores
from scalselect.options import PILOT_ROWS
from scalselect.scoring.sketch import holdout_rows
from scalselect.stores import StoreWriter, load_representations, part_shards, read_store
from store_files import reseal
from processes import free_port
from matrices import reference, spectrum_matrix
from tolerances import assert_scores_within, reordered_sums_tolerance

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "dist_score_main.py"


def make_store(path, x, sizes, ids=None, dtype="float16"):
    ids = [f"s{i}" for i in range(len(x))] if ids is None else ids
    assert sum(sizes) == len(x)
    writer = StoreWriter(path, x.shape[1], dtype)
    lo = 0
    for size in sizes:
        writer.add(x[lo : lo + size], ids[lo : lo + size])
        lo += size
    writer.close()
    return path


def spectrum(n, d, seed, decay=0.7):
    return spectrum_matrix(n, d, decay=decay, offset=2.0, seed=seed, dtype=np.float32)


def launch(tmp_path, world, jobs, name):
    spec = tmp_path / f"{name}.spec.json"
    spec.write_text(json.dumps({"jobs": jobs, "timeout_minutes": 1.0}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(world),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(DRIVER),
        str(spec),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


def job(store, out, **options):
    return {"store": str(store), "out": str(out), "options": options}


def check_against_one_process(store, out, world, **options):
    """The ranks ran with one thread each (OMP_NUM_THREADS=1), so one process scoring with one
    thread computes the very same float32 products: only the order of the float64 sums over
    ranks differs (tests/tolerances.reordered_sums_tolerance)."""
    got = json.loads(Path(out).read_text(encoding="utf-8"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():  # a sketch of these small stores may not certify itself
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = leverage_scores(store, device="cpu", **options)
    finally:
        torch.set_num_threads(threads)
    assert got["summary"]["method"] == ref.method
    assert got["ids"] == ref.sample_ids  # store order
    assert got["k"] == ref.k
    assert got["summary"]["world_size"] == world
    assert got["summary"]["num_rows"] == len(ref.scores) + len(ref.excluded)
    assert got["summary"]["excluded_sample_ids"] == ref.excluded
    scores = np.asarray(got["scores"])
    ids, x = load_representations(store)
    keep = [i for i, sample_id in enumerate(ids) if sample_id not in set(ref.excluded)]
    exact = reference(x[keep], standardize=options.get("standardize", False), l2_normalize=options.get("l2_normalize", False))
    allowed = reordered_sums_tolerance(exact)
    share = assert_scores_within(scores, ref.scores, allowed)
    if ref.method == "sketch":
        check_estimate(got["summary"]["sketch"]["score_error_estimate"], ref, allowed, len(ids), keep)
    # each rank held exactly the shards r, r + world, ... of the manifest
    manifest = json.loads((Path(store) / "manifest.json").read_text(encoding="utf-8"))
    for rank in range(world):
        mine = json.loads(Path(f"{out}.rank{rank}.json").read_text(encoding="utf-8"))
        assert mine["world"] == world and mine["k"] == ref.k
        want = read_store(store, part=(rank, world)).ids
        assert mine["ids"] == want
        assert mine["rows"] == sum(manifest["shards"][i]["rows"] for i in part_shards(len(manifest["shards"]), (rank, world)))
    return share


def check_estimate(estimate, ref, allowed: np.ndarray, num_rows: int, keep: list) -> None:
    """The same holdout rows whatever the world size, so the same estimate but for rounding:
    each holdout score (through y, and direct) moves by at most its tolerance, so the RMS of
    their differences by at most twice the RMS of the tolerances, and their mean by its mean."""
    if ref.sketch["score_error_estimate"] is None:  # no holdout: every row is in the pilot
        assert estimate is None
        return
    position = {row: i for i, row in enumerate(keep)}
    held = [position[row] for row in holdout_rows(num_rows, PILOT_ROWS, 0) if row in position]
    want, tol, scores = ref.sketch["score_error_estimate"], allowed[held], ref.scores[held]
    reach = (2 * np.sqrt(np.mean(tol**2)) + want * np.mean(tol)) / (np.mean(scores) * (1 - want) - np.mean(tol))
    assert abs(estimate - want) <= reach, (estimate, want, reach)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("stores")
    seven = make_store(base / "seven", spectrum(3000, 64, 1), [700, 120, 900, 50, 480, 10, 740])
    return {
        "seven": seven,  # rank 0 of 2: 2820 rows, rank 1: 180
        "wide": make_store(base / "wide", spectrum(50, 100, 2, decay=0.4), [12, 0, 25, 13]),  # N < D
        "late_head": make_store(base / "late_head", spectrum(1200, 48, 3), [0, 500, 300, 400]),  # rank 1 reads the head
        "two": make_store(base / "two", spectrum(1000, 40, 4), [600, 400]),  # world 3: rank 2 has nothing
        "two_wide": make_store(base / "two_wide", spectrum(40, 90, 5), [25, 15]),
    }


def test_read_store_parts_split_the_shards(stores):
    whole = read_store(stores["seven"])
    for world in (1, 2, 3, 7, 9):
        parts = [read_store(stores["seven"], part=(r, world)) for r in range(world)]
        assert sum(p.num_rows for p in parts) == whole.num_rows
        assert sorted(i for p in parts for i in p.ids) == sorted(whole.ids)
    empty = read_store(stores["two"], part=(2, 3))
    assert empty.num_rows == 0 and empty.ids == [] and list(empty.chunks(10)) == []
    assert list(part_shards(7, (1, 3))) == [1, 4]
    with pytest.raises(ValueError):
        part_shards(7, (3, 3))


def test_world_of_two_matches_one_process(stores, tmp_path):
    cases = [
        ("seven", {}),
        ("seven", {"standardize": True}),
        ("seven", {"l2_normalize": True}),
        ("seven", {"chunk_rows": 97}),
        ("late_head", {}),
        ("wide", {}),
        ("wide", {"standardize": True, "l2_normalize": True}),
        # the sketch: rank 0 plans it from the whole store; each rank sketches its shards
        ("seven", {"method": "sketch"}),
        ("seven", {"method": "sketch", "standardize": True}),
        ("late_head", {"method": "sketch", "sketch_size": 20, "standardize": True}),
        ("late_head", {"method": "exact", "standardize": True, "l2_normalize": True}),
    ]
    jobs = [job(stores[name], tmp_path / f"out{i}.json", **opts) for i, (name, opts) in enumerate(cases)]
    proc, _ = launch(tmp_path, 2, jobs, "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, (name, opts) in enumerate(cases):
        check_against_one_process(stores[name], tmp_path / f"out{i}.json", 2, **opts)


def test_world_of_three_with_two_shards_leaves_a_rank_empty(stores, tmp_path):
    """Rank 2 has no rows: it takes part in every step with nothing and gets no scores. An
    error every rank meets (duplicate ids over two ranks, rows all equal) leaves the group
    usable for the next job."""
    rng = np.random.default_rng(6)
    dup = make_store(tmp_path / "dup", rng.standard_normal((30, 8)).astype(np.float32), [20, 10])
    second = dup / "shard-00001.ids.json"  # a store writer refuses this; a hand-edited store may not
    second.write_text(json.dumps(["s3"] + [f"t{i}" for i in range(9)]))
    reseal(dup)
    same = make_store(tmp_path / "same", np.ones((30, 8), np.float32), [20, 10])
    jobs = [
        job(stores["two"], tmp_path / "gram.json"),
        job(stores["two_wide"], tmp_path / "kernel.json"),
        {**job(dup, tmp_path / "dup.json"), "expect_error": True},
        {**job(same, tmp_path / "same.json"), "expect_error": True},
        job(stores["two"], tmp_path / "after.json", standardize=True),
        job(stores["two"], tmp_path / "sketch.json", method="sketch"),
    ]
    proc, _ = launch(tmp_path, 3, jobs, "three")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_against_one_process(stores["two"], tmp_path / "gram.json", 3)
    check_against_one_process(stores["two_wide"], tmp_path / "kernel.json", 3)
    check_against_one_process(stores["two"], tmp_path / "after.json", 3, standardize=True)
    check_against_one_process(stores["two"], tmp_path / "sketch.json", 3, method="sketch")
    for out in ("gram.json", "kernel.json"):
        empty = json.loads((tmp_path / f"{out}.rank2.json").read_text(encoding="utf-8"))
        assert empty["rows"] == 0 and empty["ids"] == [] and empty["scores"] == []
    for rank in range(3):  # found on rank 0, told to all, the same message everywhere
        assert "duplicate sample ids" in (tmp_path / f"dup.json.rank{rank}.err").read_text(encoding="utf-8")
        assert "identical" in (tmp_path / f"same.json.rank{rank}.err").read_text(encoding="utf-8")
    for store in (dup, same):
        with pytest.raises(InputError, match="duplicate|identical"):
            leverage_scores(store)


def test_a_nan_row_on_one_rank_is_left_out_as_by_one_process(tmp_path):
    """A NaN row in shard 1 (rank 1's) is left out of the Gram matrix and the scores, and named,
    exactly as one process does it."""
    store = make_store(tmp_path / "nan", spectrum(450, 16, 7), [200, 150, 100], dtype="float32")
    second = json.loads((store / "manifest.json").read_text(encoding="utf-8"))["shards"][1]["vectors"]
    shard = np.load(store / second, mmap_mode="r+")  # rows 200..349 (writers refuse NaN)
    shard[37, 5] = np.nan
    shard.flush()
    del shard
    reseal(store)
    proc, _ = launch(tmp_path, 2, [job(store, tmp_path / "nan.json")], "nan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_against_one_process(store, tmp_path / "nan.json", 2)
    assert leverage_scores(store).excluded == ["s237"]
