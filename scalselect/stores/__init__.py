"""Where the rows live: the N x D matrix that scoring reads, and what extraction writes to.

- `rows.py`: `RowSource`, N rows read in chunks, from arrays, tensors, `.npy` and `.npz` files;
- `vector_store.py`: the vector store (a directory of checked parts and a manifest), its
  `StoreWriter` and readers;
- `sketch_store.py`: the sketch store's format (`run --no-store`: a plan and y rows, no vectors);
- `files.py`: small files read and written with their recorded sizes and CRC-32s.

Formats: docs/design.md, section 3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..errors import InputError
from .rows import RowSource, check_ids, check_matrix, open_npy, open_npz, plain_id
from .vector_store import (
    LOCK,
    MANIFEST,
    PART,
    PROGRESS,
    SKIPPED,
    STORE_FORMAT,
    STORE_VERSION,
    ReadFailure,
    StoreWriter,
    check_same_settings,
    damaged_parts,
    lock_store,
    part_shards,
    read_manifest,
    read_sidecar,
    read_skipped,
    read_store,
    reopen_store,
    write_store,
)


class Sink(Protocol):
    """What extraction writes its parts to, whichever store it makes: a `StoreWriter` (the
    vectors), `scalselect.scoring.sketch.SketchSink` (a sketch store's y rows and sums), or the
    pipeline's in-memory pilot. A part is committed whole or not at all."""

    dim: int  # the width of the vectors it takes

    def add(self, vectors: np.ndarray, ids: Sequence, skipped: Sequence[dict] = ()) -> None: ...


def open_rows(data, sample_ids: Sequence | None = None) -> RowSource:
    """A RowSource for an array-like, a .npy / .npz file, or a store directory."""
    if isinstance(data, RowSource):
        src = RowSource(data.blocks, list(data.ids), data.description)
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if path.is_dir():
            src = read_store(path)
        elif path.suffix == ".npz":
            src = open_npz(path)
        elif path.suffix == ".npy":
            src = open_npy(path)
        else:
            raise InputError(f"{path}: not a representation store directory, .npy or .npz file")
    else:
        if not isinstance(data, torch.Tensor) and not hasattr(data, "shape"):
            data = np.asarray(data)
        check_matrix(tuple(data.shape), "input matrix")
        src = RowSource([data], list(range(int(data.shape[0]))), "array")
    if sample_ids is not None:
        src.ids = check_ids([plain_id(i) for i in sample_ids], src.num_rows, src.description)
    return src


def load_representations(data) -> tuple[list, np.ndarray]:
    """The sample ids and the vectors of a store (or any source open_rows takes) as one float32
    array, in row order."""
    source = open_rows(data)
    rows = [chunk.to(torch.float32).numpy() for _, chunk in source.chunks(65536)]
    return source.ids, np.concatenate(rows) if rows else np.zeros((0, source.dim), np.float32)


__all__ = [
    "LOCK",
    "MANIFEST",
    "PART",
    "PROGRESS",
    "SKIPPED",
    "STORE_FORMAT",
    "STORE_VERSION",
    "ReadFailure",
    "RowSource",
    "Sink",
    "StoreWriter",
    "check_ids",
    "check_same_settings",
    "damaged_parts",
    "load_representations",
    "lock_store",
    "open_rows",
    "part_shards",
    "read_manifest",
    "read_sidecar",
    "read_skipped",
    "read_store",
    "reopen_store",
    "write_store",
]
