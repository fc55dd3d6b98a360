"""Files of a store read and written with their checks: sizes and CRC-32s as a store records
them (`{"bytes": ..., "crc32": ...}`), and the errors for files that cannot be read."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_open, json_text
from ..errors import InputError


def check_size(path: Path, check: dict) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise unreadable(path, exc) from None
    if size != check["bytes"]:
        raise InputError(
            f"{path}: {size} bytes, but the store recorded {check['bytes']} (truncated or replaced since it was written)"
        )


def check_crc(path: Path, check: dict | None, crc: int) -> None:
    if check is not None and f"{crc:08x}" != check["crc32"]:
        raise InputError(f"{path}: its bytes do not match the store's CRC-32 (corrupted or changed since it was written)")


class ReadFailure(InputError):
    """A store's file could not be read (EIO, EACCES, ...): it may be sound, so nothing is removed."""


def unreadable(path: Path, exc: OSError) -> InputError:
    """The error for a file that could not be read: missing is a fact about the store, any other
    failure (EIO, EACCES) about the file system, which a later try may not meet."""
    kind = InputError if isinstance(exc, FileNotFoundError) else ReadFailure
    return kind(f"{path}: unreadable ({exc.strerror or exc})")


def read_checked(path: Path, check: dict | None) -> bytes:
    """A small file's bytes, matching the store's record of it when there is one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None
    if check is not None:
        if len(raw) != check["bytes"]:
            raise InputError(
                f"{path}: {len(raw)} bytes, but the store recorded {check['bytes']} (truncated or replaced since it was written)"
            )
        check_crc(path, check, zlib.crc32(raw))
    return raw


def read_text(path: Path, check: dict | None) -> str:
    raw = read_checked(path, check)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: unreadable (not UTF-8: {exc.reason} at byte {exc.start})") from None


def read_json_list(path: Path, check: dict | None = None) -> list:
    text = read_text(path, check)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(value, list):
        raise InputError(f"{path}: expected a JSON list")
    return value


def read_jsonl(path: Path, check: dict | None = None) -> list[dict]:
    text = read_text(path, check)
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if not all(isinstance(r, dict) and "sample_id" in r and "reason" in r for r in rows):
        raise InputError(f"{path}: every line must be an object with sample_id and reason")
    return rows


def write_jsonl(path: Path, rows: Sequence[dict]):
    """One JSON object per line (atomic, checked); the written file."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json_text(row) + "\n")
    return f
