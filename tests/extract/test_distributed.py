"""Extraction and `run` under torchrun (gloo, 2 processes on this machine): the merged store equals a
single-process one, a run of 2 ranks cut short resumes with 1, a silent rank fails the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from processes import alive, children, free_port, rank_of
from scalselect.pipeline import ExtractOptions, extract_store
from scalselect.stores import load_representations, read_manifest, read_skipped, read_store
from matrices import reference
from tolerances import assert_scores_within, assert_vectors_close, forward_rtol, reordered_sums_tolerance


def torchrun_argv(nproc: int, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "scalselect",
        *map(str, args),
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(nproc: int, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_argv(nproc, *args), capture_output=True, text=True, env=ENV, timeout=timeout)


DEMO_SAMPLES = 60  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def extract_args(demo, out, pool=None, *extra):
    return [
        "extract",
        "--model",
        demo["model"],
        "--data",
        pool or demo["pool"],
        "--image-root",
        demo["images"],
        "--out",
        out,
        "--workers",
        0,
        "--quiet",
        "--device",
        "cpu",
        "--store-dtype",
        "float32",
        "--shard-rows",
        8,
        *extra,
    ]


def by_id(store):
    ids, x = load_representations(store)
    return dict(zip(ids, x))


def assert_same_store(a, b):
    """The same vectors, within what two float32 forward passes may differ by (the ranks run
    their batches apart), and the same skips."""
    from transformers import AutoConfig

    va, vb = by_id(a), by_id(b)
    assert set(va) == set(vb)
    rtol = forward_rtol(AutoConfig.from_pretrained(read_manifest(a)["meta"]["model"], local_files_only=True))
    for key in va:
        assert_vectors_close(va[key], vb[key], rtol, str(key))
    assert sorted(map(json.dumps, read_skipped(a))) == sorted(map(json.dumps, read_skipped(b)))


def single(demo, out, pool=None):
    extract_store(
        demo["model"],
        pool or demo["pool"],
        demo["images"],
        out,
        ExtractOptions(workers=0, progress=False, store_dtype="float32", shard_rows=8, device="cpu"),
    )
    return out


def test_two_ranks_write_one_store_equal_to_a_single_process(demo, tmp_path):
    proc = torchrun(2, *extract_args(demo, tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extracted 60 vectors, 2 skipped" in proc.stdout and proc.stdout.count("extracted") == 1
    manifest = read_manifest(tmp_path / "two")
    names = [s["vectors"] for s in manifest["shards"]]
    assert any(n.startswith("shard-r0-") for n in names) and any(n.startswith("shard-r1-") for n in names)
    assert manifest["meta"]["world_size_last_run"] == 2
    assert not list((tmp_path / "two").glob(".lock*"))
    assert_same_store(tmp_path / "two", single(demo, tmp_path / "one"))


def big_pool(demo, tmp_path, copies: int = 10) -> Path:
    """The demo pool `copies` times over (new ids): a job long enough to be cut short."""
    records = [{**r, "id": f"{r['id']}-{k}"} for k in range(copies) for r in json.loads(Path(demo["pool"]).read_text())]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    return pool


def ranks(job: subprocess.Popen, world: int = 2) -> dict[int, int]:
    """rank -> pid of a torchrun job's processes, once all are up."""
    deadline = time.time() + 60
    while time.time() < deadline:
        found = {rank_of(pid): pid for pid in children(job.pid)}
        if all(r in found for r in range(world)):
            return {r: found[r] for r in range(world)}
        assert job.poll() is None, "the job ended before its ranks could be seen"
        time.sleep(0.02)
    raise AssertionError("the ranks did not start")


def committed(store: Path, prefix: str) -> bool:
    return bool(list(store.glob(f"{prefix}*.part.json")))


def test_a_two_rank_run_cut_short_resumes_with_one_rank(demo, tmp_path):
    """The job is stopped (SIGTERM, as Slurm does; torchrun passes it on to the ranks) once both
    ranks have committed parts, and resumed by a single process."""
    pool = big_pool(demo, tmp_path)
    # batch size 1: samples are not held back in the length-grouping window, parts commit early
    argv = torchrun_argv(2, *extract_args(demo, tmp_path / "s", pool, "--batch-size", 1))
    job = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (committed(tmp_path / "s", "shard-r0-") and committed(tmp_path / "s", "shard-r1-")):
        assert job.poll() is None, "the job ended before it could be cut short"
        time.sleep(0.02)
    assert time.time() < deadline, "both ranks should have committed parts by now"
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=60)
    assert not (tmp_path / "s" / "manifest.json").exists()
    parts_before = len(list((tmp_path / "s").glob("shard-*.part.json")))
    assert parts_before >= 2
    summary = extract_store(
        demo["model"],
        pool,
        demo["images"],
        tmp_path / "s",
        ExtractOptions(workers=0, progress=False, store_dtype="float32", shard_rows=8, resume=True, device="cpu"),
    )
    assert 0 < summary["processed_this_run"] < 620
    ids, _ = load_representations(tmp_path / "s")
    assert len(ids) == len(set(ids)) == 600
    assert_same_store(tmp_path / "s", single(demo, tmp_path / "one", pool))


