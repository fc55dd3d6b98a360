"""Training pools: read LLaVA / ShareGPT samples and write subsets back in the pool's own format.

A pool holds visual-instruction samples in one of the layouts of scalselect.data.layouts (LLaVA,
ShareGPT), stored as one JSON array or as JSONL (one JSON object per line), read here, or as Parquet or a
Hugging Face ``save_to_disk`` dataset with the images inside, read by rows in
scalselect.data.columnar. ``write_subset`` writes a chosen subset back verbatim, in pool order, in
the pool's own format. Every problem with the input is raised as ``InputError`` with a one-line
message naming the file and the place.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import operator
import os
import re
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_open, is_stream, json_text
from ..errors import InputError
from .columnar import PARQUET, SAVE_TO_DISK, columnar_kind, open_columnar
from .layouts import LAYOUTS
from .pool import Pool, check_unique_ids

__all__ = ["Pool", "read_pool", "write_subset"]

_FIRST_NON_WS = re.compile(r"[^ \t\r\n]")


class JsonPool(Pool):
    """A JSON array or JSONL file, parsed whole; `records` are the objects as parsed."""

    def __init__(self, path: Path, records: list[dict], ids: list, layout: str, container: str):
        self.path, self.records, self.ids, self.layout, self.container = path, records, ids, layout, container

    def record(self, pos: int) -> dict:
        return self.records[pos]

    def map(self, fn, positions) -> list:
        records = self.records
        return [fn(records[p]) for p in positions]

    def digest(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    def _write(self, order: list[int], out: Path) -> None:
        records = self.records
        with atomic_open(out, "w", encoding="utf-8") as f:
            if self.container == "jsonl":
                for pos in order:
                    f.write(json_text(records[pos]))
                    f.write("\n")
            elif not order:
                f.write("[]\n")
            else:
                f.write("[\n")
                f.write(",\n".join(json_text(records[pos]) for pos in order))
                f.write("\n]\n")


def read_pool(path: str | os.PathLike) -> Pool:
    """Read and validate a pool; raise ``InputError`` on anything wrong with it. A JSON or JSONL
    file is parsed whole; Parquet (a file or a folder of them) and save_to_disk folders are
    opened for reading by rows (see scalselect.data.columnar)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"pool {path}: no such file")
    if columnar_kind(path):
        return open_columnar(path)
    if path.is_dir():
        raise InputError(
            f"pool {path}: is a directory, but neither a save_to_disk dataset nor a folder of .parquet files; pass a pool file"
        )
    return _read_json_pool(path)


def _read_json_pool(path: Path) -> JsonPool:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"pool {path}: cannot read: {e.strerror or e}") from None

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"pool {path}: invalid UTF-8 at byte {e.start} (line {line}); pools must be UTF-8 text") from None
    del data

    m = _FIRST_NON_WS.search(text)  # (not text.lstrip(): that copies a possibly huge string)
    if m is None:
        raise InputError(f"pool {path}: file is empty")
    first = m.group()
    if first not in "[{":
        raise InputError(f"pool {path}: starts with {first!r}; expected a JSON array ('[') or JSONL (one '{{...}}' per line)")
    container = "json" if first == "[" else "jsonl"
    # Building millions of small dicts triggers repeated full GC passes for nothing (no cycles
    # are created); pausing the collector roughly halves parse time on large pools.
    with _gc_paused():
        if container == "json":
            records, lines = _parse_json_array(path, text), None
        else:
            records, lines = _parse_jsonl(path, text)
    del text

    if not records:
        raise InputError(f"pool {path} has no samples (empty JSON array)")

    layout = _check_layout(path, records, lines)
    ids = _collect_ids(path, records, lines)
    return JsonPool(path, records, ids, layout, container)


@contextlib.contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _where(index: int, lines: list[int] | None) -> str:
    return f"record {index}" if lines is None else f"record {index} (line {lines[index]})"


