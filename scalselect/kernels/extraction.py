"""The representation extraction's kernels: the attention mass the instruction rows pay each
vision token in the probed layer, and the mean hidden state of the most-attended ones."""

from __future__ import annotations

import torch

from . import dispatch, twins
from .native import DTYPE_CODES, launch


def _mask(m: torch.Tensor, shape: tuple, device: torch.device, what: str) -> torch.Tensor:
    """A contiguous bool [B, S] mask on `device` (the kernels read its bytes as 0 / 1)."""
    if tuple(m.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(m.shape)}")
    return m.to(device=device, dtype=torch.bool).contiguous()


def _key_ranges(
    key_ranges, shape: tuple, device: torch.device, key_valid: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) as contiguous int32 [B, S] on `device`, causal when None; every row that is
    computed must see itself (lo <= i < hi <= S), so each softmax has a key."""
    if key_ranges is None:
        return twins.causal_key_ranges(key_valid)
    lo, hi = key_ranges
    if tuple(lo.shape) != shape or tuple(hi.shape) != shape:
        raise ValueError(f"key_ranges must be two tensors of shape {shape}, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    lo, hi = (t.to(device=device, dtype=torch.int32).contiguous() for t in (lo, hi))
    at = torch.arange(shape[1], device=device)
    computed = rows & key_valid
    if bool(((lo > at) | (hi <= at) | (lo < 0) | (hi > shape[1]))[computed].any()):
        raise ValueError("key_ranges: an instruction row's keys [lo, hi) must hold the row itself and lie within the sequence")
    return lo, hi


def native_attention_mass(q, k, key_valid, row_is_instruction, col_is_vision, key_lo, key_hi, scale, softcap):
    b, heads, seq, hd = q.shape
    out = torch.empty((b, seq), dtype=torch.float32, device=q.device)  # every entry written
    args = (
        q.data_ptr(),
        k.data_ptr(),
        DTYPE_CODES[q.dtype],
        b,
        heads,
        k.shape[1],
        seq,
        hd,
        key_valid.data_ptr(),
        row_is_instruction.data_ptr(),
        col_is_vision.data_ptr(),
        key_lo.data_ptr(),
        key_hi.data_ptr(),
        float(scale),
        float(softcap or 0.0),
        out.data_ptr(),
    )
    launch("attention_mass", q.device, args)
    return out


def native_top_mass_mean(hidden, mass, col_is_vision, tau):
    b, seq, dim = hidden.shape
    out = torch.empty((b, dim), dtype=torch.float32, device=hidden.device)
    kept = torch.empty(b, dtype=torch.int64, device=hidden.device)
    args = (
        hidden.data_ptr(),
        DTYPE_CODES[hidden.dtype],
        b,
        seq,
        dim,
        mass.data_ptr(),
        col_is_vision.data_ptr(),
        float(tau),
        out.data_ptr(),
        kept.data_ptr(),
    )
    launch("top_mass_mean", hidden.device, args)
    return out, kept


def attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    key_valid: torch.Tensor,
    row_is_instruction: torch.Tensor,
    col_is_vision: torch.Tensor,
    scale: float,
    key_ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    softcap: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """[B, S] float32 mean attention of the instruction rows on each vision token; see
    twins.attention_mass (key_ranges: the layer's per-row keys, None for causal). The native
    kernels never hold more than a tile of logits."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, S, hd], got {tuple(q.shape)} and {tuple(k.shape)}")
    b, heads, seq, hd = q.shape
    kv_heads = k.shape[1]
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, seq, hd) or kv_heads == 0 or heads == 0 or heads % kv_heads:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)} (same B, S, hd; H a positive multiple of Hkv)")
    if k.device != q.device:
        raise ValueError(f"q is on {q.device} but k on {k.device}")
    if softcap is not None and not 0 < softcap < float("inf"):
        raise ValueError(f"softcap must be positive and finite, or None, not {softcap}")
    masks = [
        _mask(m, (b, seq), q.device, what)
        for m, what in ((key_valid, "key_valid"), (row_is_instruction, "row_is_instruction"), (col_is_vision, "col_is_vision"))
    ]
    ranges = _key_ranges(key_ranges, (b, seq), q.device, masks[0], masks[1])

    def native_way():
        same = q.dtype == k.dtype and q.dtype in DTYPE_CODES  # else both as float32, as the twin reads them
        qn, kn = (q, k) if same else (q.float(), k.float())
        return native_attention_mass(qn.contiguous(), kn.contiguous(), *masks, *ranges, scale, softcap)

    return dispatch.run(
        "attention_mass",
        q.device,
        backend,
        (tuple(q.shape), tuple(k.shape)),
        native_way,
        lambda: twins.attention_mass(q, k, *masks, scale, ranges, softcap),
    )


