"""The vector store: what extraction writes and scoring reads, one directory:

    manifest.json               {"format": "scalselect-store", "version": 2, "dim": D,
                                 "dtype": "float16", "num_rows": N,
                                 "shards": [{"vectors": "shard-00000.npy",
                                             "ids": "shard-00000.ids.json",
                                             "skipped": "shard-00000.skipped.jsonl", "rows": n0,
                                             "check": {FILE: {"bytes": ..., "crc32": ...}}}, ...],
                                 "meta": {...}}           (free-form: model, settings, ...)
    shard-00000.npy             n0 x D array (plain .npy, never pickled)
    shard-00000.ids.json        JSON list of the n0 sample ids (str or int, exactly as in the pool)
    shard-00000.skipped.jsonl   the samples skipped while making the part, with their reasons
    shard-00000.part.json       the part's commit record: its manifest entry

Rows are in shard order. Every file is written atomically (scalselect.atomic), a part's
record last: it commits the part and holds the size and CRC-32 of each of its files, which the
readers check (sizes when a store is opened, the bytes as they are read, everything on
--resume, where a part that fails is done again). The manifest comes last of all, so a store
with a manifest is complete. Version 1 stores (no checks) are still read.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_open, file_check, write_json, written
from ..distributed import Comm
from ..errors import InputError
from .files import ReadFailure, read_checked, read_json_list, read_jsonl, read_text, unreadable, write_jsonl
from .rows import NpyFile, RowSource, check_ids, plain_id

STORE_FORMAT = "scalselect-store"
STORE_VERSION = 2
_READS = (1, 2)  # version 1: the same, without the parts' checks
MANIFEST = "manifest.json"
PROGRESS = "progress.json"  # an unfinished store: its settings, for --resume
SKIPPED = "skipped.jsonl"
LOCK = ".lock"  # held by the one process writing the store
SIDECAR = ".sidecar.npz"  # a part's extra arrays (StoreWriter.add), beside its vectors
PART = ".part.json"  # a part's commit record, written last
_PART_FILES = (".npy", ".ids.json", ".skipped.jsonl", SIDECAR)
_STORE_DTYPES = ("float16", "bfloat16", "float32", "float64")


def read_manifest(store: str | os.PathLike) -> dict:
    path = Path(store) / MANIFEST
    if not path.is_file():
        if (Path(store) / PROGRESS).is_file():
            raise InputError(
                f"{store}: an unfinished extraction (no {MANIFEST} yet); finish it with `scalselect extract ... --resume`"
            )
        raise InputError(f"{store}: not a representation store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise InputError(f"{path}: not a {STORE_FORMAT} manifest")
    if manifest.get("version") not in _READS:
        raise InputError(
            f"{path}: store version {manifest.get('version')!r} is not supported "
            f"(this scalselect reads versions {', '.join(map(str, _READS))})"
        )
    return manifest


def part_shards(num_shards: int, part: tuple[int, int] | None = None) -> range:
    """Manifest indices of the shards that part (rank, world) of a store reads: every world-th
    shard from `rank` on (rank r of a world of w takes shards r, r + w, r + 2w, ...). All of
    them without a part. The one rule for splitting a store between processes."""
    if part is None:
        return range(num_shards)
    rank, world = part
    if not 0 <= rank < world:
        raise ValueError(f"part must be (rank, world) with 0 <= rank < world, got {part!r}")
    return range(rank, num_shards, world)


def read_store(store: str | os.PathLike, part: tuple[int, int] | None = None) -> RowSource:
    """Open a store's shards for chunked reading, checking them against the manifest (their
    sizes and ids now, the vectors' CRC-32 as a pass reads them).

    part=(rank, world): only the shards `part_shards` gives that rank, in manifest order (the
    other shards' files are not opened; their ids are not checked against these). Such a part
    may hold no rows at all; the store as a whole may not."""
    store = Path(store)
    manifest = read_manifest(store)
    dim = manifest.get("dim")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not isinstance(dim, int) or isinstance(dim, bool):
        raise InputError(f"{store}/{MANIFEST}: corrupt manifest ('shards' must be a list, 'dim' an integer)")
    for entry in shards:  # every entry well-formed, so that the rows add up
        _check_entry(store, entry)
    total = sum(entry["rows"] for entry in shards)
    if total != manifest.get("num_rows"):
        raise InputError(f"{store}: shards hold {total} rows, manifest says {manifest.get('num_rows')}")
    if not total:
        raise InputError(f"{store}: the store holds no vectors")
    blocks, ids = [], []
    for entry in (shards[i] for i in part_shards(len(shards), part)):
        arr, shard_ids = _open_shard(store, entry, dim)
        if arr.shape[0]:
            blocks.append(arr)
        ids.extend(shard_ids)
    what = str(store) if part is None else f"{store} (shards {part[0]}::{part[1]})"
    return RowSource(blocks, check_ids(ids, len(ids), what), what)


def _check_entry(store: Path, entry) -> None:
    """A manifest's (or part record's) shard entry: plain file names inside the store, a row
    count, and for version 2 each file's {"bytes", "crc32"}."""
    bad = InputError(f"{store}: corrupt shard entry {str(entry)[:200]}")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("vectors", "ids")):
        raise bad
    rows = entry.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise bad
    names = [entry[k] for k in ("vectors", "ids", "skipped", "sidecar") if k in entry]
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise InputError(f"{store}: shard file {name!r} is not a plain file name")
    check = entry.get("check")
    if check is None:
        return
    if (
        not isinstance(check, dict)
        or set(check) != set(names)
        or not all(
            isinstance(c, dict)
            and isinstance(c.get("bytes"), int)
            and not isinstance(c.get("bytes"), bool)
            and isinstance(c.get("crc32"), str)
            for c in check.values()
        )
    ):
        raise bad


