"""The sketch store (`scalselect run --no-store`): extraction feeds the one-pass sketch
directly, and no vector is kept. The directory holds

    sketch.json       {"format": "scalselect-sketch", "plan": the plan's summary,
                       "settings": what the plan was made from}
    sketch-plan.npz   the test matrix `omega` (D x l float32) and the `shift` (D float64),
                      written once, before any part
    rows/             a vector store of the y rows (float32, l wide), committed part by part;
                      each part's sidecar holds that part's sums (SUMS) and its holdout rows
                      whole (`holdout`, and their rows in the part, `holdout_index`), so the
                      sketch's state is checkpointed with every part and a resume needs nothing
                      else. Its manifest's meta records the plan's digest (`sketch_plan`).

The arithmetic is scalselect.scoring.sketch's; this module is the format.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_open, write_json
from ..errors import InputError, first_line
from .vector_store import LOCK, MANIFEST, PROGRESS, lock_store, read_manifest, read_sidecar

SKETCH_FORMAT = "scalselect-sketch"
SKETCH_INFO, SKETCH_PLAN, SKETCH_ROWS = "sketch.json", "sketch-plan.npz", "rows"
SUMS = ("rows", "colsum", "colsumsq", "ytx", "ygram", "ysum")  # a part's float64 sums, by name


def is_sketch_store(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and (Path(path) / SKETCH_INFO).is_file()


def claim(out: Path, resume: bool):
    """Check that `out` may receive a sketch store and lock it; the lock is held while the
    returned file stays open."""
    if (out / MANIFEST).exists() or (out / PROGRESS).exists():
        raise InputError(f"{out}: holds a store of vectors; --no-store writes a sketch store: choose another output")
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"{out}: exists and is not empty; choose another output (or --resume)")
    out.mkdir(parents=True, exist_ok=True)
    return lock_store(out / LOCK)


def write_plan(out: Path, omega: torch.Tensor, shift: torch.Tensor, info: dict) -> None:
    """The plan files, atomically: the arrays first, then sketch.json, which marks them written."""
    packed = io.BytesIO()
    np.savez(packed, omega=omega.cpu().numpy(), shift=shift.cpu().numpy())
    with atomic_open(out / SKETCH_PLAN, "wb") as f:
        f.write(packed.getbuffer())
    write_json(out / SKETCH_INFO, {"format": SKETCH_FORMAT, **info})


def plan_digest(omega: torch.Tensor, shift: torch.Tensor) -> str:
    """Names a plan: the rows' store records it, and scoring checks it."""
    return hashlib.sha256(omega.cpu().numpy().tobytes() + shift.cpu().numpy().tobytes()).hexdigest()[:16]


def read_plan(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(omega, shift, the sketch.json object), checked for form."""
    try:
        info = json.loads((path / SKETCH_INFO).read_text(encoding="utf-8"))
        with np.load(path / SKETCH_PLAN, allow_pickle=False) as z:
            omega, shift = torch.from_numpy(z["omega"]), torch.from_numpy(z["shift"])
    except Exception as exc:  # corrupt JSON and archives raise many kinds (BadZipFile, EOFError, ...)
        raise InputError(f"{path}: unreadable sketch plan ({first_line(exc)})") from None
    if (
        not isinstance(info, dict)
        or info.get("format") != SKETCH_FORMAT
        or omega.dim() != 2
        or shift.shape != (omega.shape[0],)
        or omega.dtype != torch.float32
        or shift.dtype != torch.float64
    ):
        raise InputError(f"{path}: not a {SKETCH_FORMAT} plan")
    plan = info.get("plan", {})
    scale = plan.get("value_scale", 1.0) if isinstance(plan, dict) else None
    if (
        not isinstance(info.get("settings", {}), dict)
        or isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (0 < scale < math.inf)
        or not bool(torch.isfinite(omega).all() and torch.isfinite(shift).all())
    ):
        raise InputError(f"{path}/{SKETCH_INFO}: a corrupt plan (its summary or arrays are not what a sketch writes)")
    return omega, shift, info


def plan_scale(info: dict) -> float:
    """The factor a plan's rows are multiplied by (read_plan checked it; older plans: 1)."""
    return float(info.get("plan", {}).get("value_scale", 1.0))


def check_rows_plan(path: Path, omega: torch.Tensor, shift: torch.Tensor, sketch_size: int | None) -> None:
    """The rows of the sketch store at `path` were made with this plan (and the size asked for)."""
    if sketch_size is not None and sketch_size != omega.shape[1]:
        raise InputError(f"{path}: this sketch has size {omega.shape[1]}; it cannot be scored with another")
    if read_manifest(path / SKETCH_ROWS).get("meta", {}).get("sketch_plan") != plan_digest(omega, shift):
        raise InputError(f"{path}: {SKETCH_PLAN} is not the plan its rows were made with")


def part_sidecar(sums: dict, vectors: np.ndarray, held: np.ndarray) -> dict:
    """What a part's sidecar holds: its sums, and the vectors of its holdout rows `held`."""
    return {
        **{name: sums[name] for name in SUMS},
        "holdout": np.asarray(vectors, np.float32)[held],
        "holdout_index": np.asarray(held, np.int64),
    }


def read_sketch_part(rows: Path, entry: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """A committed part of `rows` (its manifest entry): (its sums by name, its holdout rows'
    vectors, their y rows)."""
    side = read_sidecar(rows, entry)
    held = side["holdout_index"]
    held_y = np.load(rows / entry["vectors"], mmap_mode="r")[held] if len(held) else np.zeros((0, 0), np.float32)
    return {name: side[name] for name in SUMS}, side["holdout"], held_y
