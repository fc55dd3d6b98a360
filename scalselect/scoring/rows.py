"""What both scoring engines share: the result each returns, and the helpers they apply to
chunks of rows (finite-row checks, the scale that keeps float32 products in range, the spread
and standardisation checks, a progress bar)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError


class EngineResult(NamedTuple):
    """One engine's scores of this process's rows, before leverage_scores wraps them."""

    scores: np.ndarray  # float64 per row (the rows left out are set to NaN afterwards)
    total: float  # the total energy, sum of sigma_i^2, of the rows as scaled
    top: torch.Tensor  # the top-k eigenvalues (sigma_i^2) of the scaled rows
    eig_method: str  # how they were found ("full", "krylov", "sketch")
    left_out: list[int]  # rows that were not finite
    scale: float  # the power of two the rows were multiplied by (1 when standardised)


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    # disable=None: draw only on a terminal, so errors and logs stay clean
    return tqdm(
        total=total, desc=desc, unit="rows", unit_scale=True, disable=None if enabled else True, leave=False, dynamic_ncols=True
    )


def finite_rows(sums: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
    """None when every row is finite, else a mask of the finite rows. A NaN or inf anywhere in
    `rows` makes its column sums non-finite: checking the d sums is free, and only then are the
    rows searched."""
    if bool(torch.isfinite(sums).all()):
        return None
    good = torch.isfinite(rows).all(dim=1)
    if bool(good.all()):
        raise InputError("the column sums overflowed: values too large; rescale the vectors")
    return good


def prep_finite(kernel, chunk: torch.Tensor, *args, **kwargs):
    """kernel(chunk, *args) (gram_prep or sketch_prep) on the chunk's finite rows: its outputs
    and the mask of those rows (None when all are). A NaN or inf shows in the column sums, the
    kernel's second output, so only then is the chunk searched and the kernel run again."""
    out = kernel(chunk, *args, **kwargs)
    good = finite_rows(out[1], chunk)
    if good is not None:
        out = kernel(chunk[good], *args, **kwargs)
    return out, good


def left_out_rows(good: torch.Tensor, start: int) -> list[int]:
    """Indices (from `start`) of a chunk's rows that are not finite."""
    return (torch.nonzero(~good).flatten() + start).tolist()


def value_scale(magnitude: float) -> float:
    """A power of two that brings values of this magnitude near 1 before their float32 products
    (whose squares would underflow below ~1e-19 or overflow above ~1e19), or 1 where they are safe
    already. Scaling by a power of two is exact, and leverage scores do not change under it."""
    if not (magnitude > 0 and math.isfinite(magnitude)) or 2.0**-16 <= magnitude <= 2.0**16:
        return 1.0
    return math.ldexp(1.0, -math.frexp(magnitude)[1])


def head_magnitude(rows: torch.Tensor) -> float:
    """The largest |x - mean| of a few finite rows (float64), or their largest |x| if they are all equal."""
    rows = rows.to(torch.float64)
    spread = float((rows - rows.mean(dim=0)).abs().max()) if rows.numel() else 0.0
    return spread if spread > 0 else float(rows.abs().max()) if rows.numel() else 0.0


def check_spread(centred_energy: float, raw_energy: float, n: int) -> None:
    """Refuse a matrix whose rows are all equal up to rounding: there is nothing to rank."""
    if not centred_energy > 1e-24 * raw_energy:
        raise InputError(f"all {n} rows are identical (up to rounding): there is nothing to rank")


def inverse_std(var: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """1 / std per column for `standardize`. A column whose variance is rounding noise against
    its magnitude is constant and gets 0, so that noise is not blown up to unit variance."""
    constant = var <= 1e-20 * second_moment
    if bool(constant.all()):
        raise InputError("no column varies: after standardisation there is nothing to rank")
    return torch.where(constant, torch.zeros_like(var), 1.0 / var.clamp_min(1e-300).sqrt())
