"""One mechanism for every kernel: the compiled one or its PyTorch twin. "auto" takes the
compiled kernel where it exists, and on a GPU only once it has passed its self-check against
the twin (first use, per kernel and device), falling back to the twin with one warning when it
fails or refuses a shape; "native" insists; "torch" is the twin."""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from .. import options
from . import native

BACKENDS = options.BACKENDS

# kernel name -> check(device) -> bool: the kernel against its twin on a small input that
# reaches every code path (registered by the op families).
SELF_CHECKS: dict[str, Callable[[torch.device], bool]] = {}
# (kernel, device) -> whether its self-check passed, on this machine, in this process
cuda_verdict: dict[tuple[str, str], bool] = {}
# device -> why no CUDA kernel can run there (a driver too old for them, a GPU they were not
# built for, no usable GPU at all): found by the first self-check that raises, said once.
cuda_unusable: dict[str, str] = {}
# Kernels that fell back to their twin once already (one warning each, not one per batch).
fallback_warned: set[str] = set()


def cuda_kernel_ok(name: str, device: torch.device) -> bool:
    key = (name, str(device))
    if key not in cuda_verdict:
        if str(device) in cuda_unusable:
            cuda_verdict[key] = False
            return False
        try:
            ok = SELF_CHECKS[name](device)
        except torch.cuda.OutOfMemoryError:  # the GPU is full now, not unfit: ask again next time
            return False
        except RuntimeError as exc:  # the launch (or CUDA itself) failed: so would every kernel's
            cuda_unusable[str(device)] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(
                f"scalselect: the CUDA kernels cannot run on {device} ({cuda_unusable[str(device)]}); "
                "using the PyTorch implementations",
                RuntimeWarning,
                stacklevel=3,
            )
            ok = False
        else:
            if not ok:
                warnings.warn(
                    f"scalselect: CUDA kernel {name} failed its self-check (results differ from the PyTorch twin); "
                    "using the PyTorch implementation",
                    RuntimeWarning,
                    stacklevel=3,
                )
        cuda_verdict[key] = ok
    return cuda_verdict[key]


def use_native(name: str, device: torch.device, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "torch":
        return False
    if not native.native_available(device, name):
        if backend == "native":
            raise RuntimeError(f"no native {device.type} kernel for {name}: {native.IMPORT_ERROR or 'module built without it'}")
        return False
    if device.type == "cuda" and backend == "auto":
        return cuda_kernel_ok(name, device)
    return True


def native_or_twin(name: str, device: torch.device, backend: str, shape: tuple, native_fn, twin_fn):
    """native_fn(), or with backend "auto" on a GPU, twin_fn() if it raises RuntimeError: the
    first-use self-check tries one small shape, so a shape the kernel refuses (a head size beyond
    the device's shared memory, say) is met only here. "native" lets the error through."""
    try:
        return native_fn()
    except RuntimeError as exc:
        if backend != "auto" or device.type != "cuda":
            raise
        if name not in fallback_warned:
            fallback_warned.add(name)
            warnings.warn(
                f"scalselect: CUDA kernel {name} failed on shape {shape} ({exc}); using the PyTorch implementation",
                RuntimeWarning,
                stacklevel=3,
            )
        return twin_fn()


def run(name: str, device: torch.device, backend: str, shape: tuple, native_fn, twin_fn):
    """The kernel `name` as `backend` says: native_fn() or twin_fn() (see the module's docstring)."""
    if use_native(name, device, backend):
        return native_or_twin(name, device, backend, shape, native_fn, twin_fn)
    return twin_fn()
