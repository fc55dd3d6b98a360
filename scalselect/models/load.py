"""Load a user's checkpoint directory like a trainer would: AutoProcessor + AutoModelForImageTextToText.

Nothing is downloaded (local files only), and code shipped with a checkpoint runs only when the
user passes trust_remote_code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError
from . import adapter_for

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no usable CUDA GPU here")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_checkpoint(path: str | os.PathLike, device: torch.device, dtype: torch.dtype,
                    trust_remote_code: bool = False, progress: bool = True):
    """(processor, model in eval mode on `device`, its adapter); InputError when it cannot load."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging

    if not progress:
        logging.disable_progress_bar()

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"--model {path}: not a checkpoint directory (no config.json)")
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype,
            attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"--model {path}: cannot load it ({first})") from None
    adapter = adapter_for(model)
    if getattr(processor, "chat_template", None) is None:
        raise InputError(f"--model {path}: the processor has no chat template")
    return processor, model.to(device).eval(), adapter