def _open_shard(store: Path, entry: dict, dim: int) -> tuple:
    """A checked entry's vectors (for reading) and ids, with the sizes and ids' CRC checked."""
    check = entry.get("check") or {}
    vec_path = store / entry["vectors"]
    arr = NpyFile.open(vec_path, check.get(entry["vectors"]))
    if len(arr.shape) != 2 or arr.shape[1] != dim or arr.shape[0] != entry["rows"]:
        raise InputError(f"{vec_path}: shape {arr.shape} does not match the manifest ({entry['rows']} rows of width {dim})")
    shard_ids = read_json_list(store / entry["ids"], check.get(entry["ids"]))
    if len(shard_ids) != arr.shape[0]:
        raise InputError(f"{store / entry['ids']}: expected a list of {arr.shape[0]} ids")
    return arr, shard_ids


def verify_part(store: Path, entry: dict, full: bool = True) -> str | None:
    """What is wrong with a committed part's files, or None: their sizes, and with `full` every
    byte against its CRC. A file that cannot be read for another reason than being missing
    raises ReadFailure."""
    for name, want in entry["check"].items():
        try:
            got = file_check(store / name) if full else {"bytes": os.stat(store / name).st_size}
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            raise unreadable(store / name, exc) from None
        if got["bytes"] != want["bytes"]:
            return f"{name} holds {got['bytes']} bytes, {want['bytes']} were written"
        if full and got["crc32"] != want["crc32"]:
            return f"{name}: its bytes do not match their CRC-32"
    return None


def damaged_parts(store: Path, full: bool = True) -> list[str]:
    """What is wrong with the parts of a complete store, one line each (none: it is whole).
    A store of version 1 records no checks: nothing to find."""
    manifest = read_manifest(store)
    if manifest["version"] < 2:
        return []
    damaged = []
    for entry in manifest["shards"]:
        _check_entry(store, entry)
        problem = verify_part(store, entry, full) if isinstance(entry.get("check"), dict) else "no checks recorded"
        if problem is not None:
            damaged.append(f"{_part_name(entry['vectors'])}: {problem}")
    return damaged


def reopen_store(store: Path, dim: int, dtype: str, settings: dict) -> None:
    """Make a complete store unfinished again, with the settings a writer would begin it with,
    so that `--resume` redoes its damaged parts (progress first: a crash between the two
    leaves a complete store, which a rerun finds damaged again). Under the store's lock: a job
    writing it meanwhile makes this one line, not two writers."""
    with lock_store(store / LOCK):
        write_json(store / PROGRESS, _writer_settings(dim, dtype, settings))
        (store / MANIFEST).unlink(missing_ok=True)


def _writer_settings(dim: int, dtype: str, settings: dict | None) -> dict:
    """What progress.json holds: the store's form and the settings its vectors were made with."""
    return {"store_version": STORE_VERSION, "dim": int(dim), "dtype": dtype, **(settings or {})}


