"""scalselect: pick the most valuable samples of a visual-instruction pool for a target VLM.

ScalSelect (arXiv 2602.11636) scores each sample by its leverage in the dominant subspace of
first-layer representations; this package computes those scores exactly, in linear time.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version as _version

from .errors import InputError

try:
    __version__ = _version("scalselect")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

# The public names, imported when first used: `import scalselect` (and every command that needs
# neither) then costs no torch or transformers import.
_HOMES = {
    "Pool": "data",
    "read_pool": "data",
    "write_subset": "data",
    "ExtractOptions": "pipeline",
    "extract_store": "pipeline",
    "LeverageResult": "scoring",
    "leverage_scores": "scoring",
    "parse_budget": "select",
    "read_scores": "select",
    "select_subset": "select",
    "write_scores": "select",
    "StoreWriter": "stores",
    "load_representations": "stores",
    "open_rows": "stores",
    "read_skipped": "stores",
    "read_store": "stores",
    "write_store": "stores",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # a submodule: scalselect.store, ...
        raise AttributeError(f"module 'scalselect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


def info() -> dict:
    """Version, compiled backends and CUDA architectures, whether a GPU is usable, and the
    pyarrow that reads Parquet and save_to_disk pools (None: not installed)."""
    import torch

    from .kernels import build_info

    gpu = torch.cuda.is_available()
    try:
        arrow = importlib.metadata.version("pyarrow")
    except importlib.metadata.PackageNotFoundError:
        arrow = None
    return {
        "version": __version__,
        "torch": torch.__version__,
        **build_info(),
        "gpu_usable": gpu,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "pyarrow": arrow,
    }


__all__ = [
    "ExtractOptions",
    "InputError",
    "LeverageResult",
    "Pool",
    "StoreWriter",
    "extract_store",
    "info",
    "leverage_scores",
    "load_representations",
    "open_rows",
    "read_skipped",
    "parse_budget",
    "read_pool",
    "read_scores",
    "read_store",
    "select_subset",
    "write_scores",
    "write_store",
    "write_subset",
    "__version__",
]
