"""Every output file, written so that nothing half-written or corrupt is ever left in place.

A regular file is written to a temporary file beside its target, then flushed, fsynced, checked
(its size on disk must be what was written) and renamed over the target in one step: a reader,
or a crash, never sees a half-written file under its final name. Every byte goes through
`os.write` here, whose errors (a full disk, a file-size limit, a quota) raise at once; no
library's own buffering (numpy's `tofile` through a C FILE*, say) can drop them silently.

Where an output goes:
- a path, or a symlink: the file it names (the link stays a link);
- `-`: standard output, as a stream; a character device or a FIFO: opened and written as a
  stream (no temporary file, no rename: `/dev/stdout` stays what it is).

The CRC-32 and size of what was written are kept on the file object (`.crc32`, `.size`), so a
store can record them and its readers check them (see `file_check`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
_BUFFER = 1 << 20
STDOUT = "-"

# The one call that writes output bytes; the fault-injection tests replace it.
write_bytes = os.write


_FD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


def _open_fd(path) -> int | None:
    """The descriptor a path names that this process already holds: `-`, /dev/stdout,
    /dev/stderr, /dev/fd/N, /proc/self/fd/N. Written as it is, never reopened or replaced: it may
    be a file the shell opened for appending, a pipe, a socket."""
    text = os.fspath(path)
    if text == STDOUT:
        return 1
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    return _FD_NAMES.get(text)


def is_stream(path: str | os.PathLike) -> bool:
    """Whether an output path is written as a stream: a descriptor this process holds (`-`,
    /dev/stdout, ...), a character device, a FIFO or a socket."""
    if _open_fd(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class CheckedFile:
    """A file open for writing: bytes (or text, encoded) are buffered, written with `os.write`
    until every byte is out, and counted with their CRC-32. Not a `io.FileIO`, so numpy writes
    to it through `.write` instead of its own C stream."""

    def __init__(self, fd: int, name: str, text: bool, encoding: str | None, errors: str = "strict"):
        self.fd, self.name, self.text, self.encoding = fd, name, text, encoding or "utf-8"
        self.errors = errors
        self.size, self.crc32, self.closed = 0, 0, False
        self._buffer = bytearray()

    def write(self, data) -> int:
        raw = data.encode(self.encoding, self.errors) if self.text else memoryview(data).cast("B")
        self.crc32 = zlib.crc32(raw, self.crc32)
        if len(raw) >= _BUFFER:  # large blocks (a shard's rows) go out without a copy
            self._drain()
            self._out(raw)
        else:
            self._buffer += raw
            if len(self._buffer) >= _BUFFER:
                self._drain()
        return len(data)

    def _drain(self) -> None:
        if self._buffer:
            with memoryview(self._buffer) as view:
                self._out(view)
            self._buffer.clear()

    def _out(self, view: memoryview) -> None:
        while len(view):
            try:
                done = write_bytes(self.fd, view)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write {self.name}: {exc.strerror or exc}") from None
            if done <= 0:
                raise OSError(errno.EIO, f"cannot write {self.name}: the system wrote nothing")
            self.size += done
            view = view[done:]

    def flush(self) -> None:
        self._drain()

    def tell(self) -> int:
        return self.size + len(self._buffer)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise OSError(errno.ESPIPE, "output files are written in one forward pass")

    def close(self) -> None:  # the context manager that made this file closes it
        pass


def _target(path: Path) -> Path:
    """The file a path names: through symlinks (a dangling one names the file to create)."""
    if not path.is_symlink():
        return path
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop (RuntimeError before Python 3.13)
        raise OSError(errno.ELOOP, f"cannot write {path}: its symlinks form a loop") from None


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", errors: str = "strict"
) -> Iterator[CheckedFile]:
    """Open an output (see the module docstring); on clean exit a regular file replaces `path`'s
    target in one rename. Any failure (an exception in the block, a short write, a full disk)
    leaves the target as it was and raises OSError naming the file. Text is encoded with
    `encoding` and `errors`."""
    text = "b" not in mode
    if is_stream(path):
        with _stream(path) as fd:
            f = CheckedFile(fd, str(path), text, encoding, errors)
            yield f
            _named(f.flush, path)
        return
    target = _target(Path(path))
    if target.name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: names a directory, not a file")
    _named(lambda: target.parent.mkdir(parents=True, exist_ok=True), path)
    fd, tmp = _named(lambda: tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent), path)
    try:
        try:
            f = CheckedFile(fd, str(target), text, encoding, errors)
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode of a new file
            yield f
            _named(lambda: _finish(f), path)
        finally:
            os.close(fd)
        _named(lambda: os.replace(tmp, target), path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _finish(f: CheckedFile) -> None:
    """Everything out, on disk, and as long as what was written."""
    f.flush()
    os.fsync(f.fd)
    on_disk = os.fstat(f.fd).st_size
    if on_disk != f.size:
        raise OSError(errno.EIO, f"{on_disk} bytes on disk, {f.size} written")


@contextlib.contextmanager
def _stream(path) -> Iterator[int]:
    held = _open_fd(path)
    if held is not None:
        for stream in {sys.stdout, sys.__stdout__, sys.stderr}:  # what was printed before comes first
            if stream is not None:
                stream.flush()
        yield held
        return
    # O_NONBLOCK: a FIFO nobody reads is an error now, not a wait forever; then blocking writes
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "a FIFO that no process reads" if exc.errno == errno.ENXIO else exc.strerror or exc
        raise OSError(exc.errno, f"cannot write {path}: {reason}") from None
    try:
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


def _named(step, path):
    """step(), with an OSError saying which output it was writing."""
    try:
        return step()
    except OSError as exc:
        if f"cannot write {path}" in str(exc):
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None


def json_text(obj, indent: int | None = None) -> str:
    """JSON of obj: UTF-8 text as it is, unless some string holds a lone surrogate (legal in a
    JSON escape, not in UTF-8): then ASCII with escapes, which reads back to the same value."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, indent=indent)
    return text


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> CheckedFile:
    """obj as a JSON file (atomic, checked; see json_text); the written file's size and CRC."""
    with atomic_open(path) as f:
        f.write(json_text(obj, indent) + "\n")
    return f


def file_check(path: str | os.PathLike) -> dict:
    """{"bytes", "crc32"} of a file as it is on disk (what a store records of every file)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def written(f: CheckedFile) -> dict:
    """{"bytes", "crc32"} of what a CheckedFile wrote, as `file_check` gives them."""
    return {"bytes": f.size, "crc32": f"{f.crc32:08x}"}
