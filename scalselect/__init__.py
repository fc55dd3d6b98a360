"""scalselect: pick the most valuable samples of a visual-instruction pool for a target VLM.

ScalSelect (arXiv 2602.11636) scores each sample by its leverage in the dominant subspace of
first-layer representations; this package computes those scores exactly, in linear time.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .data import Pool, read_pool, write_subset
from .errors import InputError
from .pipeline import ExtractOptions, extract_store
from .scoring import LeverageResult, leverage_scores
from .select import parse_budget, read_scores, select_subset, write_scores
from .store import StoreWriter, load_representations, open_rows, read_skipped, read_store, write_store

try:
    __version__ = _version("scalselect")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"


def info() -> dict:
    """Version, compiled backends and CUDA architectures, whether a GPU is usable, and the
    pyarrow that reads Parquet and save_to_disk pools (None: not installed)."""
    import importlib.metadata

    import torch

    from .kernels import build_info

    gpu = torch.cuda.is_available()
    try:
        arrow = importlib.metadata.version("pyarrow")
    except importlib.metadata.PackageNotFoundError:
        arrow = None
    return {"version": __version__, "torch": torch.__version__, **build_info(),
            "gpu_usable": gpu, "gpu": torch.cuda.get_device_name(0) if gpu else None, "pyarrow": arrow}


__all__ = ["ExtractOptions", "InputError", "LeverageResult", "Pool", "StoreWriter", "extract_store", "info", "leverage_scores",
           "load_representations", "open_rows", "read_skipped", "parse_budget", "read_pool", "read_scores", "read_store", "select_subset",
           "write_scores", "write_store", "write_subset", "__version__"]
