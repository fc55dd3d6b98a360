"""Property-based fuzzing of the readers: whatever bytes a pool, a scores file or a
store holds, reading gives a result or the project's own InputError, never another exception."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalselect import InputError, read_pool, read_scores
from scalselect.data.conversations import to_messages
from scalselect.stores import open_rows, read_store, write_store

# 150 examples each in CI; SCALSELECT_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("SCALSELECT_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON values shaped like pool records: the right keys often, odd values everywhere.
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**20),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["<image>", "human", "gpt", "user", "assistant", "system", "a.png", ""]),
)
_keys = st.sampled_from(["id", "image", "images", "conversations", "messages", "from", "value", "role", "content", "x"])
_json = st.recursive(
    _leaf, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25
)


def _read(reader, data: bytes, name: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return reader(path)
        except InputError:
            return None


@FUZZ
@given(st.lists(_json, max_size=5), st.sampled_from(["array", "jsonl"]))
def test_pool_reader_on_random_records(records, container):
    data = json.dumps(records) if container == "array" else "\n".join(json.dumps(r) for r in records)
    pool = _read(read_pool, data.encode(), "pool.json" if container == "array" else "pool.jsonl")
    if pool is not None:
        for record in pool.records:  # a record the reader accepts gets messages or a reason
            try:
                to_messages(record, pool.layout)
            except InputError:
                pass


_VALID_POOL = json.dumps(
    [
        {
            "id": i,
            "image": f"{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
        }
        for i in range(3)
    ]
).encode()


@FUZZ
@given(st.data())
def test_pool_reader_on_mutated_bytes(data):
    raw = bytearray(_VALID_POOL)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 20))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    _read(read_pool, bytes(raw), "pool.json")


@FUZZ
@given(st.lists(st.one_of(_json, st.fixed_dictionaries({"sample_id": _leaf, "importance": _leaf})), max_size=6))
def test_scores_reader_on_random_lines(lines):
    _read(read_scores, "\n".join(json.dumps(x) for x in lines).encode(), "scores.jsonl")


def _store_dir(tmp: Path) -> Path:
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    return write_store(tmp / "store", x, [f"s{i}" for i in range(12)], dtype="float32", shard_rows=5)


@FUZZ
@given(st.data())
def test_store_reader_on_mutated_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        store = _store_dir(Path(tmp))
        files = sorted(p.name for p in store.iterdir())
        for _ in range(data.draw(st.integers(1, 3))):
            target = store / data.draw(st.sampled_from(files))
            raw = bytearray(target.read_bytes())
            how = data.draw(st.sampled_from(["cut", "flip", "json"]))
            if how == "cut":
                raw = raw[: data.draw(st.integers(0, len(raw)))]
            elif how == "flip" and raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
            else:
                raw = bytearray(json.dumps(data.draw(_json)).encode())
            target.write_bytes(bytes(raw))
        try:
            source = read_store(store)
            for _, chunk in source.chunks(4):  # reading every row must hold too
                assert chunk.shape[1] == source.dim
        except InputError:
            pass


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["x.npy", "x.npz"]))
def test_matrix_files_of_random_bytes(raw, name):
    def read(path):
        source = open_rows(path)
        return [chunk for _, chunk in source.chunks(7)]

    _read(read, (b"\x93NUMPY" + raw) if name.endswith(".npy") and raw[:1] == b"\x01" else raw, name)
