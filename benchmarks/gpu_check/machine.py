"""Facts about the machine a step ran on, for the report: Python, torch and CUDA, the GPU, and
which scalselect was imported and what it was built with."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path


def machine_facts() -> dict:
    facts = {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["cuda_available"] = torch.cuda.is_available()
        facts["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            facts["gpu"] = {
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "sms": p.multi_processor_count,
                "memory_bytes": p.total_memory,
                "count": torch.cuda.device_count(),
                **{
                    k: getattr(p, k)
                    for k in (
                        "shared_memory_per_block",
                        "shared_memory_per_block_optin",
                        "shared_memory_per_multiprocessor",
                        "L2_cache_size",
                    )
                    if hasattr(p, k)
                },
            }
    except Exception as exc:  # the report must be written whatever is broken
        facts["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        from importlib.metadata import version

        facts["transformers"] = version("transformers")
    except Exception as exc:
        facts["transformers_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import scalselect
        from scalselect.kernels import build_info

        facts["scalselect"] = {
            "version": scalselect.__version__,
            "path": str(Path(scalselect.__file__).parent),
            "build": build_info(),
        }
    except Exception as exc:
        facts["scalselect_error"] = f"{type(exc).__name__}: {exc}"
    return facts
