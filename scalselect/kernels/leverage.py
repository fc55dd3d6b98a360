"""The leverage-score engines' kernels: the row preparation of both passes (gram_prep, with the
squares for the sketch: sketch_prep) and the projected squared norms of the score pass."""

from __future__ import annotations

import torch

from . import dispatch, twins
from .native import DTYPE_CODES, launch, ptr


def as_kernel_input(x: torch.Tensor) -> torch.Tensor:
    """A 2-D tensor of a dtype the kernels read, with unit column stride."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(x.shape)}")
    if x.dtype not in DTYPE_CODES:
        x = x.to(torch.float32)
    if x.stride(1) != 1 or x.stride(0) < x.shape[1]:
        x = x.contiguous()
    return x


def _vec(v: torch.Tensor | None, d: int, device: torch.device, required: bool = False) -> torch.Tensor | None:
    if v is None:
        if required:
            raise ValueError("shift is required (a float64 vector of length d)")
        return None
    v = v.to(device=device, dtype=torch.float64).contiguous()
    if v.shape != (d,):
        raise ValueError(f"expected a vector of length {d}, got shape {tuple(v.shape)}")
    return v


def _rows(x, shift, inv_scale):
    """The chunk and its shift and scale as the kernels read them."""
    x = as_kernel_input(x)
    d = x.shape[1]
    return x, _vec(shift, d, x.device, required=True), _vec(inv_scale, d, x.device)


def native_gram_prep(x, shift, inv_scale, l2_normalize, squares=False):
    """(centred, colsum), and colsumsq after them when `squares`: gram_prep or sketch_prep."""
    n, d = x.shape
    out = torch.empty((n, d), dtype=torch.float32, device=x.device)
    colsum = torch.zeros(d, dtype=torch.float64, device=x.device)
    colsumsq = torch.zeros(d, dtype=torch.float64, device=x.device) if squares else None
    args = (
        x.data_ptr(),
        DTYPE_CODES[x.dtype],
        n,
        d,
        x.stride(0),
        bool(l2_normalize),
        ptr(shift),
        ptr(inv_scale),
        out.data_ptr(),
        colsum.data_ptr(),
        ptr(colsumsq),
    )
    launch("gram_prep", x.device, args)
    return (out, colsum, colsumsq) if squares else (out, colsum)


def native_projected_sqnorm(x, shift, inv_scale, l2_normalize, w):
    n, d = x.shape
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    args = (
        x.data_ptr(),
        DTYPE_CODES[x.dtype],
        n,
        d,
        x.stride(0),
        bool(l2_normalize),
        ptr(shift),
        ptr(inv_scale),
        w.data_ptr(),
        w.shape[1],
        out.data_ptr(),
    )
    launch("projected_sqnorm", x.device, args)
    return out


def gram_prep(
    x: torch.Tensor,
    shift: torch.Tensor,
    inv_scale: torch.Tensor | None = None,
    l2_normalize: bool = False,
    *,
    backend: str = "auto",
):
    """Centred float32 rows and float64 column sums of a chunk; see twins.gram_prep."""
    x, shift, inv_scale = _rows(x, shift, inv_scale)
    return dispatch.run(
        "gram_prep",
        x.device,
        backend,
        tuple(x.shape),
        lambda: native_gram_prep(x, shift, inv_scale, l2_normalize),
        lambda: twins.gram_prep(x, shift, inv_scale, l2_normalize),
    )


def sketch_prep(
    x: torch.Tensor,
    shift: torch.Tensor,
    inv_scale: torch.Tensor | None = None,
    l2_normalize: bool = False,
    *,
    backend: str = "auto",
):
    """gram_prep plus the float64 column sums of squares, in the same read; see
    twins.sketch_prep. The native kernel is gram_prep's."""
    x, shift, inv_scale = _rows(x, shift, inv_scale)
    return dispatch.run(
        "gram_prep",
        x.device,
        backend,
        tuple(x.shape),
        lambda: native_gram_prep(x, shift, inv_scale, l2_normalize, True),
        lambda: twins.sketch_prep(x, shift, inv_scale, l2_normalize),
    )


# Above this k the CPU's BLAS GEMM beats the fused C++ kernel (benchmarks/README.md), so on the
# CPU "auto" centres with the native prep kernel and multiplies with torch.
FUSED_CPU_MAX_K = 512


def projected_sqnorm(
    x: torch.Tensor,
    shift: torch.Tensor,
    inv_scale: torch.Tensor | None,
    l2_normalize: bool,
    w: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """float64 ||c_i W||^2 per row of a chunk; see twins.projected_sqnorm."""
    x, shift, inv_scale = _rows(x, shift, inv_scale)
    w = w.to(device=x.device, dtype=torch.float32).contiguous()
    if w.dim() != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"W must be {x.shape[1]} x k, got shape {tuple(w.shape)}")

    def native_way():
        if backend == "auto" and x.device.type == "cpu" and w.shape[1] > FUSED_CPU_MAX_K:
            y = native_gram_prep(x, shift, inv_scale, l2_normalize)[0] @ w
            return y.square().sum(dim=1, dtype=torch.float64)
        return native_projected_sqnorm(x, shift, inv_scale, l2_normalize, w)

    return dispatch.run(
        "projected_sqnorm",
        x.device,
        backend,
        (*x.shape, w.shape[1]),
        native_way,
        lambda: twins.projected_sqnorm(x, shift, inv_scale, l2_normalize, w),
    )


def _check_inputs(device: torch.device):
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(37, 70, generator=gen).to(device=device, dtype=torch.float16)
    shift = torch.randn(70, generator=gen, dtype=torch.float64).to(device)
    scale = torch.rand(70, generator=gen, dtype=torch.float64).to(device) + 0.5
    return x, shift, scale, torch.randn(70, 300, generator=gen).to(device)


def _check_gram_prep(device: torch.device) -> bool:
    """With the squares and every option: sketch_prep's path too."""
    x, shift, scale, _ = _check_inputs(device)
    got, want = native_gram_prep(x, shift, scale, True, True), twins.sketch_prep(x, shift, scale, True)
    return all(torch.allclose(g.double(), e.double(), rtol=1e-5, atol=1e-5) for g, e in zip(got, want))


def _check_projected_sqnorm(device: torch.device) -> bool:
    x, shift, scale, w = _check_inputs(device)
    got = native_projected_sqnorm(x, shift, scale, True, w)
    return torch.allclose(got, twins.projected_sqnorm(x, shift, scale, True, w), rtol=1e-4, atol=1e-6)


dispatch.SELF_CHECKS.update(gram_prep=_check_gram_prep, projected_sqnorm=_check_projected_sqnorm)
