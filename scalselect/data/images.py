"""A pool's images, decoded to RGB: files named relative to --image-root, or bytes embedded in
the pool (Parquet and save_to_disk pools).

A pool names its image files relative to an image root. A path that is absolute or climbs out of the
root with `..` (or a symlink) is refused unless the user allows it: a pool is data from
someone else, and it should not make the tool read arbitrary files.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from ..errors import InputError


class SampleSkip(Exception):
    """One sample cannot be used: `reason` is a short category, `detail` says exactly why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def resolve_image(root: Path, name: str, allow_outside_root: bool = False) -> Path:
    path = Path(name)
    try:
        full = (root / path).resolve()
    except ValueError as exc:  # a NUL byte, a lone surrogate: no file can have that name
        raise SampleSkip("bad record", f"image path {name!r}: {exc}") from None
    if not allow_outside_root and (path.is_absolute() or not full.is_relative_to(root.resolve())):
        raise SampleSkip("image outside --image-root", f"{name} (pass --allow-outside-root to allow it)")
    return full


def open_image(ref, root: Path, allow_outside_root: bool = False):
    """The RGB image of one image reference (see conversations.image_refs): embedded bytes, or
    a file under `root`."""
    data = ref.get("bytes") if isinstance(ref, dict) else ref if isinstance(ref, bytes) else None
    if data:
        name = ref.get("path") if isinstance(ref, dict) else None
        return load_image(io.BytesIO(data), f"embedded image{f' {name}' if name else ''} ({len(data)} bytes)")
    name = ref.get("path") if isinstance(ref, dict) else ref
    path = resolve_image(root, name, allow_outside_root)
    with open_regular(path, "unreadable image") as f:
        return load_image(f, str(path))


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def open_regular(path: Path, reason: str):
    """A binary file object of `path`, which must be a regular file: a FIFO, a device or a
    socket is refused before it is read (opening a FIFO waits for a writer, a device may never
    end), so that a read cannot hang. Refusals are SampleSkip(reason)."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
        if kind == stat.S_IFREG:  # O_NONBLOCK: a FIFO put in its place since does not block the open
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            try:
                kind = stat.S_IFMT(os.fstat(fd).st_mode)
                if kind == stat.S_IFREG:
                    return os.fdopen(fd, "rb")
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
    except FileNotFoundError:
        raise SampleSkip(reason, f"{path}: no such file") from None
    except OSError as exc:
        raise SampleSkip(reason, f"{path}: {exc.strerror or exc}") from None
    raise SampleSkip(reason, f"{path}: not a regular file ({_KINDS.get(kind, 'a special file')})")


def load_image(source, label: str | None = None):
    """The image in `source` (a path or a binary file object) as an RGB PIL image (alpha
    composited on white), fully decoded. `label` names it in errors (default: the path)."""
    from PIL import Image

    label = label or str(source)
    try:
        with Image.open(source) as img:
            img.load()  # decode now: a truncated file must fail here, not in the processor
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise SampleSkip("unreadable image", f"{label}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleSkip("unreadable image", f"{label}: {exc}") from None


def check_image_root(root: str | os.PathLike | None) -> Path:
    root = Path(root) if root is not None else Path.cwd()
    if not root.is_dir():
        raise InputError(f"--image-root {root}: no such directory")
    return root
