"""The bad-input corpus: every case and its outcome, in one place.

A problem with one sample of a pool is a recorded skip with its reason, while every good sample
is still extracted; a problem with a whole input is one line on stderr and exit code 2. The table
in docs/bad-input.md is rendered from SAMPLE_CASES and INPUT_CASES; a test keeps it current
(`PYTHONPATH=tests python tests/cli/test_bad_input_corpus.py > docs/bad-input.md` rewrites it).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from store_files import reseal

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


def turn(user, reply="A cat."):
    return [{"from": "human", "value": user}, {"from": "gpt", "value": reply}]


def ask(image):
    return {"image": image, "conversations": turn("<image>\nWhat is it?")}


# ------------------------------------------------------------------------ one sample of a pool


@dataclass
class SampleCase:
    name: str
    record: dict
    outcome: str  # a skip reason, or "kept"


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims a huge image: what a decompression bomb looks like to a reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_images(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = (rng.random((40, 50, 3)) * 255).astype("uint8")
    Image.fromarray(rgb).save(root / "ok.png")
    (root / "zero.png").write_bytes(b"")
    data = (root / "ok.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    jpeg = root / "ok.jpg"
    Image.fromarray(rgb).save(jpeg, quality=90)
    raw = bytearray(jpeg.read_bytes())
    raw[200:] = bytes(rng.integers(0, 256, len(raw) - 200, dtype=np.uint8))
    (root / "corrupt.jpg").write_bytes(bytes(raw))
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((rng.random((30, 30)) * 65535).astype("uint16")).save(root / "deep16.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray((rng.random((30, 30, 4)) * 255).astype("uint8"), "RGBA").save(root / "alpha.png")
    (root / "bomb.png").write_bytes(_png_claiming(20_000, 20_000))
    os.mkfifo(root / "fifo.png")  # opening it would wait for a writer forever
    (root / "folder.png").mkdir()
    (root.parent / "outside.png").write_bytes(data)


SAMPLE_CASES = [
    SampleCase("image file missing", ask("absent.png"), "unreadable image"),
    SampleCase("zero-byte image", ask("zero.png"), "unreadable image"),
    SampleCase("truncated image", ask("truncated.png"), "unreadable image"),
    SampleCase("a text file named .jpg", ask("text.jpg"), "unreadable image"),
    SampleCase("corrupt JPEG data", ask("corrupt.jpg"), "unreadable image"),
    SampleCase("image over the decompression-bomb limit (20,000 x 20,000)", ask("bomb.png"), "unreadable image"),
    SampleCase("CMYK JPEG", ask("cmyk.jpg"), "kept"),
    SampleCase("16-bit greyscale PNG", ask("deep16.png"), "kept"),
    SampleCase("palette PNG", ask("palette.png"), "kept"),
    SampleCase("PNG with alpha (composited on white)", ask("alpha.png"), "kept"),
    SampleCase("no image", {"conversations": turn("Hello?")}, "no image"),
    SampleCase("image path leaving --image-root", ask("../outside.png"), "image outside --image-root"),
    SampleCase("absolute image path", ask("/etc/hostname"), "image outside --image-root"),
    SampleCase("NUL byte in the image path", ask("a\u0000b.png"), "bad record"),
    SampleCase("image list holding a number", ask(["ok.png", 7]), "bad record"),
    SampleCase("no user turn", {"image": "ok.png", "conversations": [{"from": "gpt", "value": "A cat."}]}, "bad record"),
    SampleCase("no assistant turn", {"image": "ok.png", "conversations": turn("<image>\nWhat?")[:1]}, "bad record"),
    SampleCase("empty turn", {"image": "ok.png", "conversations": turn("<image>", "  ")}, "bad record"),
    SampleCase("non-string content", {"image": "ok.png", "conversations": turn("<image>\nWhat?", 42)}, "bad record"),
    SampleCase(
        "unknown role",
        {"image": "ok.png", "conversations": [{"from": "robot", "value": "hi"}] + turn("<image>\nWhat?")},
        "bad record",
    ),
    SampleCase("more <image> tags than images", {"image": "ok.png", "conversations": turn("<image> and <image>?")}, "bad record"),
    SampleCase(
        "fewer <image> tags than images",
        {"image": ["ok.png", "ok.png"], "conversations": turn("<image> only one tag")},
        "bad record",
    ),
    SampleCase(
        "vision tokens beyond --max-length (image after a 3,000-token turn)",
        {"image": "ok.png", "conversations": turn("cat " * 3000) + turn("<image>\nAnd this?")},
        "vision tokens cut by --max-length",
    ),
    SampleCase(
        "text beyond --max-length after the image (truncated)",
        {"image": "ok.png", "conversations": turn("<image>\nWhat?", "dog " * 3000)},
        "kept",
    ),
    SampleCase("image path naming a FIFO (a read that would never end)", ask("fifo.png"), "unreadable image"),
    SampleCase("image path naming a directory", ask("folder.png"), "unreadable image"),
    SampleCase(
        "a reply before any user turn",
        {"image": "ok.png", "conversations": [{"from": "gpt", "value": "Hello, I describe images."}] + turn("<image>\nWhat?")},
        "bad record",
    ),
    SampleCase(
        "text with a lone surrogate (legal in JSON, not in UTF-8)",
        {"image": "ok.png", "conversations": turn("<image>\nWhat is \ud800?")},
        "bad record",
    ),
    SampleCase(
        "two images, multi-turn",
        {"image": ["ok.png", "palette.png"], "conversations": turn("<image><image>Same?") + turn("Sure?")},
        "kept",
    ),
]


@dataclass
class EmbeddedCase:
    """One sample of a Parquet pool whose `image` column is the `datasets` Image struct."""

    name: str
    image: Callable  # images folder -> the {"bytes", "path"} value (or None)
    outcome: str
    null_turns: bool = False  # the conversations cell is null


EMBEDDED_CASES = [
    EmbeddedCase(
        "embedded bytes that are not an image", lambda root: {"bytes": b"GIF89a, no", "path": "x.gif"}, "unreadable image"
    ),
    EmbeddedCase(
        "embedded truncated PNG", lambda root: {"bytes": (root / "truncated.png").read_bytes(), "path": None}, "unreadable image"
    ),
    EmbeddedCase("embedded image struct with neither bytes nor path", lambda root: {"bytes": None, "path": None}, "bad record"),
    EmbeddedCase("embedded image without a path", lambda root: {"bytes": (root / "ok.png").read_bytes(), "path": None}, "kept"),
    EmbeddedCase(
        "image struct with a path only (read under --image-root)", lambda root: {"bytes": None, "path": "ok.png"}, "kept"
    ),
    EmbeddedCase(
        "image struct with a path only, file missing", lambda root: {"bytes": None, "path": "absent.png"}, "unreadable image"
    ),
    EmbeddedCase("null image cell, the turn has an <image> tag", lambda root: None, "bad record"),
    EmbeddedCase(
        "null conversations cell",
        lambda root: {"bytes": (root / "ok.png").read_bytes(), "path": None},
        "bad record",
        null_turns=True,
    ),
]


DEMO_SAMPLES = 50  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def _case_folder(tmp_path_factory, name: str):
    """A fresh folder and its images/ of every test image."""
    tmp = tmp_path_factory.mktemp(name)
    (tmp / "images").mkdir()
    write_images(tmp / "images")
    return tmp, tmp / "images"


def _outcome(store, i: int) -> tuple[str, dict | None]:
    """case-i's skip reason in the store ("kept" if it has a vector), and its skip record."""
    from scalselect.stores import read_skipped

    skip = {s["sample_id"]: s for s in read_skipped(store)}.get(f"case-{i}")
    return (skip["reason"] if skip else "kept"), skip


