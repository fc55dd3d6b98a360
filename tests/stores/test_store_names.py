"""The stores' API as scripts use it: every public name of the earlier `scalselect.store`
module is still there, and load_representations takes every row source open_rows takes."""

from __future__ import annotations

import numpy as np
import pytest

import scalselect.store as earlier
from scalselect import InputError, stores

EARLIER_NAMES = """STORE_FORMAT STORE_VERSION MANIFEST PROGRESS SKIPPED LOCK SIDECAR PART RowSource NpyFile check_ids
open_rows read_manifest part_shards read_store ReadFailure damaged_parts reopen_store StoreWriter lock_store
check_same_settings read_sidecar read_skipped load_representations write_store""".split()


def test_the_earlier_module_keeps_every_public_name():
    assert [name for name in EARLIER_NAMES if not hasattr(earlier, name)] == []
    assert earlier.read_store is stores.read_store and earlier.StoreWriter is stores.StoreWriter


def test_load_representations_reads_a_store_a_npy_file_and_an_npz_archive(tmp_path):
    x = np.random.default_rng(3).standard_normal((7, 5)).astype(np.float32)
    stores.write_store(tmp_path / "store", x, [f"s{i}" for i in range(7)], dtype="float32")
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", representations=x, sample_ids=np.array([f"s{i}" for i in range(7)]))
    for source, ids in [
        ("store", [f"s{i}" for i in range(7)]),
        ("x.npy", list(range(7))),
        ("x.npz", [f"s{i}" for i in range(7)]),
    ]:
        got_ids, got = stores.load_representations(tmp_path / source)
        assert got_ids == ids and np.array_equal(got, x), source
    with pytest.raises(InputError, match="no such file or directory"):
        stores.load_representations(tmp_path / "missing")