def top_mass_mean(
    hidden: torch.Tensor, mass: torch.Tensor, col_is_vision: torch.Tensor, tau: float, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 mean hidden state of each sample's most-attended vision tokens [B, D] and their
    counts [B] (int64); see twins.top_mass_mean."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, S, D], got shape {tuple(hidden.shape)}")
    b, seq, _ = hidden.shape
    if tuple(mass.shape) != (b, seq):
        raise ValueError(f"mass must have shape {(b, seq)}, got {tuple(mass.shape)}")
    cols = _mask(col_is_vision, (b, seq), hidden.device, "col_is_vision")
    mass = mass.to(hidden.device)

    def native_way():
        h = hidden if hidden.dtype in DTYPE_CODES else hidden.float()
        # float64: the twin normalises mass in float64, so the kept counts agree exactly
        return native_top_mass_mean(h.contiguous(), mass.to(torch.float64).contiguous(), cols, tau)

    return dispatch.run(
        "top_mass_mean",
        hidden.device,
        backend,
        tuple(hidden.shape),
        native_way,
        lambda: twins.top_mass_mean(hidden, mass, cols, tau),
    )


def _check_attention_mass(device: torch.device) -> bool:
    """70 tokens: several row and key tiles; padding both sides; GQA; causal rows in sample 0,
    a sliding window of 20 keys and soft-capping in sample 1."""
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(2, 4, 70, 24, generator=gen).to(device=device, dtype=torch.float16)
    k = torch.randn(2, 2, 70, 24, generator=gen).to(device=device, dtype=torch.float16)
    valid = torch.ones(2, 70, dtype=torch.bool)
    valid[0, :6], valid[1, -5:] = False, False
    vision = (torch.rand(2, 70, generator=gen) < 0.5) & valid
    lo, hi = twins.causal_key_ranges(valid)
    lo = lo.clone()
    lo[1] = (torch.arange(70) - 19).clamp(min=0).to(torch.int32)
    masks = [m.to(device) for m in (valid, ~vision & valid, vision)]
    ranges = (lo.to(device), hi.to(device))
    got = native_attention_mass(q, k, *masks, *ranges, 0.2, 3.0)
    want = twins.attention_mass(q, k, *masks, 0.2, ranges, 3.0)
    return torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def _check_top_mass_mean(device: torch.device) -> bool:
    gen = torch.Generator().manual_seed(1234)
    hidden = torch.randn(3, 40, 70, generator=gen).to(device=device, dtype=torch.bfloat16)
    mass = (torch.rand(3, 40, generator=gen, dtype=torch.float64) ** 3).to(device)
    vision = torch.rand(3, 40, generator=gen) < 0.6
    vision[2] = False
    got, kept = native_top_mass_mean(hidden, mass, vision.to(device), 0.5)
    want, want_kept = twins.top_mass_mean(hidden, mass, vision.to(device), 0.5)
    return torch.equal(kept, want_kept) and torch.allclose(got, want, rtol=1e-5, atol=1e-5)


dispatch.SELF_CHECKS.update(attention_mass=_check_attention_mass, top_mass_mean=_check_top_mass_mean)