@pytest.fixture(scope="module")
def corpus_store(demo, tmp_path_factory):
    """One extraction of a pool holding every sample case plus 6 good samples."""
    from scalselect.pipeline import ExtractOptions, extract_store

    tmp, root = _case_folder(tmp_path_factory, "corpus")
    records = [{"id": f"case-{i}", **case.record} for i, case in enumerate(SAMPLE_CASES)]
    records += [{"id": f"good-{i}", **ask("ok.png")} for i in range(6)]
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    extract_store(
        demo["model"], pool, root, tmp / "store", ExtractOptions(workers=0, progress=False, max_length=2048, device="cpu")
    )
    return tmp / "store"


@pytest.fixture(scope="module")
def embedded_store(demo, tmp_path_factory):
    """One extraction of a Parquet pool holding every embedded case plus 3 good samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalselect.pipeline import ExtractOptions, extract_store

    tmp, root = _case_folder(tmp_path_factory, "embedded")
    good = EmbeddedCase("good", lambda root: {"bytes": (root / "ok.png").read_bytes(), "path": "ok.png"}, "kept")
    cases = EMBEDDED_CASES + [good] * 3
    table = pa.table(
        {
            "id": [f"case-{i}" for i in range(len(cases))],
            "image": pa.array([c.image(root) for c in cases], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "conversations": [None if c.null_turns else turn("<image>\nWhat is it?") for c in cases],
        }
    )
    pq.write_table(table, tmp / "pool.parquet", row_group_size=4)
    extract_store(
        demo["model"], tmp / "pool.parquet", root, tmp / "store", ExtractOptions(workers=0, progress=False, device="cpu")
    )
    return tmp / "store"


@pytest.mark.parametrize("i", range(len(EMBEDDED_CASES)), ids=[c.name for c in EMBEDDED_CASES])
def test_one_bad_sample_of_a_parquet_pool_is_a_recorded_skip(embedded_store, i):
    from scalselect.stores import load_representations

    got, skip = _outcome(embedded_store, i)
    assert got == EMBEDDED_CASES[i].outcome, skip
    assert (f"case-{i}" in load_representations(embedded_store)[0]) == (got == "kept")
    assert skip is None or skip["detail"]  # says exactly why


@pytest.mark.parametrize("i", range(len(SAMPLE_CASES)), ids=[c.name for c in SAMPLE_CASES])
def test_one_bad_sample_is_a_recorded_skip(corpus_store, i):
    got, skip = _outcome(corpus_store, i)
    assert got == SAMPLE_CASES[i].outcome, skip
    assert skip is None or skip["detail"]  # says exactly why


def test_every_good_sample_is_still_extracted(corpus_store):
    from scalselect.stores import load_representations, read_manifest

    ids, x = load_representations(corpus_store)
    kept = {f"case-{i}" for i, c in enumerate(SAMPLE_CASES) if c.outcome == "kept"}
    assert set(ids) == kept | {f"good-{i}" for i in range(6)}
    assert np.isfinite(x).all()
    manifest = read_manifest(corpus_store)
    assert manifest["num_skipped"] == sum(c.outcome != "kept" for c in SAMPLE_CASES)
    assert sum(manifest["skipped_by_reason"].values()) == manifest["num_skipped"]


# ------------------------------------------------------------------------ a whole input


@dataclass
class InputCase:
    name: str
    setup: Callable  # (tmp, demo) -> argv of the scalselect command
    message: str  # what the one line on stderr must say


def _pool(tmp: Path, text: str, name="pool.json") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _store(tmp: Path, rows=40, dim=8, name="store"):
    from scalselect.stores import write_store

    x = np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32)
    return write_store(tmp / name, x, [f"s{i}" for i in range(rows)], dtype="float32", shard_rows=16)


def _scores(tmp: Path, n=40) -> Path:
    from scalselect.scoring import leverage_scores
    from scalselect.select import write_scores

    res = leverage_scores(_store(tmp, n, name="for-scores"))
    write_scores(tmp / "scores.jsonl", res.sample_ids, res.scores)
    return tmp / "scores.jsonl"


def _select(tmp: Path, budget: str, n=40) -> list:
    pool = _pool(tmp, json.dumps([{"id": f"s{i}", **ask("ok.png")} for i in range(n)]))
    return ["select", "--scores", _scores(tmp, n), "--data", pool, "--budget", budget, "--out", tmp / "sub.json"]


def _extract(tmp: Path, demo, **change) -> list:
    args = {
        "--model": demo["model"],
        "--data": demo["pool"],
        "--image-root": demo["images"],
        "--out": tmp / "out-store",
        **change,
    }
    return ["extract", *[x for kv in args.items() for x in kv], "--quiet", "--workers", "0"]


def _wrong_width(tmp: Path) -> list:
    store = _store(tmp)
    np.save(store / "shard-00001.npy", np.ones((16, 9), np.float32))
    reseal(store)  # its manifest updated by hand too: the shape still tells
    return ["score", store, "--out", tmp / "s.jsonl"]


def _truncated_shard(tmp: Path) -> list:
    store = _store(tmp)
    shard = store / "shard-00000.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    return ["score", store, "--out", tmp / "s.jsonl"]


def _changed_shard(tmp: Path) -> list:
    store = _store(tmp)
    shard = store / "shard-00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x10  # one bit of one vector: a valid .npy still
    shard.write_bytes(bytes(raw))
    return ["score", store, "--out", tmp / "s.jsonl"]


def _other_pool_scores(tmp: Path) -> list:
    pool = _pool(tmp, json.dumps([{"id": f"x{i}", **ask("ok.png")} for i in range(40)]))
    return ["select", "--scores", _scores(tmp), "--data", pool, "--budget", "5", "--out", tmp / "sub.json"]


INPUT_CASES = [
    InputCase(
        "malformed JSON pool", lambda t, d: _select_pool(t, '[{"id": 1,\n  "image": }]'), "malformed JSON at line 2 column"
    ),
    InputCase(
        "JSONL pool with one bad line",
        lambda t, d: _select_pool(t, json.dumps({"id": 0, **ask("a")}) + "\n{oops\n", "pool.jsonl"),
        "malformed JSONL at line 2 column 2",
    ),
    InputCase("empty pool file", lambda t, d: _select_pool(t, ""), "file is empty"),
    InputCase("unknown record layout", lambda t, d: _select_pool(t, '[{"id": 1, "text": "hi"}]'), "unknown layout"),
    InputCase(
        "duplicate sample ids in the pool",
        lambda t, d: _select_pool(t, json.dumps([{"id": 1, **ask("a")}, {"id": 1, **ask("b")}])),
        "duplicated sample id(s): 1 at records 0, 1",
    ),
    InputCase(
        "Parquet pool without a conversations or messages column",
        lambda t, d: _parquet(t, id=["a"], text=["hi"]),
        "neither 'conversations' (LLaVA) nor 'messages'",
    ),
    InputCase(
        "Parquet pool whose conversations are JSON text",
        lambda t, d: _parquet(t, id=["a"], conversations=["[]"]),
        "column 'conversations' is string",
    ),
    InputCase(
        "Parquet pool with float ids",
        lambda t, d: _parquet(t, id=[1.5], conversations=[turn("q")]),
        "column 'id' is double; ids must be strings or integers",
    ),
    InputCase(
        "Parquet pool with a null id",
        lambda t, d: _parquet(t, id=["a", None], conversations=[turn("q")] * 2),
        "record 1 has a null 'id'",
    ),
    InputCase(
        "Parquet pool whose image column holds numbers",
        lambda t, d: _parquet(t, id=["a"], conversations=[turn("q")], image=[3]),
        "column 'image' is int64",
    ),
    InputCase(
        "a file named .parquet that is not Parquet",
        lambda t, d: _select_pool(t, "[]", "pool.parquet"),
        "pool.parquet: cannot read",
    ),
    InputCase(
        "a save_to_disk DatasetDict instead of one split",
        lambda t, d: _dataset_dict(t),
        "is a DatasetDict (splits: train); pass one split's folder",
    ),
    InputCase(
        "a Parquet pool's subset named .json", lambda t, d: _parquet_subset_as_json(t), "the subset of a Parquet pool is Parquet"
    ),
    InputCase("store shard with the wrong width", lambda t, d: _wrong_width(t), "does not match the manifest"),
    InputCase("truncated store shard", lambda t, d: _truncated_shard(t), "shard-00000.npy: 200 bytes, but the store recorded"),
    InputCase(
        "a store shard changed since it was written (one bit)",
        lambda t, d: _changed_shard(t),
        "shard-00001.npy: its bytes do not match the store's CRC-32",
    ),
    InputCase("scores file for another pool", lambda t, d: _other_pool_scores(t), "is the scores file for another pool?"),
    InputCase("budget 0", lambda t, d: _select(t, "0"), "must be at least 1"),
    InputCase("negative budget", lambda t, d: _select(t, "-5"), "must be at least 1"),
    InputCase("budget over N", lambda t, d: _select(t, "41"), "exceeds the 40 scored samples"),
    InputCase("budget 0%", lambda t, d: _select(t, "0%"), "a percentage must be in (0%, 100%]"),
    InputCase("budget 120%", lambda t, d: _select(t, "120%"), "a percentage must be in (0%, 100%]"),
    InputCase("malformed budget", lambda t, d: _select(t, "16 percent"), "expected a count like 100000"),
    InputCase(
        "checkpoint folder without config.json",
        lambda t, d: _extract(t, d, **{"--model": _empty_dir(t)}),
        "not a checkpoint directory",
    ),
    InputCase("image root that does not exist", lambda t, d: _extract(t, d, **{"--image-root": t / "nope"}), "no such directory"),
    InputCase(
        "resuming a store made with another model or settings", lambda t, d: _resume_other(t, d), "made with other settings"
    ),
    InputCase(
        "sketch size 0",
        lambda t, d: ["score", _store(t), "--out", t / "s.jsonl", "--method", "sketch", "--sketch-size", "0"],
        "--sketch-size must be at least 1",
    ),
    InputCase(
        "a pilot of one row",
        lambda t, d: ["score", _store(t), "--out", t / "s.jsonl", "--method", "sketch", "--pilot-rows", "1"],
        "--pilot-rows must be at least 2",
    ),
    InputCase(
        "run --no-store with --method exact", lambda t, d: _run_no_store(t, d, "--method", "exact"), "--no-store keeps no vectors"
    ),
    InputCase(
        "select --method cluster without --store",
        lambda t, d: _select(t, "5") + ["--method", "cluster"],
        "needs the vectors: pass --store",
    ),
    InputCase(
        "a share table that is not a table of numbers",
        lambda t, d: _select(t, "5") + ["--stratify-by", "image-folder", "--shares", _file(t, '["coco"]')],
        "expected a JSON object of source -> share >= 0",
    ),
    InputCase(
        "a share table naming no source with samples",
        lambda t, d: _select(t, "5") + ["--stratify-by", "image-folder", "--shares", _file(t, '{"nope": 1}')],
        "fewer than the budget",
    ),
    InputCase(
        "compare with an unknown method",
        lambda t, d: [
            "compare",
            "--store",
            _store(t),
            "--scores",
            _scores(t),
            "--data",
            t / "x.json",
            "--budget",
            "5",
            "--methods",
            "scalselect,best",
        ],
        "not 'best'",
    ),
    InputCase(
        "the exact engine on a sketch store (from run --no-store)",
        lambda t, d: ["score", _sketch_store(t, d), "--out", t / "s.jsonl", "--method", "exact"],
        "holds a sketch (run --no-store), not the vectors",
    ),
    InputCase(
        "an id of 5,000 digits in a pool",
        lambda t, d: _select_pool(t, '[{"id": ' + "1" * 5000 + ', "x": 1}]'),
        "Exceeds the limit (4300 digits)",
    ),
    InputCase(
        "an importance of 5,000 digits",
        lambda t, d: _scores_line(t, '{"sample_id": "s0", "importance": ' + "1" * 5000 + "}"),
        "line 1: expected",
    ),
    InputCase(
        "an importance too large for a float",
        lambda t, d: _scores_line(t, '{"sample_id": "s0", "importance": ' + "9" * 400 + "}"),
        "is too large",
    ),
    InputCase(
        "a share of 5,000 digits",
        lambda t, d: _select(t, "5") + ["--stratify-by", "image-folder", "--shares", _file(t, '{"coco": ' + "1" * 5000 + "}")],
        "not a readable JSON",
    ),
    InputCase(
        "a share too large for a float",
        lambda t, d: _select(t, "5") + ["--stratify-by", "image-folder", "--shares", _file(t, '{"coco": ' + "9" * 400 + "}")],
        "out of range",
    ),
    InputCase(
        "an infinite share",
        lambda t, d: _select(t, "5") + ["--stratify-by", "image-folder", "--shares", _file(t, '{"coco": Infinity}')],
        "share >= 0",
    ),
    InputCase(
        "a negative seed", lambda t, d: _select(t, "5") + ["--method", "random", "--seed", "-1"], "--seed must be at least 0"
    ),
    InputCase(
        "a seed beyond 2^63",
        lambda t, d: _select(t, "5") + ["--method", "random", "--seed", str(2**64)],
        "--seed must be at most",
    ),
    InputCase("compare --energy nan", lambda t, d: _compare(t, "--energy", "nan"), "--energy must be in (0, 1]"),
    InputCase("compare --energy 0", lambda t, d: _compare(t, "--energy", "0"), "--energy must be in (0, 1]"),
    InputCase("compare --energy 1.5", lambda t, d: _compare(t, "--energy", "1.5"), "--energy must be in (0, 1]"),
    InputCase(
        "compare with the store of another pool", lambda t, d: _compare(t, other_store=True), "have no vector in the store"
    ),
    InputCase("score --out .", lambda t, d: ["score", _store(t), "--out", "."], "names a directory"),
    InputCase("score --out /", lambda t, d: ["score", _store(t), "--out", "/"], "names a directory"),
    InputCase(
        "an output under a regular file", lambda t, d: ["score", _store(t), "--out", _file(t, "x") / "s.jsonl"], "cannot write"
    ),
    InputCase(
        "an output FIFO that nobody reads", lambda t, d: ["score", _store(t), "--out", _fifo(t)], "a FIFO that no process reads"
    ),
    InputCase(
        "a device torch knows but scalselect does not (meta)",
        lambda t, d: ["score", _store(t), "--out", t / "s.jsonl", "--device", "meta"],
        "expected auto, cpu, cuda",
    ),
    InputCase("a malformed CUDA device", lambda t, d: _extract(t, d, **{"--device": "cuda:x"}), "expected auto, cpu, cuda"),
    InputCase(
        "a checkpoint that is not a VLM (a text-only Llama)",
        lambda t, d: _extract(t, d, **{"--model": _llm(t)}),
        "is not an image-text model",
    ),
    InputCase(
        "100,000 DataLoader workers", lambda t, d: _extract(t, d) + ["--workers", "100000"], "--workers must be at most 256"
    ),
    InputCase(
        "a malformed option value",
        lambda t, d: ["score", _store(t), "--out", t / "s.jsonl", "--seed", "x"],
        "argument --seed: invalid int value",
    ),
]


def _scores_line(tmp: Path, line: str) -> list:
    (tmp / "scores.jsonl").write_text(line + "\n")
    pool = _pool(tmp, json.dumps([{"id": "s0", **ask("ok.png")}]))
    return ["select", "--scores", tmp / "scores.jsonl", "--data", pool, "--budget", "1", "--out", tmp / "sub.json"]


def _compare(tmp: Path, *extra, other_store: bool = False) -> list:
    pool = _pool(tmp, json.dumps([{"id": f"s{i}", **ask(f"src{i % 2}/ok.png")} for i in range(40)]))
    store = _store(tmp, name="other") if not other_store else _store_of(tmp, [f"x{i}" for i in range(40)])
    return [
        "compare",
        "--store",
        store,
        "--scores",
        _scores(tmp),
        "--data",
        pool,
        "--budget",
        "5",
        "--methods",
        "scalselect,random",
        *extra,
    ]


def _store_of(tmp: Path, ids: list) -> Path:
    from scalselect.stores import write_store

    x = np.random.default_rng(4).standard_normal((len(ids), 8)).astype(np.float32)
    return write_store(tmp / "other-store", x, ids, dtype="float32")


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "out.fifo")
    return tmp / "out.fifo"


def _llm(tmp: Path) -> Path:
    """A text-only causal LM checkpoint with the demo's tokenizer: no vision tower at all."""

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, vocab_size=300
    )
    LlamaForCausalLM(config).save_pretrained(tmp / "llm")
    return tmp / "llm"


