"""scalselect's kernels: each compiled one (C++ always, CUDA when built with it) beside its
pure-PyTorch twin (twins.py, the definition), picked per call by one mechanism (dispatch.py).

The public functions take and return torch tensors and check them before a native call;
`backend` is "auto" (native when available), "native" (error if not) or "torch" (the twin).
native.py holds the compiled module and its marshalling; leverage.py and extraction.py the op
families.
"""

from __future__ import annotations

from . import twins
from .dispatch import BACKENDS
from .extraction import attention_mass, top_mass_mean
from .leverage import FUSED_CPU_MAX_K, gram_prep, projected_sqnorm, sketch_prep
from .native import KERNEL_VERSION, build_info, native_available

__all__ = [
    "BACKENDS",
    "FUSED_CPU_MAX_K",
    "KERNEL_VERSION",
    "attention_mass",
    "build_info",
    "gram_prep",
    "native_available",
    "projected_sqnorm",
    "sketch_prep",
    "top_mass_mean",
    "twins",
]
