"""Pure-PyTorch twins of the compiled kernels: same signatures, same results within rounding.

They define what the kernels compute, serve as the fallback when the native module or the GPU
is missing, and are what the tests compare the kernels against.
"""

from __future__ import annotations

import torch


def centre_rows(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None,
                l2_normalize: bool) -> torch.Tensor:
    """float64 rows c_i = (x_i / ||x_i|| - shift) * inv_scale (each step optional)."""
    c = x.to(torch.float64)
    if l2_normalize:
        norms = torch.linalg.vector_norm(c, dim=1, keepdim=True)
        c = c * torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    c = c - shift
    if inv_scale is not None:
        c = c * inv_scale
    return c


def gram_prep(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None,
              l2_normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred rows as float32 (n x d) and their float64 column sums (d)."""
    c = centre_rows(x, shift, inv_scale, l2_normalize)
    return c.to(torch.float32), c.sum(dim=0)


def projected_sqnorm(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None,
                     l2_normalize: bool, w: torch.Tensor) -> torch.Tensor:
    """float64 ||c_i W||^2 per row, with W (d x k) float32."""
    c = centre_rows(x, shift, inv_scale, l2_normalize).to(torch.float32)
    y = (c @ w).to(torch.float64)
    return (y * y).sum(dim=1)
