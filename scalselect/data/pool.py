"""The interface every pool implements, whatever its file format (scalselect.data.pools for
JSON and JSONL, scalselect.data.columnar for Parquet and save_to_disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import InputError


class Pool:
    """A pool of samples: `ids[i]` is sample i's id as stored (its 0-based position when it has
    none); `layout` is "llava" or "sharegpt"; `container` names the file format."""

    path: Path
    ids: list
    layout: str
    container: str
    block_rows: int = 64  # rows worth reading together: extraction deals the pool out in such blocks
    _index: dict | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict:
        """Map sample id -> position in the pool (built on first use, then cached)."""
        if self._index is None:
            self._index = {sample_id: pos for pos, sample_id in enumerate(self.ids)}
        return self._index

    def record(self, pos: int) -> dict:
        """The whole record at `pos`, images included."""
        raise NotImplementedError

    def map(self, fn: Callable[[dict], object], positions) -> list:
        """fn(record) for the records at `positions`, in that order. The records may lack their
        embedded image bytes (image paths stay): for reading conversations and fields."""
        raise NotImplementedError

    def digest(self) -> str:
        """A short hex digest of the pool's files, kept in a store's manifest."""
        raise NotImplementedError

    def _write(self, order: list[int], out: Path) -> None:
        raise NotImplementedError


def check_unique_ids(path: Path, ids: list) -> None:
    """Raise InputError naming the duplicated ids, if any."""
    if len(set(ids)) == len(ids):
        return
    seen: dict = {}
    dups: dict = {}  # id -> positions, in order of first duplication
    for pos, sample_id in enumerate(ids):
        if sample_id in seen:
            dups.setdefault(sample_id, [seen[sample_id]]).append(pos)
        else:
            seen[sample_id] = pos
    shown = "; ".join(
        f"{sample_id!r} at records {', '.join(map(str, positions[:3]))}" + (", ..." if len(positions) > 3 else "")
        for sample_id, positions in list(dups.items())[:5]
    )
    more = f" (and {len(dups) - 5} more)" if len(dups) > 5 else ""
    raise InputError(
        f"pool {path}: {len(dups)} duplicated sample id(s): {shown}{more} (records without an 'id' use their 0-based index as id)"
    )
