"""A full disk at any write: the job ends with one line and exit code 2, nothing corrupt is
committed, and `--resume` (or the same command again) then completes with a clean run's result.

Every output byte goes through `scalselect.atomic.write_bytes`; the tests make its k-th call fail,
for every k a clean run makes, in two ways: as a full disk does (ENOSPC), and silently (the
call reports the bytes written but stores half: what a lost buffered write looks like). A last
test fills a real file-size limit (RLIMIT_FSIZE) in a child process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoConfig

import scalselect.atomic as atomic
from scalselect.cli import main
from scalselect.stores import MANIFEST, PART, load_representations, read_skipped
from scalselect.stores.vector_store import read_part, verify_part
from store_files import assert_whole_files
from tolerances import assert_vectors_close, forward_rtol


DEMO_SAMPLES = 10  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def extract_argv(demo, out, *extra) -> list[str]:
    return [
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


@contextlib.contextmanager
def writes(fail_at: int | None = None, silent: bool = False):
    """Count the output writes; the fail_at-th (1-based) fails: ENOSPC, or silently half done."""
    calls = []
    real = atomic.write_bytes

    def write(fd, data):
        calls.append(len(data))
        if len(calls) != fail_at:
            return real(fd, data)
        if not silent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data[: len(data) // 2])
        return len(data)

    atomic.write_bytes = write
    try:
        yield calls
    finally:
        atomic.write_bytes = real


def run(argv, capsys, **fault) -> tuple[int, str]:
    capsys.readouterr()
    with writes(**fault):
        rc = main(argv)
    return rc, capsys.readouterr().err


def assert_nothing_corrupt(store: Path) -> None:
    """Every committed part matches its record; every file under a final name is whole."""
    if not store.exists():
        return
    for record in store.glob(f"*{PART}"):
        assert verify_part(store, read_part(store, record)) is None, record
    assert_whole_files(store)


def same_store(a: Path, b: Path, rtol: float = 0.0) -> None:
    """The same vectors and skips. rtol 0: bit for bit (batch size 1, and the same process and
    thread count, so the very same operations)."""
    ids_a, xa = load_representations(a)
    ids_b, xb = load_representations(b)
    got, want = dict(zip(ids_a, xa)), dict(zip(ids_b, xb))
    assert got.keys() == want.keys()
    for sample_id, row in want.items():
        assert_vectors_close(got[sample_id], row, rtol, str(sample_id))
    key = lambda skip: json.dumps(skip, sort_keys=True)  # noqa: E731
    assert sorted(map(key, read_skipped(a))) == sorted(map(key, read_skipped(b)))


@pytest.fixture(scope="module")
def clean(demo, tmp_path_factory):
    """A clean extraction and the number of writes it made."""
    out = tmp_path_factory.mktemp("clean") / "store"
    with writes() as calls:
        assert main(extract_argv(demo, out)) == 0
    return out, len(calls)


@pytest.mark.parametrize("silent", [False, True], ids=["disk full", "silent short write"])
def test_a_failed_write_during_extraction_is_one_line_and_resume_completes(demo, clean, tmp_path, capsys, silent):
    store, count = clean
    assert count >= 10  # progress, 3 parts of 4 files, skipped.jsonl, the manifest
    for k in range(1, count + 1):
        out = tmp_path / f"fail-at-{k}"
        rc, err = run(extract_argv(demo, out), capsys, fail_at=k, silent=silent)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (k, err)
        assert "cannot write" in lines[0] and ("No space left" in lines[0] or "bytes on disk" in lines[0]), lines
        assert not (out / MANIFEST).exists(), k
        assert_nothing_corrupt(out)
        rc, err = run(extract_argv(demo, out, "--resume"), capsys)
        assert rc == 0, (k, err)
        same_store(out, store)


@pytest.mark.parametrize("silent", [False, True], ids=["disk full", "silent short write"])
def test_a_failed_write_of_scores_or_subset_leaves_the_old_file_and_a_rerun_completes(demo, clean, tmp_path, capsys, silent):
    store, _ = clean
    score = ["score", str(store), "--out", str(tmp_path / "scores.jsonl"), "--quiet"]
    select = [
        "select",
        "--scores",
        str(tmp_path / "scores.jsonl"),
        "--data",
        str(demo["pool"]),
        "--budget",
        "4",
        "--out",
        str(tmp_path / "subset.json"),
    ]
    for argv, outputs in ((score, ["scores.jsonl", "scores.summary.json"]), (select, ["subset.json", "subset.selection.json"])):
        with writes() as calls:
            assert main(argv) == 0
        before = {name: (tmp_path / name).read_bytes() for name in outputs}
        for k in range(1, len(calls) + 1):
            rc, err = run(argv, capsys, fail_at=k, silent=silent)
            assert rc == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err, (argv[0], k, err)
            for name in outputs:  # each output is the old one or the new one, whole: the same bytes here
                assert (tmp_path / name).read_bytes() == before[name], (argv[0], k, name)
            assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
        assert main(argv) == 0


def _limited(limit: int):
    def preexec():  # SIGXFSZ is ignored by Python, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_real_file_size_limit_mid_part_is_one_line_and_resume_completes(demo, clean, tmp_path):
    """RLIMIT_FSIZE below one part's vectors file: the kernel refuses the write (EFBIG) while
    numpy's own stream would have kept the error in its buffer."""
    store, _ = clean
    out = tmp_path / "store"
    argv = [sys.executable, "-m", "scalselect", *extract_argv(demo, out, "--shard-rows", "8")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    four = np.load(store / "shard-00000.npy", mmap_mode="r")
    vectors = four.offset + 2 * four.nbytes  # the first part's file: 8 rows, not 4
    progress = len(atomic.json_text(json.loads((store / "manifest.json").read_text())["meta"]))
    limit = vectors - 100
    assert progress < limit  # the settings file fits; the first part's vectors do not
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_limited(limit))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0], proc.stderr
    assert_nothing_corrupt(out)
    assert not list(out.glob(f"*{PART}"))
    proc = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # another process with one thread: the forward's float32 sums run in another order
    same_store(out, store, forward_rtol(AutoConfig.from_pretrained(demo["model"], local_files_only=True)))


