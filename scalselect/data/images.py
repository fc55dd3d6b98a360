"""Image files of a pool: paths resolved under --image-root, decoded to RGB.

A pool names its images relative to an image root. A path that is absolute or climbs out of the
root with `..` (or a symlink) is refused unless the user allows it: a pool is data from
someone else, and it should not make the tool read arbitrary files.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


class SampleSkip(Exception):
    """One sample cannot be used: `reason` is a short category, `detail` says exactly why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def resolve_image(root: Path, name: str, allow_outside_root: bool = False) -> Path:
    path = Path(name)
    full = (root / path).resolve()
    if not allow_outside_root and (path.is_absolute() or not full.is_relative_to(root.resolve())):
        raise SampleSkip("image outside --image-root", f"{name} (pass --allow-outside-root to allow it)")
    return full


def load_image(path: Path):
    """The image at `path` as an RGB PIL image (alpha composited on white), fully decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file must fail here, not in the processor
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise SampleSkip("unreadable image", f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleSkip("unreadable image", f"{path}: {exc}") from None


def check_image_root(root: str | os.PathLike | None) -> Path:
    root = Path(root) if root is not None else Path.cwd()
    if not root.is_dir():
        raise InputError(f"--image-root {root}: no such directory")
    return root
