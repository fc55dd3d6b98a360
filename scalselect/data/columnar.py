"""Parquet and Hugging Face `save_to_disk` pools: samples with their images inside, read by rows.

- Parquet: one .parquet file, or a folder of them (one pool, files in name order).
- save_to_disk: a folder with state.json and data-*.arrow files (Arrow IPC streams), as
  `datasets.Dataset.save_to_disk` writes it.

The columns follow the JSON layouts: LLaVA `id`, `image`, `conversations` (a list of
{from, value}), or ShareGPT `messages` (a list of {role, content}) and `images`. An image is
encoded bytes, a {"bytes", "path"} struct (the `datasets` Image feature), or a path under
--image-root; one per sample, or a list.

Nothing is read whole, so a pool larger than memory works. Opening reads the schema and the ids.
A record is read from the memory-mapped Arrow file, or from a Parquet row group going forward
(the extraction's workers ask for rising positions); Arrow decodes a Parquet row group's column
whole, so a reader holds up to one row group (a warning says when one passes 1 GiB). Scans of
fields read the columns without the image bytes. A subset is written back batch by batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from bisect import bisect_right
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, write_json
from ..errors import InputError
from .layouts import LAYOUTS
from .pool import Pool, check_unique_ids

PARQUET, SAVE_TO_DISK = "parquet", "save_to_disk"
_RECORD_ROWS = 64  # rows decoded at a time for whole records (images included)
_SCAN_ROWS = 4096  # rows per batch when scanning fields without the images
_GROUP_BYTES = 32 << 20  # a written row group holds about this much at most
_DIGEST_EDGE = 1 << 20  # bytes at each end of a data file that go into the pool's digest
BIG_ROW_GROUP = 1 << 30  # a Parquet row group this large (decoded) is worth a warning


def _arrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("Parquet and save_to_disk pools need pyarrow: pip install 'scalselect[arrow]'") from None
    return pyarrow


def columnar_kind(path: Path) -> str | None:
    """PARQUET or SAVE_TO_DISK when `path` is such a pool (by its name or its folder's files)."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return SAVE_TO_DISK
        return PARQUET if any(p.is_file() for p in path.glob("*.parquet")) else None
    if path.suffix.lower() == ".parquet":
        return PARQUET
    try:
        with open(path, "rb") as f:
            return PARQUET if f.read(4) == b"PAR1" else None
    except OSError:
        return None


def open_columnar(path: Path) -> "ColumnarPool":
    if columnar_kind(path) == SAVE_TO_DISK:
        return ArrowDatasetPool(path)
    return ParquetPool(path)


class ColumnarPool(Pool):
    """What Parquet and save_to_disk pools share. A pool is cut into pieces (Parquet row groups,
    Arrow record batches); `starts[i]` is piece i's first row, `starts[-1]` the row count."""

    group_rows = _SCAN_ROWS  # rows per batch of a written subset (at most)
    _pid = _cache = None  # the process that opened the files in _cache

    def __init__(self, path: Path, files: list[Path], schema, piece_rows: list[tuple[int, int, int]]):
        self.path, self.files, self.schema = path, files, schema
        self.pieces = [(f, i) for f, i, _ in piece_rows]
        self.starts = np.concatenate([[0], np.cumsum([n for _, _, n in piece_rows])]).astype(np.int64)
        if self.starts[-1] == 0:
            raise InputError(f"pool {path} has no samples")
        self.layout = self._layout()
        self._plan_light()
        self.ids = self._read_ids()
        check_unique_ids(path, self.ids)

    # -- what each format provides ---------------------------------------------------------
    def _read(self, piece: int, light: bool, columns: list[str] | None = None):
        """Piece `piece` as record batches in order: only `columns` if given; with `light`,
        as cheap as the format allows without the image bytes (then see _light_rows)."""
        raise NotImplementedError

    def _row(self, piece: int, row: int) -> dict:
        """Row `row` of piece `piece`, whole."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _reading(self):
        """Errors of the data files (corrupt pages, bad UTF-8, truncated files) as one line."""
        pa = _arrow()
        try:
            yield
        except InputError:
            raise
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise _arrow_error(self.path, exc) from None

    # -- schema ----------------------------------------------------------------------------
    def _layout(self) -> str:
        pa = _arrow()
        names = self.schema.names
        found = [name for name, layout in LAYOUTS.items() if layout.turns in names]
        if len(found) != 1:
            what = "both" if found else "neither"
            raise InputError(
                f"pool {self.path}: has {what} 'conversations' (LLaVA) {'and' if found else 'nor'} "
                f"'messages' (ShareGPT) column (columns: {', '.join(names[:10])})"
            )
        layout = found[0]
        turns = self.schema.field(LAYOUTS[layout].turns).type
        if not (pa.types.is_list(turns) or pa.types.is_large_list(turns)) or not pa.types.is_struct(turns.value_type):
            raise InputError(
                f"pool {self.path}: column '{LAYOUTS[layout].turns}' is {turns}; expected a list "
                "of turns (structs with from/value or role/content)"
            )
        self.image_column = LAYOUTS[layout].images
        return layout

    def _plan_light(self) -> None:
        """How a scan leaves the image bytes out: `_light_type` keeps only an image struct's path;
        images that are bare bytes (`_bare_bytes`) have no name to keep and become {"path": None}."""
        pa = _arrow()
        self._light_type, self._bare_bytes = None, False
        if self.image_column not in self.schema.names:
            return
        column = self.schema.field(self.image_column).type
        listed = self._listed = pa.types.is_list(column) or pa.types.is_large_list(column)
        item = column.value_type if listed else column
        if pa.types.is_string(item) or pa.types.is_large_string(item):
            return
        if pa.types.is_struct(item) and item.get_field_index("path") >= 0 and _image_struct(pa, item):
            path_type = pa.struct([item.field("path")])
            self._light_type = pa.list_(path_type) if listed else path_type
        elif pa.types.is_binary(item) or pa.types.is_large_binary(item) or _image_struct(pa, item):
            self._bare_bytes = True
        else:
            raise InputError(
                f"pool {self.path}: column '{self.image_column}' is {column}; expected image paths, "
                "encoded bytes or {bytes, path} structs (one per sample or a list)"
            )

    def _lighten(self, batch):
        """The batch without the image column's bytes (a cast of views: no bytes are read)."""
        column = self.image_column
        if column not in batch.schema.names:
            return batch
        if self._light_type is not None:
            i = batch.schema.get_field_index(column)
            return batch.set_column(i, column, batch.column(i).cast(self._light_type))
        return batch.drop_columns([column]) if self._bare_bytes else batch

    def _light_rows(self, batch) -> list[dict]:
        """The rows of a light batch (see _read) as dicts. Bare-byte images are not read at all:
        each row gets one {"path": None} in their place, whether the row holds no image or
        several (what scans ask of images is the first one's name, and bare bytes have none)."""
        with self._reading():
            rows = batch.to_pylist()
        if self._bare_bytes:
            for row in rows:
                row[self.image_column] = [{"path": None}] if self._listed else {"path": None}
        return rows

    def _read_ids(self) -> list:
        pa = _arrow()
        if "id" not in self.schema.names:
            return list(range(int(self.starts[-1])))
        kind = self.schema.field("id").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
            raise InputError(f"pool {self.path}: column 'id' is {kind}; ids must be strings or integers")
        ids: list = []
        with self._reading():
            for piece in range(len(self.pieces)):
                for batch in self._read(piece, light=True, columns=["id"]):
                    column = batch.column(0)
                    if column.null_count:
                        row = len(ids) + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                        raise InputError(f"pool {self.path}: record {row} has a null 'id'; ids must be strings or integers")
                    ids.extend(column.to_pylist())
        return ids

    # -- per process state (DataLoader workers fork) -----------------------------------------
    def _state(self) -> dict:
        """This process's open files. A forked worker opens its own; the parent's readers stay
        referenced, unused (their destructors would run Arrow code in the child)."""
        if self._pid != os.getpid():
            self._inherited, self._pid, self._cache = self._cache, os.getpid(), {}
        return self._cache

    def __getstate__(self):
        return {**self.__dict__, "_pid": None, "_cache": None, "_inherited": None}

    # -- Pool ------------------------------------------------------------------------------
    def _piece_of(self, pos: int) -> int:
        if not 0 <= pos < self.starts[-1]:
            raise IndexError(f"pool position {pos} out of range")
        return bisect_right(self.starts, pos, hi=len(self.pieces)) - 1

    def record(self, pos: int) -> dict:
        piece = self._piece_of(int(pos))
        with self._reading():
            return self._row(piece, int(pos - self.starts[piece]))

    def map(self, fn, positions) -> list:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        order = np.argsort(positions, kind="stable")
        out: list = [None] * len(positions)
        for lo, batch in self._chosen(positions[order], light=True):
            for k, row in enumerate(self._light_rows(batch)):
                out[order[lo + k]] = fn(row)
        return out

    def _chosen(self, rising: np.ndarray, light: bool):
        """(index into `rising` of the first row, batch of the rows) for the rows at the rising
        positions `rising`, reading only the pieces that hold them."""
        pa = _arrow()
        if len(rising) and not (0 <= rising[0] and rising[-1] < self.starts[-1]):
            raise IndexError("pool position out of range")
        pieces = np.searchsorted(self.starts, rising, side="right") - 1
        for piece in np.unique(pieces):
            first, end = int(self.starts[piece]), int(np.searchsorted(rising, self.starts[piece + 1]))
            with self._reading():
                for batch in self._read(int(piece), light):
                    lo, hi = np.searchsorted(rising, [first, first + batch.num_rows])
                    if hi > lo:
                        yield int(lo), batch.take(pa.array(rising[lo:hi] - first))
                    first += batch.num_rows
                    if hi >= end:
                        break

    def _subset_tables(self, order: list[int]):
        """The chosen rows, whole, as tables of at most `group_rows` rows or about _GROUP_BYTES
        (a Parquet row group each)."""
        pa = _arrow()
        pending, rows, size = [], 0, 0
        for _, batch in self._chosen(np.asarray(order, dtype=np.int64), light=False):
            pending.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if rows >= self.group_rows or size >= _GROUP_BYTES:
                yield pa.Table.from_batches(pending)
                pending, rows, size = [], 0, 0
        if pending:
            yield pa.Table.from_batches(pending)

    def digest(self) -> str:
        """sha256 of each data file's name, size and first and last MiB: hashing hundreds of GB
        of images on every start would cost more than it guards against."""
        digest = hashlib.sha256()
        for f in self.files:
            size = f.stat().st_size
            digest.update(f"{f.name}\0{size}\0".encode())
            with open(f, "rb") as fh:
                digest.update(fh.read(_DIGEST_EDGE))
                fh.seek(max(0, size - _DIGEST_EDGE))
                digest.update(fh.read(_DIGEST_EDGE))
        return digest.hexdigest()[:16]


def _image_struct(pa, item) -> bool:
    """A struct of the `datasets` Image kind: bytes (binary) and/or path (string) fields."""
    if not pa.types.is_struct(item):
        return False
    kinds = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    ok_bytes = "bytes" not in kinds or pa.types.is_binary(kinds["bytes"]) or pa.types.is_large_binary(kinds["bytes"])
    ok_path = "path" not in kinds or pa.types.is_string(kinds["path"]) or pa.types.is_large_string(kinds["path"])
    return ("bytes" in kinds or "path" in kinds) and ok_bytes and ok_path


def _leaf_count(pa, kind) -> int:
    """How many Parquet leaf columns an Arrow type becomes."""
    if pa.types.is_struct(kind):
        return sum(_leaf_count(pa, kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _leaf_count(pa, kind.key_type) + _leaf_count(pa, kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_count(pa, kind.value_type)
    return 1


def _arrow_error(path: Path, exc: Exception) -> InputError:
    return InputError(f"pool {path}: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


class ParquetPool(ColumnarPool):
    container = PARQUET

    def __init__(self, path: Path):
        pa = _arrow()
        files = sorted(p for p in path.glob("*.parquet") if p.is_file()) if path.is_dir() else [path]
        schema, pieces = None, []
        for i, f in enumerate(files):
            try:
                meta = pa.parquet.read_metadata(f)
                file_schema = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException) as exc:
                raise _arrow_error(f, exc) from None
            if schema is None:
                schema = file_schema
            elif not file_schema.equals(schema):
                raise InputError(
                    f"pool {path}: {f.name} has other columns than {files[0].name}; the files of one pool must share their schema"
                )
            pieces += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
            biggest = max((meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)), default=0)
            if biggest > BIG_ROW_GROUP:  # Arrow decodes a row group's column whole, whatever the batch size
                warnings.warn(
                    f"scalselect: {f.name} has row groups of {biggest / 2**30:.1f} GiB; every reader "
                    "(one per DataLoader worker) holds a whole row group in memory; rewrite it with "
                    "smaller ones, e.g. pyarrow.parquet.write_table(table, path, row_group_size=1000)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        leaves = iter(meta.schema.column(i).path for i in range(len(meta.schema)))
        # each top-level column's leaves, counted (a column's own name may hold dots)
        self._leaves = {field.name: [next(leaves) for _ in range(_leaf_count(pa, field.type))] for field in schema}
        super().__init__(path, files, schema, pieces)
        self.group_rows = max(1, max(n for _, _, n in pieces))
        self.block_rows = min(4096, max(64, self.group_rows))  # a row group read by one reader

    def _file(self, i: int):
        """File i, opened in this process; one at a time (a pool may hold thousands of files)."""
        state = self._state()
        if state.get("file", (None,))[0] != i:  # read through a 1 MiB buffer, not whole column chunks
            state["file"] = (i, _arrow().parquet.ParquetFile(self.files[i], pre_buffer=False, buffer_size=1 << 20))
        return state["file"][1]

    def _light_columns(self) -> list[str]:
        """The leaf columns a scan reads: all but the image column's bytes."""
        keep = []
        for name, leaves in self._leaves.items():
            if name != self.image_column or (self._light_type is None and not self._bare_bytes):
                keep += leaves
            elif self._light_type is not None:
                keep += [leaf for leaf in leaves if leaf.endswith(".path")]
        return keep

    def _read(self, piece: int, light: bool, columns: list[str] | None = None):
        f, group = self.pieces[piece]
        columns = columns or (self._light_columns() if light else None)
        yield from self._file(f).iter_batches(
            batch_size=_SCAN_ROWS if light else _RECORD_ROWS, row_groups=[group], columns=columns, use_threads=False
        )

    def _row(self, piece: int, row: int) -> dict:
        """Through a cursor that goes forward in the row group; a step back starts it again."""
        state = self._state()
        cursor = state.get("cursor")
        if cursor is None or cursor["piece"] != piece or row < cursor["start"]:
            cursor = state["cursor"] = {"piece": piece, "start": 0, "batch": None, "batches": self._read(piece, light=False)}
        while cursor["batch"] is None or row >= cursor["start"] + cursor["batch"].num_rows:
            if cursor["batch"] is not None:
                cursor["start"] += cursor["batch"].num_rows
            cursor["batch"] = next(cursor["batches"])
        return cursor["batch"].slice(row - cursor["start"], 1).to_pylist()[0]

    def _write(self, order: list[int], out: Path) -> None:
        pa = _arrow()
        if out.suffix.lower() in (".json", ".jsonl"):
            raise InputError(f"the subset of a Parquet pool is Parquet; name it .parquet, not {out.name}")
        if out.is_dir():
            raise InputError(f"cannot write subset to {out}: is a directory")
        with atomic_open(out, "wb") as f, pa.parquet.ParquetWriter(f, self.schema) as writer:
            for table in self._subset_tables(order):
                writer.write_table(table, row_group_size=table.num_rows)


class ArrowDatasetPool(ColumnarPool):
    container = SAVE_TO_DISK

    def __init__(self, path: Path):
        _arrow()  # a clear error when pyarrow is missing
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
            raise InputError(
                f"pool {path}: is a DatasetDict (splits: {', '.join(splits) or 'none'}); "
                f"pass one split's folder, e.g. {path / (splits[0] if splits else 'train')}"
            )
        try:
            self.state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            names = [entry["filename"] for entry in self.state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"pool {path}: state.json does not list the data files ({exc})") from None
        if not names or not all(isinstance(n, str) and n and Path(n).name == n and n != ".." for n in names):
            raise InputError(f"pool {path}: state.json must list data files by their names in the folder")
        self.path, self.files, schema, pieces = path, [path / n for n in names], None, []
        with self._reading():
            for i, f in enumerate(self.files):
                batches = self._batches(i)
                for batch in batches:  # offsets and UTF-8, once: a bad offset would crash a reader
                    batch.validate(full=True)
                file_schema = batches[0].schema if batches else self._stream(f).schema
                if schema is None:
                    schema = file_schema
                elif not file_schema.equals(schema):
                    raise InputError(
                        f"pool {path}: {f.name} has other columns than {self.files[0].name}; "
                        "the files of one dataset must share their schema"
                    )
                pieces += [(i, j, b.num_rows) for j, b in enumerate(batches)]
        super().__init__(path, self.files, schema, pieces)

    @staticmethod
    def _stream(f: Path):
        pa = _arrow()
        return pa.ipc.open_stream(pa.memory_map(str(f)))

    def _batches(self, i: int) -> list:
        """File i's record batches, memory-mapped: their bytes are read only when used."""
        batches = self._state().setdefault("batches", {})
        if i not in batches:
            batches[i] = list(self._stream(self.files[i]))
        return batches[i]

    def _read(self, piece: int, light: bool, columns: list[str] | None = None):
        f, j = self.pieces[piece]
        batch = self._batches(f)[j]
        if columns:
            batch = batch.select(columns)
        elif light:
            batch = self._lighten(batch)
        step = _SCAN_ROWS if light else _RECORD_ROWS  # slices are views: what is taken from one is copied
        for start in range(0, max(1, batch.num_rows), step):
            yield batch.slice(start, step)

    def _row(self, piece: int, row: int) -> dict:
        f, j = self.pieces[piece]
        return self._batches(f)[j].slice(row, 1).to_pylist()[0]

    def _write(self, order: list[int], out: Path) -> None:
        """A save_to_disk folder of one data file, beside `out` first, then renamed into place."""
        pa = _arrow()
        if out.suffix.lower() in (".json", ".jsonl", ".parquet"):
            raise InputError(
                f"the subset of a save_to_disk pool is a save_to_disk folder; name it without the {out.suffix} suffix"
            )
        if out.exists() and not (out / "state.json").is_file():
            raise InputError(f"cannot write subset to {out}: exists and is not a save_to_disk dataset")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            data = "data-00000-of-00001.arrow"
            with atomic_open(tmp / data, "wb") as f, pa.ipc.new_stream(f, self.schema) as writer:
                for table in self._subset_tables(order):
                    writer.write_table(table)
            if (self.path / "dataset_info.json").is_file():  # the features; the pool's sizes do not apply
                info = json.loads((self.path / "dataset_info.json").read_text(encoding="utf-8"))
                for key in ("splits", "download_checksums", "download_size", "dataset_size", "size_in_bytes"):
                    info.pop(key, None)
                write_json(tmp / "dataset_info.json", info, indent=2)
            chosen = hashlib.sha256(np.asarray(order, dtype=np.int64).tobytes()).hexdigest()
            state = {
                **self.state,
                "_data_files": [{"filename": data}],
                "_fingerprint": hashlib.sha256(f"{self.digest()}{chosen}".encode()).hexdigest()[:16],
            }
            write_json(tmp / "state.json", state, indent=2)
            _swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _swap_in(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`; a dataset already there is replaced (renamed aside, then
    removed), so `out` never holds a half-written dataset. (A crash between the two renames
    leaves the old one in .NAME.*.old beside it: folders cannot be swapped in one rename.)"""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)