def test_a_rank_that_does_not_answer_fails_the_job_within_the_timeout(demo, tmp_path):
    """Rank 1 is stopped (SIGSTOP: a hung file system, a stuck GPU) mid-extraction; rank 0 waits
    for it at the end of its share for --dist-timeout only, then says why and fails the job."""
    pool = big_pool(demo, tmp_path)
    argv = torchrun_argv(2, *extract_args(demo, tmp_path / "s", pool, "--batch-size", 1, "--dist-timeout", 0.1))
    t0 = time.time()
    job = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = ranks(job)
    try:
        while not committed(tmp_path / "s", "shard-r1-"):
            assert job.poll() is None, "the job ended before rank 1 could be stopped"
            time.sleep(0.01)
        os.kill(pids[1], signal.SIGSTOP)
        deadline = time.time() + 90
        while alive(pids[0]) and time.time() < deadline:  # rank 0 gives up on rank 1
            time.sleep(0.1)
    finally:
        os.kill(pids[1], signal.SIGCONT)  # so that torchrun's SIGTERM can end it
    _, stderr = job.communicate(timeout=90)
    assert job.returncode != 0 and time.time() - t0 < 120
    # the rank left waiting says why in one line (torchrun then reports the job's failure)
    ours = [line for line in stderr.splitlines() if line.startswith("scalselect extract [rank ")]
    assert any(
        "error: barrier: another rank failed or did not answer within 0.1 min" in line and "rerun with --resume" in line
        for line in ours
    ), stderr[-3000:]


def scored_alone(run: Path, store: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the scores `run` wrote, one process's scores of its store), in the store's order. The one
    process scores with one thread, as each rank did (ENV): the very same float32 products."""
    import torch

    from scalselect.cli import main
    from scalselect.select import read_scores

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["score", str(store), "--out", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    two, alone = (dict(zip(*read_scores(path))) for path in (run / "scores.jsonl", out))
    ids = read_store(store / "rows" if (store / "rows").is_dir() else store).ids
    assert two.keys() == alone.keys() == set(ids)
    return np.array([two[i] for i in ids]), np.array([alone[i] for i in ids])


def test_run_under_torchrun_gives_the_single_process_subset(demo, tmp_path):
    from scalselect.cli import main
    from scalselect.data import read_pool

    common = [
        *demo["inputs"],
        "--budget",
        "16%",
        "--workers",
        0,
        "--quiet",
        "--device",
        "cpu",
        "--store-dtype",
        "float32",
        "--shard-rows",
        8,
    ]
    proc = torchrun(2, "run", *common, "--out-dir", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scored 60 samples") == 1 and proc.stdout.count("selected 10 of 60") == 1
    # the distributed scores are those of one process scoring the same store
    two, alone = scored_alone(tmp_path / "two", tmp_path / "two" / "store", tmp_path / "alone.jsonl")
    assert_scores_within(two, alone, reordered_sums_tolerance(reference(load_representations(tmp_path / "two" / "store")[1])))
    # and the subset is the one a single-process run selects
    assert main(["run", *map(str, common), "--out-dir", str(tmp_path / "one")]) == 0
    assert read_pool(tmp_path / "two" / "subset.json").records == read_pool(tmp_path / "one" / "subset.json").records


def test_an_error_on_rank_0_alone_reaches_the_other_ranks_at_once(tmp_path):
    """Rank 0 cannot write the scores (--out under a regular file): rank 1 must not wait for the
    timeout (5 minutes here) but stop with rank 0's reason."""
    from scalselect.stores import write_store

    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    store = write_store(tmp_path / "store", x, dtype="float32", shard_rows=10)
    (tmp_path / "file").write_text("")
    t0 = time.time()
    proc = torchrun(2, "score", store, "--out", tmp_path / "file" / "scores.jsonl", "--quiet", "--dist-timeout", 5, timeout=200)
    assert proc.returncode != 0 and time.time() - t0 < 120, proc.stderr[-2000:]
    # rank 1 relays rank 0's reason ("rank 0: ...") unless torchrun stops it first, once rank 0
    # has exited with its own line: either way the reason is said, and nobody waited 5 minutes
    lines = [line for line in proc.stderr.splitlines() if line.startswith("scalselect score [rank ")]
    assert any("File exists" in line for line in lines), proc.stderr[-2000:]
    assert all("File exists" in line for line in lines if line.startswith("scalselect score [rank 1")), lines


def test_run_no_store_under_torchrun(demo, tmp_path):
    """Two ranks extract the pilot together, rank 0 plans, each rank sketches its parts; the
    sketch store then scores as one process scores it, close to the exact scores of the vectors."""
    from scalselect.cli import main
    from scalselect.select import read_scores

    common = [
        *demo["inputs"],
        "--budget",
        "16%",
        "--workers",
        0,
        "--quiet",
        "--device",
        "cpu",
        "--shard-rows",
        8,
    ]
    proc = torchrun(2, "run", *common, "--out-dir", tmp_path / "two", "--no-store", "--pilot-rows", 16)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_manifest(tmp_path / "two" / "sketch" / "rows")
    assert rows["num_rows"] == 60 and {s["vectors"][:8] for s in rows["shards"]} == {"shard-r0", "shard-r1"}
    two_scores, alone = scored_alone(tmp_path / "two", tmp_path / "two" / "sketch", tmp_path / "alone.jsonl")
    assert main(["run", *map(str, common), "--out-dir", str(tmp_path / "exact"), "--method", "exact"]) == 0
    ids, vectors = load_representations(tmp_path / "exact" / "store")  # the magnitudes the sketch's weights act on
    row = dict(zip(ids, vectors))
    order = read_store(tmp_path / "two" / "sketch" / "rows").ids
    assert_scores_within(two_scores, alone, reordered_sums_tolerance(reference(np.stack([row[i] for i in order]))))
    two = dict(zip(*read_scores(tmp_path / "two" / "scores.jsonl")))
    exact = dict(zip(*read_scores(tmp_path / "exact" / "scores.jsonl")))
    a, b = np.array([exact[i] for i in ids]), np.array([two[i] for i in ids])
    stated = json.loads((tmp_path / "two" / "scores.summary.json").read_text())["sketch"]
    assert np.sqrt(np.mean((a - b) ** 2)) / a.mean() <= 3 * stated["score_error_estimate"] + 1e-6
