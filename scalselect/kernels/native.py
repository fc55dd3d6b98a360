"""The compiled module and its marshalling: importing it (refusing one built from other
sources), the dtype codes of kernels.h, raw pointers, launching on a device's current stream."""

from __future__ import annotations

import torch

# Must match kKernelVersion in csrc/bindings.cpp: a module built from older sources has other
# kernel arguments, and calling it would read the wrong memory.
KERNEL_VERSION = 3

try:
    from .. import _C as C
except ImportError as exc:  # a source checkout without a build, or a broken wheel
    C = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""
    _built = C.build_info().get("kernel_version")
    if _built != KERNEL_VERSION:
        C = None
        IMPORT_ERROR = (
            f"the native module was built from other sources (kernel version {_built}, "
            f"expected {KERNEL_VERSION}); rebuild it: pip install ."
        )

# Must match scalselect::DType in csrc/include/scalselect/kernels.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def build_info() -> dict:
    """What the native module was compiled with (empty CPU/CUDA flags when it is missing)."""
    if C is None:
        return {"native": False, "cuda": False, "cuda_archs": "", "error": IMPORT_ERROR}
    return {"native": True, **C.build_info()}


def native_available(device: torch.device, kernel: str = "gram_prep") -> bool:
    """Whether `kernel` was compiled for this device type."""
    return C is not None and device.type in ("cpu", "cuda") and hasattr(C, f"{kernel}_{device.type}")


def ptr(t: torch.Tensor | None) -> int:
    """A tensor's data pointer for the kernels, 0 for None (an optional argument left out)."""
    return 0 if t is None else t.data_ptr()


def launch(name: str, device: torch.device, args: tuple) -> None:
    """Run the compiled kernel `name` for `device`: the CUDA one on the device's current stream."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # launches and allocations go to this GPU
            getattr(C, f"{name}_cuda")(*args, torch.cuda.current_stream(device).cuda_stream)
    else:
        C.set_num_threads(torch.get_num_threads())  # the kernels' threads follow torch's setting
        getattr(C, f"{name}_cpu")(*args)
