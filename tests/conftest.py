import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """CUDA tests run only where a GPU and the CUDA kernels are present."""
    from scalselect.kernels import build_info

    if torch.cuda.is_available() and build_info()["cuda"]:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and scalselect built with CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
