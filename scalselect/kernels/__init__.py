"""Picks the compiled kernel or its pure-PyTorch twin, and checks tensors before a native call.

The public functions take and return torch tensors; `backend` is "auto" (native when available),
"native" (error if not) or "torch" (the twin).
"""

from __future__ import annotations

import warnings

import torch

from .. import options
from . import twins

# Must match kKernelVersion in csrc/bindings.cpp: a module built from older sources has other
# kernel arguments, and calling it would read the wrong memory.
KERNEL_VERSION = 2

try:
    from .. import _C
except ImportError as exc:  # a source checkout without a build, or a broken wheel
    _C = None
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = ""
    _built = _C.build_info().get("kernel_version")
    if _built != KERNEL_VERSION:
        _C = None
        _IMPORT_ERROR = (f"the native module was built from other sources (kernel version {_built}, "
                         f"expected {KERNEL_VERSION}); rebuild it: pip install .")

# Must match scalselect::DType in csrc/include/scalselect/kernels.h.
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
BACKENDS = options.BACKENDS


def build_info() -> dict:
    """What the native module was compiled with (empty CPU/CUDA flags when it is missing)."""
    if _C is None:
        return {"native": False, "openmp": False, "cuda": False, "cuda_archs": "",
                "error": _IMPORT_ERROR}
    return {"native": True, **_C.build_info()}


def native_available(device: torch.device, kernel: str = "gram_prep") -> bool:
    """Whether `kernel` was compiled for this device type."""
    return _C is not None and device.type in ("cpu", "cuda") and hasattr(_C, f"{kernel}_{device.type}")


def _as_kernel_input(x: torch.Tensor) -> torch.Tensor:
    """A 2-D tensor of a dtype the kernels read, with unit column stride."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPE_CODES:
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


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _launch(name: str, device: torch.device, args: tuple) -> None:
    """Run the compiled kernel `name` for `device`: the CUDA one on the device's current stream."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # launches and allocations go to this GPU
            getattr(_C, f"{name}_cuda")(*args, _stream(device))
    else:
        getattr(_C, f"{name}_cpu")(*args)


def _native_gram_prep(x, shift, inv_scale, l2_normalize, squares=False):
    """(centred, colsum), and colsumsq after them when `squares`: gram_prep or sketch_prep."""
    n, d = x.shape
    out = torch.empty((n, d), dtype=torch.float32, device=x.device)
    colsum = torch.zeros(d, dtype=torch.float64, device=x.device)
    colsumsq = torch.zeros(d, dtype=torch.float64, device=x.device) if squares else None
    args = (x.data_ptr(), _DTYPE_CODES[x.dtype], n, d, x.stride(0), bool(l2_normalize),
            _ptr(shift), _ptr(inv_scale), out.data_ptr(), colsum.data_ptr(), _ptr(colsumsq))
    _launch("gram_prep", x.device, args)
    return (out, colsum, colsumsq) if squares else (out, colsum)


def _native_projected_sqnorm(x, shift, inv_scale, l2_normalize, w):
    n, d = x.shape
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    args = (x.data_ptr(), _DTYPE_CODES[x.dtype], n, d, x.stride(0), bool(l2_normalize),
            _ptr(shift), _ptr(inv_scale), w.data_ptr(), w.shape[1], out.data_ptr())
    _launch("projected_sqnorm", x.device, args)
    return out


def _native_attention_mass(q, k, key_valid, row_is_instruction, col_is_vision, key_lo, key_hi,
                           scale, softcap):
    b, heads, seq, hd = q.shape
    out = torch.empty((b, seq), dtype=torch.float32, device=q.device)  # every entry written
    args = (q.data_ptr(), k.data_ptr(), _DTYPE_CODES[q.dtype], b, heads, k.shape[1], seq, hd,
            key_valid.data_ptr(), row_is_instruction.data_ptr(), col_is_vision.data_ptr(),
            key_lo.data_ptr(), key_hi.data_ptr(), float(scale), float(softcap or 0.0), out.data_ptr())
    _launch("attention_mass", q.device, args)
    return out


