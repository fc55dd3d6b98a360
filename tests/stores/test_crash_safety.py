"""Extraction killed with SIGKILL at several points, then resumed, gives the uninterrupted store.

Batch size 1, so every vector is computed alone in both runs and must match bit for bit.
"""

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

from scalselect.stores import load_representations, read_manifest, read_skipped
from store_files import assert_whole_files

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


DEMO_SAMPLES = 80  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def extract_argv(demo, out, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scalselect",
        "extract",
        *demo["inputs"],
        "--out",
        str(out),
        "--workers",
        "0",
        "--quiet",
        "--batch-size",
        "1",
        "--shard-rows",
        "4",
        "--device",
        "cpu",
        "--store-dtype",
        "float32",
        *extra,
    ]


@pytest.fixture(scope="module")
def whole(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "store"
    subprocess.run(extract_argv(demo, out), check=True, env=ENV, timeout=300, capture_output=True)
    return out


def committed(store: Path) -> int:
    return len(list(store.glob("shard-*.part.json")))


@pytest.mark.parametrize("when", ["loading the model", "after the first part", "half way"])
def test_sigkill_then_resume_gives_the_uninterrupted_store(demo, whole, tmp_path, when):
    out = tmp_path / "store"
    ready = {
        "loading the model": lambda: (out / "progress.json").exists(),
        "after the first part": lambda: committed(out) >= 1,
        "half way": lambda: committed(out) >= 10,
    }[when]
    job = subprocess.Popen(extract_argv(demo, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ready():
        assert job.poll() is None, "the extraction ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    assert_whole_files(out)

    proc = subprocess.run(extract_argv(demo, out, "--resume"), env=ENV, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ids, x = load_representations(out)
    want_ids, want = load_representations(whole)
    assert len(ids) == len(set(ids)) == 80
    got = dict(zip(ids, x))
    for sample_id, row in zip(want_ids, want):
        assert np.array_equal(got[sample_id], row), sample_id
    key = lambda skip: json.dumps(skip, sort_keys=True)  # noqa: E731
    assert sorted(map(key, read_skipped(out))) == sorted(map(key, read_skipped(whole)))
    assert read_manifest(out)["num_skipped"] == 2
    assert_whole_files(out)