def _file(tmp: Path, text: str) -> Path:
    (tmp / "shares.json").write_text(text)
    return tmp / "shares.json"


def _parquet(tmp: Path, **columns) -> list:
    """select on a Parquet pool of these columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), tmp / "pool.parquet")
    return ["select", "--scores", _scores(tmp), "--data", tmp / "pool.parquet", "--budget", "5", "--out", tmp / "sub.parquet"]


def _dataset_dict(tmp: Path) -> list:
    import datasets

    rows = {"id": ["a"], "conversations": [turn("<image>\nWhat?")]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp / "dd"))
    return ["select", "--scores", _scores(tmp), "--data", tmp / "dd", "--budget", "5", "--out", tmp / "sub"]


def _parquet_subset_as_json(tmp: Path) -> list:
    argv = _parquet(tmp, id=[f"s{i}" for i in range(40)], conversations=[turn("<image>\nWhat?")] * 40)
    return argv[:-1] + [tmp / "sub.json"]


def _run_no_store(tmp: Path, demo, *extra) -> list:
    return [
        "run",
        *demo["inputs"],
        "--budget",
        "5",
        "--out-dir",
        tmp / "run",
        "--no-store",
        "--quiet",
        "--workers",
        "0",
        *extra,
    ]


def _sketch_store(tmp: Path, demo) -> Path:
    from scalselect.cli import main

    assert main([str(a) for a in _run_no_store(tmp, demo)]) == 0
    return tmp / "run" / "sketch"


def _empty_dir(tmp: Path) -> Path:
    (tmp / "not-a-model").mkdir()
    return tmp / "not-a-model"


def _select_pool(tmp: Path, text: str, name="pool.json") -> list:
    pool = _pool(tmp, text, name)
    return ["select", "--scores", _scores(tmp), "--data", pool, "--budget", "5", "--out", tmp / "sub.json"]


def _resume_other(tmp: Path, demo) -> list:
    from scalselect.cli import main

    assert main([str(a) for a in _extract(tmp, demo, **{"--tau": "0.9"})]) == 0
    return _extract(tmp, demo, **{"--tau": "0.5"}) + ["--resume"]


@pytest.mark.parametrize("i", range(len(INPUT_CASES)), ids=[c.name for c in INPUT_CASES])
def test_a_bad_input_is_one_line_and_exit_2(demo, tmp_path, capsys, i):
    from scalselect.cli import main

    case = INPUT_CASES[i]
    argv = [str(a) for a in case.setup(tmp_path, demo)]
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.message in lines[0], lines[0]


# ------------------------------------------------------------------------ one vector of a matrix


def test_a_vector_with_nan_or_inf_is_left_out_and_reported(tmp_path, capsys):
    from scalselect.cli import main

    x = np.random.default_rng(2).standard_normal((30, 6))
    x[17, 2], x[4, 0] = np.nan, np.inf
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["score", str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.jsonl")]) == 0
    assert "left out 2 rows holding NaN or inf (4, 17)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["excluded_non_finite"] == 2 and summary["excluded_sample_ids"] == [4, 17]


def test_pool_samples_without_a_score_are_not_eligible_and_counted(tmp_path, capsys):
    """A scores file that misses some of the pool's ids (their samples were skipped at
    extraction, say): the others are selected, the missing ones counted, with a note."""
    from scalselect.cli import main

    argv = [str(a) for a in _select(tmp_path, "5", n=40)]
    pool = Path(argv[argv.index("--data") + 1])
    records = json.loads(pool.read_text())
    pool.write_text(json.dumps(records + [{"id": "unscored", **ask("ok.png")}]))
    capsys.readouterr()
    assert main(argv) == 0
    assert "note: 1 pool samples had no score and were not eligible" in capsys.readouterr().out
    summary = json.loads((tmp_path / "sub.selection.json").read_text())
    assert summary["unscored_in_pool"] == 1 and summary["selected"] == 5


# ------------------------------------------------------------------------ the docs table


def _outcome_rows(cases) -> list[str]:
    return [f"| {c.name} | {'extracted' if c.outcome == 'kept' else 'skipped: ' + c.outcome} |" for c in cases]


def render_table() -> str:
    rows = [
        "# Bad input: every case and what scalselect does with it",
        "",
        "Rendered from `tests/cli/test_bad_input_corpus.py`, which runs every case in CI.",
        'A problem with one sample is a skip: one line `{"sample_id", "reason", "detail"}` in the',
        "store's `skipped.jsonl`, counted in the manifest, while the other samples go on. A problem",
        "with a whole input is one line on stderr and exit code 2.",
        "",
        "## One sample of a pool",
        "",
        "| case | outcome |",
        "| --- | --- |",
    ]
    rows += _outcome_rows(SAMPLE_CASES)
    rows += ["", "## One sample of a Parquet or save_to_disk pool (images inside)", "", "| case | outcome |", "| --- | --- |"]
    rows += _outcome_rows(EMBEDDED_CASES)
    rows += [
        "",
        "## Noted, not refused",
        "",
        "| case | outcome |",
        "| --- | --- |",
        "| a vector holding NaN or inf | left out of the scoring (the others are scored as if it "
        "were not there), counted and named in `scores.summary.json`, a note on stdout |",
        "| pool samples missing from the scores file | not eligible; counted in "
        "`subset.selection.json` (`unscored_in_pool`), a note on stdout |",
        "| pool records without an `id` | addressed by their 0-based position in the pool |",
        "| ids with lone surrogates (legal JSON escapes, not UTF-8) | kept: written back as the same "
        "escapes, in the store, the scores and the subset (`tests/data/test_hostile_pools.py`) |",
        "| vectors of any magnitude (1e-40 to 1e100) | scored as usual: rows are multiplied by a power of two "
        "before their float32 products |",
        "| a full disk or a file-size limit at any write | one line, exit 2; no corrupt part is committed; "
        "`--resume` completes with a clean run's vectors (`tests/stores/test_full_disk.py`) |",
        "| a store part whose files changed after it was written | reading: one line naming the file; "
        "`extract --resume`: the part is done again |",
        "| `--out` a symlink | the file it names is written, atomically; the link stays |",
        "| `--out -`, `/dev/stdout`, a FIFO, `/dev/null` | written as a stream; messages go to stderr; no summary file |",
    ]
    rows += ["", "## A whole input", "", "| case | the error line says |", "| --- | --- |"]
    rows += [f"| {c.name} | `{c.message}` |" for c in INPUT_CASES]
    return "\n".join(rows) + "\n"


def test_the_docs_table_lists_every_case():
    assert DOCS.read_text() == render_table(), (
        "docs/bad-input.md is out of date: PYTHONPATH=tests python tests/cli/test_bad_input_corpus.py > docs/bad-input.md"
    )


if __name__ == "__main__":
    sys.stdout.write(render_table())