def _native_top_mass_mean(hidden, mass, col_is_vision, tau):
    b, seq, dim = hidden.shape
    out = torch.empty((b, dim), dtype=torch.float32, device=hidden.device)
    kept = torch.empty(b, dtype=torch.int64, device=hidden.device)
    args = (hidden.data_ptr(), _DTYPE_CODES[hidden.dtype], b, seq, dim, mass.data_ptr(),
            col_is_vision.data_ptr(), float(tau), out.data_ptr(), kept.data_ptr())
    _launch("top_mass_mean", hidden.device, args)
    return out, kept


def _self_check(name: str, device: torch.device) -> bool:
    """The native kernel against its twin on a small input that reaches every code path."""
    gen = torch.Generator().manual_seed(1234)
    if name == "attention_mass":  # 70 tokens: several row and key tiles; padding both sides; GQA;
        # causal rows in sample 0, a sliding window of 20 keys and soft-capping in sample 1
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
        got = _native_attention_mass(q, k, *masks, *ranges, 0.2, 3.0)
        want = twins.attention_mass(q, k, *masks, 0.2, ranges, 3.0)
        return torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    if name == "top_mass_mean":
        hidden = torch.randn(3, 40, 70, generator=gen).to(device=device, dtype=torch.bfloat16)
        mass = (torch.rand(3, 40, generator=gen, dtype=torch.float64) ** 3).to(device)
        vision = torch.rand(3, 40, generator=gen) < 0.6
        vision[2] = False
        got, kept = _native_top_mass_mean(hidden, mass, vision.to(device), 0.5)
        want, want_kept = twins.top_mass_mean(hidden, mass, vision.to(device), 0.5)
        return torch.equal(kept, want_kept) and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    x = torch.randn(37, 70, generator=gen).to(device=device, dtype=torch.float16)
    shift = torch.randn(70, generator=gen, dtype=torch.float64).to(device)
    scale = torch.rand(70, generator=gen, dtype=torch.float64).to(device) + 0.5
    w = torch.randn(70, 300, generator=gen).to(device)
    if name == "gram_prep":  # with the squares: sketch_prep's path too
        got, want = _native_gram_prep(x, shift, scale, True, True), twins.sketch_prep(x, shift, scale, True)
        return all(torch.allclose(g.double(), e.double(), rtol=1e-5, atol=1e-5) for g, e in zip(got, want))
    got = _native_projected_sqnorm(x, shift, scale, True, w)
    return torch.allclose(got, twins.projected_sqnorm(x, shift, scale, True, w), rtol=1e-4, atol=1e-6)


# A GPU kernel that has never run on this machine checks itself once against its twin.
_cuda_verdict: dict[tuple[str, str], bool] = {}


def _cuda_kernel_ok(name: str, device: torch.device) -> bool:
    key = (name, str(device))
    if key not in _cuda_verdict:
        try:
            ok = _self_check(name, device)
        except RuntimeError as exc:
            ok, why = False, str(exc)
        else:
            why = "results differ from the PyTorch twin"
        if not ok:
            warnings.warn(f"scalselect: CUDA kernel {name} failed its self-check ({why}); "
                          "using the PyTorch implementation", RuntimeWarning, stacklevel=3)
        _cuda_verdict[key] = ok
    return _cuda_verdict[key]


