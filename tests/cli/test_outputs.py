"""Outputs go where the user meant: through a symlink to the file it names (still atomic there),
`-` and character devices and FIFOs as plain streams, with the command's messages kept out of
the stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from scalselect.cli import main
from scalselect.stores import write_store


@pytest.fixture
def store(tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32) + 1
    return write_store(tmp_path / "store", x, [f"s{i}" for i in range(30)], dtype="float32", shard_rows=10)


@pytest.fixture
def pool(tmp_path):
    records = [
        {
            "id": f"s{i}",
            "image": f"a/{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
        }
        for i in range(30)
    ]
    (tmp_path / "pool.json").write_text(json.dumps(records))
    return tmp_path / "pool.json"


def lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_symlink_output_writes_the_file_it_names_and_stays_a_link(store, tmp_path, capsys):
    target = tmp_path / "elsewhere" / "scores.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "scores.jsonl"
    link.symlink_to(target)
    assert main(["score", str(store), "--out", str(link), "--quiet"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(lines(target.read_text())) == 30
    assert not list(target.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    dangling = tmp_path / "new.jsonl"
    dangling.symlink_to(tmp_path / "made" / "new.jsonl")  # names a file not there yet
    assert main(["score", str(store), "--out", str(dangling), "--quiet"]) == 0
    assert dangling.is_symlink() and len(lines((tmp_path / "made" / "new.jsonl").read_text())) == 30


def test_dash_writes_scores_to_stdout_and_messages_to_stderr(store, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scalselect", "score", str(store), "--out", "-", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    scores = lines(proc.stdout)  # nothing but the scores
    assert len(scores) == 30 and {"sample_id", "importance"} == set(scores[0])
    assert "scored 30 samples" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no summary file beside a stream


def test_select_to_stdout_and_to_dev_stdout(store, pool, tmp_path):
    assert main(["score", str(store), "--out", str(tmp_path / "scores.jsonl"), "--quiet"]) == 0
    for out in ("-", "/dev/stdout"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "scalselect",
                "select",
                "--scores",
                str(tmp_path / "scores.jsonl"),
                "--data",
                str(pool),
                "--budget",
                "5",
                "--out",
                out,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        subset = json.loads(proc.stdout)
        assert len(subset) == 5 and "selected 5 of 30" in proc.stderr
    assert os.path.islink("/dev/stdout") or os.path.exists("/dev/stdout")  # left as it was


def test_a_character_device_and_a_fifo_are_written_as_streams(store, tmp_path, capsys):
    assert main(["score", str(store), "--out", "/dev/null", "--quiet"]) == 0
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    try:
        for _ in range(100):  # the reader has opened its end once the open below would not fail
            rc = main(["score", str(store), "--out", str(fifo), "--quiet"])
            if rc == 0:
                break
            assert "a FIFO that no process reads" in capsys.readouterr().err
            threading.Event().wait(0.05)
    finally:
        reader.join(timeout=30)
    assert rc == 0 and len(lines(got[0])) == 30
    assert fifo.is_fifo()


def test_a_columnar_subset_cannot_be_a_stream(store, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(30)], "conversations": [turns] * 30}), tmp_path / "pool.parquet")
    assert main(["score", str(store), "--out", str(tmp_path / "scores.jsonl"), "--quiet"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "select",
                "--scores",
                str(tmp_path / "scores.jsonl"),
                "--data",
                str(tmp_path / "pool.parquet"),
                "--budget",
                "5",
                "--out",
                "-",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot be written to a stream" in err


def test_dev_stdout_opened_for_appending_is_appended_to(store, tmp_path):
    """`>> log` then --out /dev/stdout: the scores are appended to the log, nothing replaces it."""
    log = tmp_path / "log.txt"
    log.write_text("before\n")
    with open(log, "a") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "scalselect", "score", str(store), "--out", "/dev/stdout", "--quiet"],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    text = log.read_text().splitlines()
    assert text[0] == "before" and len(lines("\n".join(text[1:]))) == 30


def test_an_output_through_a_symlink_loop_is_one_line(store, tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert main(["score", str(store), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "symlinks form a loop" in err
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch, capsys):
    """argparse would turn "" into Path("") == ".": the report would land in the current folder."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32))
    for argv in (
        ["score", "x.npy", "--out", ""],
        ["report", "--store", "", "--scores", "s.jsonl", "--out", "r"],
        ["report", "--store", "x", "--scores", "s.jsonl", "--out", ""],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "an empty path" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
