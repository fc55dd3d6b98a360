"""Whole pools a hostile (or unlucky) user may bring: ids that JSON allows and UTF-8 does not, a
pool where no sample can be used, an image that would block a reader; none may kill, stall or
corrupt a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import alive, children
from scalselect.cli import main
from scalselect.select import read_scores
from scalselect.stores import MANIFEST, PROGRESS, load_representations


DEMO_SAMPLES = 12  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def run_argv(demo, pool, out, *extra) -> list[str]:
    return [
        "run",
        "--model",
        str(demo["model"]),
        "--data",
        str(pool),
        "--image-root",
        str(demo["images"]),
        "--budget",
        "100%",
        "--out-dir",
        str(out),
        "--workers",
        "0",
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def test_ids_with_lone_surrogates_go_through_extraction_scores_and_the_subset(demo, tmp_path, capsys):
    """'\\ud800' is a legal JSON escape but no UTF-8 text: such ids are written escaped, read
    back equal, and the subset holds the records as they were."""
    records = json.loads(Path(demo["pool"]).read_text())[:12]
    odd = ["\ud800", "a\udfffb", "\udc80\ud800"]
    for record, sample_id in zip(records, odd):
        record["id"] = sample_id
    records[3]["conversations"][0]["value"] += " \u00e9t\u00e9"  # and ordinary non-ASCII text
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))  # ensure_ascii: the escapes as a pool would have them
    assert main(run_argv(demo, pool, tmp_path / "run")) == 0, capsys.readouterr().err
    ids, _ = load_representations(tmp_path / "run" / "store")
    assert set(odd) <= set(ids)
    scored, _ = read_scores(tmp_path / "run" / "scores.jsonl")
    assert set(odd) <= set(scored)
    subset = json.loads((tmp_path / "run" / "subset.json").read_text(encoding="utf-8"))
    assert sorted(map(json.dumps, subset)) == sorted(map(json.dumps, records))  # every record, verbatim


def test_a_pool_where_no_sample_can_be_used_is_never_a_complete_store(demo, tmp_path, capsys):
    records = [
        {
            "id": f"x{i}",
            "image": "absent.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
        }
        for i in range(5)
    ]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    store = tmp_path / "store"
    argv = [
        "extract",
        "--model",
        str(demo["model"]),
        "--data",
        str(pool),
        "--image-root",
        str(demo["images"]),
        "--out",
        str(store),
        "--workers",
        "0",
        "--quiet",
        "--device",
        "cpu",
    ]
    for extra in ([], ["--resume"]):  # and --resume says the same, not "already complete"
        capsys.readouterr()
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "no sample could be used (5 unreadable image)" in err, err
        assert not (store / MANIFEST).exists() and (store / PROGRESS).exists()
    skipped = [json.loads(line) for line in (store / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 5 and all(s["reason"] == "unreadable image" for s in skipped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the worker's death signal is Linux's")
def test_a_dataloader_worker_never_outlives_its_job(demo, tmp_path):
    """The job is killed with SIGKILL (no cleanup can run): its image-loading workers die with it."""
    records = [
        {**r, "id": f"{r['id']}-{k}"}
        for k in range(20)  # long enough to be caught working
        for r in json.loads(Path(demo["pool"]).read_text())
    ]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    argv = [
        sys.executable,
        "-m",
        "scalselect",
        "extract",
        "--model",
        str(demo["model"]),
        "--data",
        str(pool),
        "--image-root",
        str(demo["images"]),
        "--out",
        str(tmp_path / "store"),
        "--workers",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--batch-size",
        "1",
    ]
    job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.time() < deadline and job.poll() is None:
        workers = children(job.pid)
        time.sleep(0.02)
    assert len(workers) >= 2, "the job ended before its workers could be seen"
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    deadline = time.time() + 2  # at once: the DataLoader's own watchdog would take 5 s, and never in a blocked read
    while time.time() < deadline and any(map(alive, workers)):
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "a worker outlived its job"