def _parse_json_array(path: Path, text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"pool {path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:  # an integer of thousands of digits
        raise InputError(f"pool {path}: {e}") from None
    except RecursionError:
        raise InputError(f"pool {path}: JSON nested too deeply") from None
    if not isinstance(value, list):  # cannot happen for text starting with '[', kept as a guard
        raise InputError(f"pool {path}: expected a JSON array of samples")
    return value


def _parse_jsonl(path: Path, text: str) -> tuple[list, list[int]]:
    records: list = []
    lines: list[int] = []  # 1-based file line of each record
    loads = json.loads
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            records.append(loads(line))
        except json.JSONDecodeError as e:
            if not records and _is_single_object(text):
                raise InputError(
                    f"pool {path}: is a single JSON object spanning several lines, not a pool; "
                    "expected a JSON array of samples or JSONL (one sample object per line)"
                ) from None
            raise InputError(
                f"pool {path}: malformed JSONL at line {lineno} column {e.colno}: {e.msg} "
                "(each line must hold one complete JSON object)"
            ) from None
        except ValueError as e:  # an integer of thousands of digits
            raise InputError(f"pool {path}, line {lineno}: {e}") from None
        except RecursionError:
            raise InputError(f"pool {path}: JSON nested too deeply at line {lineno}") from None
        lines.append(lineno)
    return records, lines


def _is_single_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _record_layout(record) -> str | None:
    """The one layout whose turns the record holds as a list, else None."""
    if not isinstance(record, dict):
        return None
    found = [name for name, layout in LAYOUTS.items() if isinstance(record.get(layout.turns), list)]
    return found[0] if len(found) == 1 else None


def _describe_bad_record(record) -> str:
    if not isinstance(record, dict):
        return f"is a JSON {_json_type(record)}, not an object"
    named = " and ".join(f"'{layout.turns}' ({layout.label})" for layout in LAYOUTS.values())
    if all(isinstance(record.get(layout.turns), list) for layout in LAYOUTS.values()):
        return f"has both {named}; cannot tell its layout"
    for layout in LAYOUTS.values():
        if layout.turns in record:
            return f"has '{layout.turns}' that is a JSON {_json_type(record[layout.turns])}, not a list"
    keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
    return f"has neither {named.replace(' and ', ' nor ')} list; unknown layout (keys: {keys})"


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_layout(path: Path, records: list, lines: list[int] | None) -> str:
    layout = _record_layout(records[0])
    if layout is None:
        raise InputError(f"pool {path}: {_where(0, lines)} {_describe_bad_record(records[0])}")
    key, other = LAYOUTS[layout].turns, LAYOUTS[layout].other().turns
    for i, rec in enumerate(records):
        # fast path: the common, well-formed record
        if type(rec) is dict and type(rec.get(key)) is list and other not in rec:
            continue
        got = _record_layout(rec)
        if got == layout:  # e.g. the other layout's key present but not a list
            continue
        if got is None:
            raise InputError(f"pool {path}: {_where(i, lines)} {_describe_bad_record(rec)}")
        raise InputError(f"pool {path}: {_where(i, lines)} is {got} layout but record 0 is {layout}; a pool must use one layout")
    return layout


def _collect_ids(path: Path, records: list, lines: list[int] | None) -> list:
    ids = []
    append = ids.append
    for i, rec in enumerate(records):
        if "id" not in rec:
            append(i)
            continue
        sample_id = rec["id"]
        t = type(sample_id)
        if t is not str and t is not int:
            raise InputError(
                f"pool {path}: {_where(i, lines)} has an 'id' that is a JSON {_json_type(sample_id)} "
                f"({json.dumps(sample_id)[:40]}); ids must be strings or integers"
            )
        append(sample_id)

    check_unique_ids(path, ids)
    return ids


def subset_name(pool_path: str | os.PathLike) -> str:
    """The file name `run` gives the subset of this pool: same format, same kind of suffix."""
    path = Path(pool_path)
    kind = columnar_kind(path) if path.exists() else None
    return {PARQUET: "subset.parquet", SAVE_TO_DISK: "subset"}.get(kind, f"subset{path.suffix or '.json'}")


def write_subset(pool: Pool, positions: Iterable[int], out_path: str | os.PathLike) -> int:
    """Write the pool's records at ``positions`` verbatim, in pool order, in the pool's format.

    Returns the number of records written. The file appears atomically.
    """
    out_path = Path(out_path)
    n = len(pool)
    chosen = set()
    for p in positions:
        if isinstance(p, bool):
            raise InputError(f"subset of {pool.path}: position {p!r} is not an integer")
        try:
            pos = operator.index(p)
        except TypeError:
            raise InputError(f"subset of {pool.path}: position {p!r} is not an integer") from None
        if not 0 <= pos < n:
            raise InputError(f"subset of {pool.path}: position {pos} out of range (pool has {n} samples)")
        if pos in chosen:
            raise InputError(f"subset of {pool.path}: position {pos} given more than once")
        chosen.add(pos)
    order = sorted(chosen)

    if is_stream(out_path) and not isinstance(pool, JsonPool):
        raise InputError(f"the subset of a {pool.container} pool cannot be written to a stream ({out_path}); name a file")
    pool_at, out_at = pool.path.resolve(), out_path.resolve()
    if _same_file(out_path, pool.path) or pool_at in out_at.parents or out_at in pool_at.parents:
        raise InputError(f"refusing to write subset to {out_path}: it is, holds or is inside the input pool {pool.path}")
    try:
        pool._write(order, out_path)
    except OSError as e:
        raise InputError(f"cannot write subset to {out_path}: {e.strerror or e}") from None
    return len(order)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
    except OSError:
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