class StoreWriter:
    """Writes a store part by part; `close()` writes the manifest that makes it complete.

    Each part is a shard of rows plus the samples skipped while making it (one JSON line each,
    `{"sample_id": ..., "reason": ...}`). A part is committed when its record (PART) exists:
    vectors, ids and skips are written (atomically, checked) before it, and it holds their
    sizes and CRC-32s. With `resume=True` the committed parts of an unfinished store are kept,
    provided its settings equal `settings` and each part's files still match their record (a
    part that does not is removed and done again), and `done_ids` says which samples need no
    more work; files of a part cut short by a crash are removed.

    Under torchrun (`comm` of scalselect.distributed) every rank has a writer: rank 0 locks,
    checks and prepares the directory and reads what is committed (every rank gets the same
    account of it), each rank writes its own parts (shard-r<rank>-NNNNN), and `close()` gathers
    all of them into the manifest on rank 0. Parts are found by name, so a store begun with one
    world size can be resumed with another.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        dim: int,
        dtype: str = "float16",
        meta: dict | None = None,
        *,
        settings: dict | None = None,
        resume: bool = False,
        comm=None,
    ):
        if dtype not in _STORE_DTYPES:
            raise InputError(f"store dtype must be one of {_STORE_DTYPES}, not {dtype!r}")
        if dtype == "bfloat16":
            raise InputError("bfloat16 cannot be stored in .npy; use float16 or float32")
        self.store, self.dim, self.dtype, self.meta = Path(store), int(dim), dtype, dict(meta or {})
        self.comm = comm or Comm()
        self.settings = _writer_settings(self.dim, dtype, settings)
        self._prefix = f"shard-r{self.comm.rank}-" if self.comm.active else "shard-"
        self._lock = None
        self._next = 0
        self.shards, self.done_ids, self.skip_counts = [], set(), {}
        self._skips: list[dict] = []  # the committed parts' skip records, in part order (rank 0, after a scan)
        state = self.comm.on_rank0(lambda: self._open(resume))
        self.shards, self.done_ids, self.skip_counts = state

    def _open(self, resume: bool):
        """Rank 0: lock the store, check it (resuming: the settings it was begun with), write
        progress.json, and read the committed parts."""
        self.store.mkdir(parents=True, exist_ok=True)
        self._lock = lock_store(self.store / LOCK)
        try:
            self._prepare(resume)
            # every byte of every part by one process; with several, rank 0 alone would keep
            # the others waiting: sizes and the small files here, the vectors' CRCs as they are read
            self._scan(verify=True, full=not self.comm.active)
        except BaseException:
            self._unlock()
            raise
        return self.shards, self.done_ids, self.skip_counts

    def _prepare(self, resume: bool) -> None:
        progress = self.store / PROGRESS
        if (self.store / MANIFEST).exists():
            raise InputError(f"{self.store}: a store already exists here")
        if progress.exists():
            if not resume:
                raise InputError(f"{self.store}: holds an unfinished store; resume it (--resume) or choose another output")
            try:
                before = json.loads(progress.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise InputError(f"{progress}: unreadable ({exc})") from None
            if not isinstance(before, dict):
                raise InputError(f"{progress}: unreadable (not a JSON object)")
            if before.get("store_version") != STORE_VERSION:
                raise InputError(
                    f"{self.store}: an unfinished store of an older scalselect (store version "
                    f"{before.get('store_version', 1)}), which --resume cannot continue; "
                    "extract into a new folder"
                )
            check_same_settings(self.store, before, self.settings)
        elif any(p.name != LOCK for p in self.store.iterdir()):
            raise InputError(f"{self.store}: exists and is not empty; choose another output")
        write_json(progress, self.settings)

    def _scan(self, verify: bool, full: bool = True) -> None:
        """The committed parts of every writer, in name order. verify (rank 0, before anyone
        writes): each part checked against its record (every byte with `full`), a part that
        fails removed (its samples are done again), and what uncommitted parts and temporaries
        left removed. A file that cannot be read (ReadFailure) removes nothing. On any error the
        account of the parts is the one before."""
        before = self.shards, self.done_ids, self.skip_counts, self._skips
        self.shards, self.done_ids, self.skip_counts, self._skips = [], set(), {}, []
        try:
            self._scan_parts(verify, full)
        except BaseException:
            self.shards, self.done_ids, self.skip_counts, self._skips = before
            raise

    def _scan_parts(self, verify: bool, full: bool) -> None:
        named = set()
        for record in sorted(self.store.glob(f"shard-*{PART}")):
            try:
                entry = read_part(self.store, record)
                problem = verify_part(self.store, entry, full) if verify else None
                if problem is None:
                    _, ids = _open_shard(self.store, entry, self.dim)
                    skipped = read_jsonl(self.store / entry["skipped"], entry["check"][entry["skipped"]])
            except ReadFailure:
                raise
            except InputError as exc:
                if not verify:
                    raise
                problem = str(exc)
            if problem is None:
                self._committed(entry, ids, skipped)
                named.add(record.name.removesuffix(PART))
            else:
                warnings.warn(
                    f"{self.store}: part {record.name.removesuffix(PART)} is corrupt ({problem}); its samples are done again",
                    RuntimeWarning,
                )
                record.unlink()
        if verify:
            for path in [*self.store.glob("shard-*"), *self.store.glob(".*.tmp")]:
                if path.name.endswith(".tmp") or (path.name.endswith(_PART_FILES) and _part_name(path.name) not in named):
                    path.unlink()

    def _name(self) -> str:
        """The next part's name: this writer's prefix and the first index no committed part has."""
        while (self.store / f"{self._prefix}{self._next:05d}{PART}").exists():
            self._next += 1
        return f"{self._prefix}{self._next:05d}"

    def _committed(self, entry: dict, ids: list, skipped: list[dict]) -> None:
        self.shards.append(entry)
        self._skips.extend(skipped)
        for sample_id in [*ids, *(skip["sample_id"] for skip in skipped)]:
            if sample_id in self.done_ids:
                raise InputError(
                    f"{self.store}: sample {sample_id!r} is in two parts (was the store written by two jobs at once?)"
                )
            self.done_ids.add(sample_id)
        for skip in skipped:
            self.skip_counts[skip["reason"]] = self.skip_counts.get(skip["reason"], 0) + 1

    def add(self, vectors, ids: Sequence, skipped: Sequence[dict] = (), sidecar: dict | None = None) -> None:
        """Commit one part: rows `vectors` named `ids`, and the skips made along the way.
        sidecar: named numeric arrays committed with the part (a sketch's sums, say); see
        `read_sidecar`."""
        arr = np.asarray(vectors.cpu() if isinstance(vectors, torch.Tensor) else vectors)
        if arr.ndim != 2 or arr.shape[1] != self.dim or arr.shape[0] != len(ids):
            raise InputError(f"shard of shape {arr.shape} with {len(ids)} ids does not fit a store of width {self.dim}")
        stored = arr.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():
            bad = int(np.nonzero(~np.isfinite(stored).all(axis=1))[0][0])
            raise InputError(
                f"vector of sample {ids[bad]!r} is not finite as {self.dtype} (NaN, inf, or beyond the type's range)"
            )
        ids = [plain_id(i) for i in ids]
        skipped = [{**s, "sample_id": plain_id(s["sample_id"])} for s in skipped]
        name = self._name()
        entry = {"vectors": f"{name}.npy", "ids": f"{name}.ids.json", "skipped": f"{name}.skipped.jsonl", "rows": len(ids)}
        check = {}
        with atomic_open(self.store / entry["vectors"], "wb") as f:
            np.save(f, np.ascontiguousarray(stored), allow_pickle=False)
        check[entry["vectors"]] = written(f)
        check[entry["skipped"]] = written(write_jsonl(self.store / entry["skipped"], skipped))
        if sidecar is not None:
            entry["sidecar"] = f"{name}{SIDECAR}"
            packed = io.BytesIO()
            np.savez(packed, **{key: np.asarray(value) for key, value in sidecar.items()})
            with atomic_open(self.store / entry["sidecar"], "wb") as f:
                f.write(packed.getbuffer())
            check[entry["sidecar"]] = written(f)
        check[entry["ids"]] = written(write_json(self.store / entry["ids"], ids, indent=None))
        entry["check"] = check
        write_json(self.store / f"{name}{PART}", entry)  # last: commits the part
        self._committed(entry, ids, skipped)

    def close(self, meta: dict | None = None, expected: int | None = None) -> Path:
        """Write skipped.jsonl (all parts' skips) and the manifest; `meta` is added to it.
        With `expected`, refuse unless the parts account for exactly that many samples. A store
        whose parts hold no vectors at all is not completed (InputError; it stays unfinished).

        Under torchrun every rank calls it; rank 0 writes, after all ranks have committed."""
        self.comm.barrier()
        self.comm.on_rank0(lambda: self._write_manifest(meta, expected))
        return self.store

    def _write_manifest(self, meta: dict | None, expected: int | None) -> None:
        self._scan(verify=False)  # every rank's parts, as committed (sizes and ids checked)
        if expected is not None and len(self.done_ids) != expected:
            raise InputError(
                f"{self.store}: the parts account for {len(self.done_ids)} of {expected} samples; rerun with --resume"
            )
        skipped = self._skips  # read by the scan just now
        write_jsonl(self.store / SKIPPED, skipped)
        rows = sum(s["rows"] for s in self.shards)
        if rows == 0:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skip_counts.items()))
            raise InputError(f"{self.store}: no sample could be used ({reasons or 'no samples'}); see {self.store / SKIPPED}")
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "dim": self.dim,
            "dtype": self.dtype,
            "num_rows": rows,
            "num_skipped": len(skipped),
            "skipped_by_reason": dict(sorted(self.skip_counts.items())),
            "shards": self.shards,
            "meta": {**self.meta, **(meta or {})},
        }
        write_json(self.store / MANIFEST, manifest)
        (self.store / PROGRESS).unlink()
        self._unlock()

    def abandon(self) -> None:
        """Stop writing. A single process's store with no committed part is removed again, with
        whatever files it had begun (a failed start should not leave an unfinished store
        behind); committed parts stay for --resume. Under torchrun nothing is removed: other
        ranks may still be committing."""
        if self.comm.active or any(self.store.glob(f"shard-*{PART}")):
            self._unlock()
            return
        for path in self.store.glob("shard-*"):
            if path.name.endswith(_PART_FILES):
                path.unlink(missing_ok=True)
        for path in (self.store / PROGRESS, self.store / SKIPPED):
            path.unlink(missing_ok=True)
        self._unlock()
        if self.store.is_dir() and not any(self.store.iterdir()):
            self.store.rmdir()

    def _unlock(self) -> None:
        if self._lock is not None:
            (self.store / LOCK).unlink(missing_ok=True)
            self._lock.close()  # closing the file releases the lock
            self._lock = None


def _part_name(file_name: str) -> str:
    """shard-00003.ids.json -> shard-00003."""
    return next(file_name.removesuffix(suffix) for suffix in (PART, *_PART_FILES) if file_name.endswith(suffix))


def read_part(store: Path, record: Path) -> dict:
    """A part's commit record: its manifest entry, checked for form."""
    try:
        entry = json.loads(read_text(record, None))
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{record}: unreadable part record ({exc})") from None
    _check_entry(store, entry)
    if entry.get("check") is None or not isinstance(entry.get("skipped"), str):
        raise InputError(f"{record}: part record without its skips and its files' checks")
    return entry


def lock_store(path: Path):
    """An exclusive lock on `path`, held while the returned file stays open. On a file system
    without locks (Lustre without -o flock, some NFS) it warns and goes on unlocked."""
    import fcntl  # POSIX only: imported where a store is written, so that reading needs none

    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise InputError(
            f"{path.parent}: another process is writing this store (or, on NFS, one that died less than a lease ago)"
        ) from None
    except OSError as exc:
        warnings.warn(
            f"{path.parent}: cannot lock the store on this file system ({exc.strerror}); make sure no other job writes it",
            RuntimeWarning,
        )
    return f


# Settings recorded since stores were first made, with the value an older store was made with.
ADDED_SETTINGS = {"layer": 0}  # the probed decoder layer: 0 before hybrid decoders were supported


def check_same_settings(store: Path, before: dict, now: dict) -> None:
    """A store continued or reused must have been made with the same settings."""
    before = {**{k: v for k, v in ADDED_SETTINGS.items() if k in now}, **before}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise InputError(f"{store}: made with other settings ({shown})")


def read_sidecar(store: str | os.PathLike, entry: dict) -> dict[str, np.ndarray]:
    """The arrays committed with one part of the store (a manifest shard entry); no pickles."""
    name = entry.get("sidecar")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(SIDECAR):
        raise InputError(f"{store}/{MANIFEST}: shard {entry.get('vectors')!r} has no sidecar file")
    path = Path(store) / name
    raw = read_checked(path, (entry.get("check") or {}).get(name))
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except Exception as exc:  # corrupt archives raise many kinds
        raise InputError(f"{path}: not a readable .npz archive ({exc or 'empty file'})") from None


def read_skipped(store: str | os.PathLike) -> list[dict]:
    """The samples a complete store skipped, each {"sample_id", "reason", ...}."""
    read_manifest(store)
    path = Path(store) / SKIPPED
    return read_jsonl(path) if path.exists() else []


def write_store(
    store: str | os.PathLike,
    vectors,
    ids: Sequence | None = None,
    *,
    dtype: str = "float16",
    shard_rows: int = 65536,
    meta: dict | None = None,
) -> Path:
    """Write an in-memory matrix as a store (used by tests, the demo and benchmarks)."""
    arr = vectors.cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    ids = list(range(arr.shape[0])) if ids is None else list(ids)
    writer = StoreWriter(store, arr.shape[1], dtype, meta)
    for lo in range(0, arr.shape[0], shard_rows):
        writer.add(arr[lo : lo + shard_rows], ids[lo : lo + shard_rows])
    return writer.close()
