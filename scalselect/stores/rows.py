"""Sources of the N x D matrix the scorer reads, read in chunks: numpy arrays and memmaps,
torch tensors, `.npy` files (read with plain file reads, checked against a store's record), and
the reference implementation's `all_representations.npz` (`representations`, `sample_ids`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from .files import check_crc, check_size


@dataclass
class RowSource:
    """N rows of width D, read in chunks; `ids` names each row (default: its index)."""

    blocks: list  # numpy arrays / memmaps / torch tensors, concatenated in order
    ids: list
    description: str

    @property
    def num_rows(self) -> int:
        return sum(int(b.shape[0]) for b in self.blocks)

    @property
    def dim(self) -> int:
        return int(self.blocks[0].shape[1]) if self.blocks else 0

    def chunks(self, chunk_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row index, chunk as a CPU tensor) pairs, at most chunk_rows rows each."""
        start = 0
        for block in self.blocks:
            if isinstance(block, NpyFile):
                yield from block.chunks(start, chunk_rows)
            else:
                for lo in range(0, int(block.shape[0]), chunk_rows):
                    yield start + lo, as_tensor(block[lo : lo + chunk_rows])
            start += int(block.shape[0])

    def take(self, rows: Sequence[int]) -> torch.Tensor:
        """The rows at these ascending indices, as one CPU tensor (a sample, not a pass)."""
        parts, start = [], 0
        rows = np.asarray(rows, dtype=np.int64)
        for block in self.blocks:
            count = int(block.shape[0])
            mine = rows[(rows >= start) & (rows < start + count)] - start
            if len(mine):
                if isinstance(block, NpyFile):
                    parts.append(block.take(mine))
                elif isinstance(block, torch.Tensor):
                    parts.append(block[torch.from_numpy(mine).to(block.device)].cpu())
                else:
                    parts.append(as_tensor(block[mine]))
            start += count
        return torch.cat([p.to(parts[0].dtype) for p in parts]) if parts else torch.zeros(0, self.dim)


@dataclass
class NpyFile:
    """A C-ordered 2-D .npy file read in chunks with plain file reads. (Pages touched through a
    memory map count in the process's resident memory: a pass over a 10 GB store would show as
    10 GB.) With `check` (a store's record of the file), a pass verifies its CRC-32 as it reads."""

    path: Path
    offset: int  # where the data starts, after the header
    shape: tuple
    dtype: np.dtype
    check: dict | None = None

    @classmethod
    def open(cls, path: Path, check: dict | None = None):
        """An NpyFile, or the array itself when it is not a C-ordered numeric matrix."""
        if check is not None:
            check_size(path, check)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # parses and checks the header
        except Exception as exc:  # a corrupt header raises ValueError, SyntaxError, TokenError, ...
            raise InputError(f"{path}: not a readable .npy array ({exc or 'empty file'})") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{path}: holds an .npz archive, not one .npy array")
        if arr.ndim != 2 or arr.dtype.kind not in "fiu" or not arr.flags.c_contiguous:
            return arr  # the callers' checks name what is wrong, or read it whole
        return cls(Path(path), int(arr.offset), tuple(arr.shape), arr.dtype, check)

    def chunks(self, start: int, chunk_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        rows, dim = self.shape
        row_bytes = dim * self.dtype.itemsize
        with open(self.path, "rb") as f:
            crc = zlib.crc32(f.read(self.offset))  # the header, then every row as it is read
            for lo in range(0, rows, chunk_rows):
                count = min(chunk_rows, rows - lo)
                f.seek(self.offset + lo * row_bytes)
                arr = np.fromfile(f, dtype=self.dtype, count=count * dim)
                if arr.size != count * dim:
                    raise InputError(f"{self.path}: file is shorter than its header says (truncated?)")
                crc = zlib.crc32(arr.data, crc)
                if lo + count == rows:  # before the last rows are used
                    check_crc(self.path, self.check, crc)
                yield start + lo, as_tensor(arr.reshape(count, dim))
            if rows == 0:
                check_crc(self.path, self.check, crc)

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The rows at these ascending indices, one read each (sizes checked, not the CRC: that
        takes a pass)."""
        dim = self.shape[1]
        row_bytes = dim * self.dtype.itemsize
        out = np.empty((len(rows), dim), dtype=self.dtype)
        with open(self.path, "rb") as f:
            for slot, row in enumerate(rows):
                f.seek(self.offset + int(row) * row_bytes)
                arr = np.fromfile(f, dtype=self.dtype, count=dim)
                if arr.size != dim:
                    raise InputError(f"{self.path}: file is shorter than its header says (truncated?)")
                out[slot] = arr
        return as_tensor(out)


def as_tensor(part) -> torch.Tensor:
    if isinstance(part, torch.Tensor):
        return part
    arr = np.asarray(part)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"representations must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind in "iu" or arr.dtype.itemsize > 8:  # integers, long double: as float64
        arr = arr.astype(np.float64)
    elif not arr.dtype.isnative:  # big-endian files
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.array(arr, order="C")  # reads a memmap slice into memory
    return torch.from_numpy(arr)


def check_matrix(shape: Sequence[int], what: str) -> None:
    if len(shape) != 2:
        raise InputError(f"{what}: expected a 2-D matrix (samples x dim), got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{what}: the matrix is empty (shape {tuple(shape)})")


def check_ids(ids: list, n: int, what: str) -> list:
    if len(ids) != n:
        raise InputError(f"{what}: {len(ids)} sample ids for {n} rows")
    seen: set = set()
    dupes = []
    for i in ids:
        if not isinstance(i, (str, int)) or isinstance(i, bool):
            raise InputError(f"{what}: sample id {i!r} is not a string or an integer")
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:5])
        raise InputError(f"{what}: {len(dupes)} duplicate sample ids, e.g. {shown}")
    return ids


def plain_id(i):
    """numpy scalars -> Python str / int, so ids serialise to JSON unchanged."""
    return i.item() if isinstance(i, np.generic) else i


def open_npy(path: Path) -> RowSource:
    arr = NpyFile.open(path)
    check_matrix(arr.shape, str(path))
    return RowSource([arr], list(range(arr.shape[0])), str(path))


def open_npz(path: Path) -> RowSource:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "representations" not in z.files:
                raise InputError(f"{path}: no 'representations' array (has: {', '.join(z.files)})")
            reps = z["representations"]
            ids = z["sample_ids"] if "sample_ids" in z.files else None
    except InputError:
        raise
    except Exception as exc:  # corrupt archives and headers raise many kinds
        raise InputError(f"{path}: not a readable .npz archive without pickled objects ({exc or 'empty file'})") from None
    check_matrix(reps.shape, str(path))
    if ids is not None and ids.ndim != 1:
        raise InputError(f"{path}: sample_ids must be a 1-D array, got shape {ids.shape}")
    ids = list(range(reps.shape[0])) if ids is None else [plain_id(i) for i in ids.tolist()]
    return RowSource([reps], check_ids(ids, reps.shape[0], str(path)), str(path))