def test_numpy_arrays_and_archives_go_through_the_checked_path(tmp_path):
    """np.save and np.savez write to the checked file through .write: every byte is counted."""
    x = np.random.default_rng(0).standard_normal((300, 7))
    with writes() as calls:
        with atomic.atomic_open(tmp_path / "x.npy", "wb") as f:
            np.save(f, x, allow_pickle=False)
    assert sum(calls) == (tmp_path / "x.npy").stat().st_size == f.size
    assert atomic.file_check(tmp_path / "x.npy") == atomic.written(f)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)
    packed = io.BytesIO()
    np.savez(packed, a=x, b=x[:3])
    with atomic.atomic_open(tmp_path / "x.npz", "wb") as f:
        f.write(packed.getbuffer())
    with np.load(tmp_path / "x.npz") as z:
        np.testing.assert_array_equal(z["b"], x[:3])


def _two_parts(store: Path):
    from scalselect.stores import StoreWriter

    writer = StoreWriter(store, 4, "float32")
    rng = np.random.default_rng(0)
    writer.add(rng.standard_normal((3, 4)), ["a", "b", "c"])
    writer.add(rng.standard_normal((2, 4)), ["d", "e"])
    return writer


def test_a_part_that_fails_its_check_at_the_end_is_done_again_and_nothing_else_is_lost(tmp_path):
    """The manifest's scan finds part 0 changed: the job fails, both parts stay on disk, and a
    resume keeps part 1 and does part 0 again."""
    from scalselect import InputError
    from scalselect.stores import PROGRESS, StoreWriter

    store = tmp_path / "store"
    writer = _two_parts(store)
    ids = store / "shard-00000.ids.json"
    ids.write_bytes(ids.read_bytes().replace(b'"a"', b'"z"'))
    with pytest.raises(InputError, match="CRC-32"):
        writer.close(expected=5)
    writer.abandon()
    assert (store / PROGRESS).exists() and len(list(store.glob(f"*{PART}"))) == 2
    assert (store / "shard-00001.npy").exists()
    with pytest.warns(RuntimeWarning, match="part shard-00000 is corrupt"):
        again = StoreWriter(store, 4, "float32", resume=True)
    assert again.done_ids == {"d", "e"} and not (store / "shard-00000.npy").exists()


def test_a_part_that_cannot_be_read_is_not_removed(tmp_path, monkeypatch):
    """EIO (or EACCES) says nothing about the part: --resume stops with one line and removes nothing."""
    from scalselect import stores
    from scalselect.stores import vector_store

    store = tmp_path / "store"
    _two_parts(store).abandon()  # stops writing: the committed parts stay, unlocked
    before = sorted(p.name for p in store.iterdir())

    def failing(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(vector_store, "file_check", failing)
    with pytest.raises(stores.ReadFailure, match="Input/output error"):
        stores.StoreWriter(store, 4, "float32", resume=True)
    assert sorted(p.name for p in store.iterdir()) == before