def _use_native(name: str, device: torch.device, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "torch":
        return False
    if not native_available(device, name):
        if backend == "native":
            raise RuntimeError(f"no native {device.type} kernel for {name}: "
                               f"{_IMPORT_ERROR or 'module built without it'}")
        return False
    if device.type == "cuda" and backend == "auto":
        return _cuda_kernel_ok(name, device)
    return True


# Kernels that fell back to their twin once already (one warning each, not one per batch).
_fallback_warned: set[str] = set()


def _native_or_twin(name: str, device: torch.device, backend: str, shape: tuple, native_fn, twin_fn):
    """native_fn(), or with backend "auto" on a GPU, twin_fn() if it raises RuntimeError: the
    first-use self-check tries one small shape, so a shape the kernel refuses (a head size beyond
    the device's shared memory, say) is met only here. "native" lets the error through."""
    try:
        return native_fn()
    except RuntimeError as exc:
        if backend != "auto" or device.type != "cuda":
            raise
        if name not in _fallback_warned:
            _fallback_warned.add(name)
            warnings.warn(f"scalselect: CUDA kernel {name} failed on shape {shape} ({exc}); "
                          "using the PyTorch implementation", RuntimeWarning, stacklevel=3)
        return twin_fn()


def gram_prep(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None = None,
              l2_normalize: bool = False, *, backend: str = "auto"):
    """Centred float32 rows and float64 column sums of a chunk; see twins.gram_prep."""
    x = _as_kernel_input(x)
    d = x.shape[1]
    shift, inv_scale = _vec(shift, d, x.device, required=True), _vec(inv_scale, d, x.device)
    if _use_native("gram_prep", x.device, backend):
        return _native_or_twin("gram_prep", x.device, backend, tuple(x.shape),
                               lambda: _native_gram_prep(x, shift, inv_scale, l2_normalize),
                               lambda: twins.gram_prep(x, shift, inv_scale, l2_normalize))
    return twins.gram_prep(x, shift, inv_scale, l2_normalize)


def sketch_prep(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None = None,
                l2_normalize: bool = False, *, backend: str = "auto"):
    """gram_prep plus the float64 column sums of squares, in the same read; see
    twins.sketch_prep. The native kernel is gram_prep's."""
    x = _as_kernel_input(x)
    d = x.shape[1]
    shift, inv_scale = _vec(shift, d, x.device, required=True), _vec(inv_scale, d, x.device)
    if _use_native("gram_prep", x.device, backend):
        return _native_or_twin("gram_prep", x.device, backend, tuple(x.shape),
                               lambda: _native_gram_prep(x, shift, inv_scale, l2_normalize, True),
                               lambda: twins.sketch_prep(x, shift, inv_scale, l2_normalize))
    return twins.sketch_prep(x, shift, inv_scale, l2_normalize)


# Above this k the CPU's BLAS GEMM beats the fused C++ kernel (benchmarks/README.md), so on the
# CPU "auto" centres with the native prep kernel and multiplies with torch.
FUSED_CPU_MAX_K = 512


def projected_sqnorm(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None,
                     l2_normalize: bool, w: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """float64 ||c_i W||^2 per row of a chunk; see twins.projected_sqnorm."""
    x = _as_kernel_input(x)
    d = x.shape[1]
    shift, inv_scale = _vec(shift, d, x.device, required=True), _vec(inv_scale, d, x.device)
    w = w.to(device=x.device, dtype=torch.float32).contiguous()
    if w.dim() != 2 or w.shape[0] != d:
        raise ValueError(f"W must be {d} x k, got shape {tuple(w.shape)}")
    if _use_native("projected_sqnorm", x.device, backend):
        if backend == "auto" and x.device.type == "cpu" and w.shape[1] > FUSED_CPU_MAX_K:
            y = _native_gram_prep(x, shift, inv_scale, l2_normalize)[0] @ w
            return y.square().sum(dim=1, dtype=torch.float64)
        return _native_or_twin("projected_sqnorm", x.device, backend, (*x.shape, w.shape[1]),
                               lambda: _native_projected_sqnorm(x, shift, inv_scale, l2_normalize, w),
                               lambda: twins.projected_sqnorm(x, shift, inv_scale, l2_normalize, w))
    return twins.projected_sqnorm(x, shift, inv_scale, l2_normalize, w)


def _mask(m: torch.Tensor, shape: tuple, device: torch.device, what: str) -> torch.Tensor:
    """A contiguous bool [B, S] mask on `device` (the kernels read its bytes as 0 / 1)."""
    if tuple(m.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(m.shape)}")
    return m.to(device=device, dtype=torch.bool).contiguous()


def _key_ranges(key_ranges, shape: tuple, device: torch.device, key_valid: torch.Tensor,
                rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) as contiguous int32 [B, S] on `device`, causal when None; every row that is
    computed must see itself (lo <= i < hi <= S), so each softmax has a key."""
    if key_ranges is None:
        return twins.causal_key_ranges(key_valid)
    lo, hi = key_ranges
    if tuple(lo.shape) != shape or tuple(hi.shape) != shape:
        raise ValueError(f"key_ranges must be two tensors of shape {shape}, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    lo, hi = (t.to(device=device, dtype=torch.int32).contiguous() for t in (lo, hi))
    at = torch.arange(shape[1], device=device)
    computed = rows & key_valid
    if bool(((lo > at) | (hi <= at) | (lo < 0) | (hi > shape[1]))[computed].any()):
        raise ValueError("key_ranges: an instruction row's keys [lo, hi) must hold the row itself "
                         "and lie within the sequence")
    return lo, hi


def attention_mass(q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor,
                   row_is_instruction: torch.Tensor, col_is_vision: torch.Tensor, scale: float,
                   key_ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
                   softcap: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """[B, S] float32 mean attention of the instruction rows on each vision token; see
    twins.attention_mass (key_ranges: the layer's per-row keys, None for causal). The native
    kernels never hold more than a tile of logits."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, S, hd], got {tuple(q.shape)} and {tuple(k.shape)}")
    b, heads, seq, hd = q.shape
    kv_heads = k.shape[1]
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, seq, hd) or kv_heads == 0 or heads == 0 or heads % kv_heads:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)} "
                         "(same B, S, hd; H a positive multiple of Hkv)")
    if k.device != q.device:
        raise ValueError(f"q is on {q.device} but k on {k.device}")
    if softcap is not None and not 0 < softcap < float("inf"):
        raise ValueError(f"softcap must be positive and finite, or None, not {softcap}")
    masks = [_mask(m, (b, seq), q.device, what) for m, what in
             ((key_valid, "key_valid"), (row_is_instruction, "row_is_instruction"),
              (col_is_vision, "col_is_vision"))]
    ranges = _key_ranges(key_ranges, (b, seq), q.device, masks[0], masks[1])
    if _use_native("attention_mass", q.device, backend):
        if q.dtype != k.dtype or q.dtype not in _DTYPE_CODES:  # the twin reads both as float32
            q, k = q.float(), k.float()
        return _native_or_twin("attention_mass", q.device, backend, (tuple(q.shape), tuple(k.shape)),
                               lambda: _native_attention_mass(q.contiguous(), k.contiguous(), *masks,
                                                              *ranges, scale, softcap),
                               lambda: twins.attention_mass(q, k, *masks, scale, ranges, softcap))
    return twins.attention_mass(q, k, *masks, scale, ranges, softcap)


def top_mass_mean(hidden: torch.Tensor, mass: torch.Tensor, col_is_vision: torch.Tensor,
                  tau: float, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """float32 mean hidden state of each sample's most-attended vision tokens [B, D] and their
    counts [B] (int64); see twins.top_mass_mean."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, S, D], got shape {tuple(hidden.shape)}")
    b, seq, _ = hidden.shape
    if tuple(mass.shape) != (b, seq):
        raise ValueError(f"mass must have shape {(b, seq)}, got {tuple(mass.shape)}")
    cols = _mask(col_is_vision, (b, seq), hidden.device, "col_is_vision")
    mass = mass.to(hidden.device)
    if _use_native("top_mass_mean", hidden.device, backend):
        if hidden.dtype not in _DTYPE_CODES:
            hidden = hidden.float()
        # float64: the twin normalises mass in float64, so the kept counts agree exactly
        return _native_or_twin("top_mass_mean", hidden.device, backend, tuple(hidden.shape),
                               lambda: _native_top_mass_mean(hidden.contiguous(),
                                                             mass.to(torch.float64).contiguous(), cols, tau),
                               lambda: twins.top_mass_mean(hidden, mass, cols, tau))
    return twins.top_mass_mean(hidden, mass, cols, tau)
