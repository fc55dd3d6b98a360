"""Load a user's checkpoint directory like a trainer would: AutoProcessor + AutoModelForImageTextToText.

Nothing is downloaded (local files only), and code shipped with a checkpoint runs only when the
user passes trust_remote_code. Only what the fast path runs is loaded: the vision tower, the
projector, the embeddings and the decoder layers up to the probed one (usually layer 0: a 72B
checkpoint then needs a few GB).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from pathlib import Path

import torch

from ..errors import InputError, first_line
from . import adapter_for

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# weights a cut model may lack without changing its output: the LM head and the final norm
_UNUSED_WEIGHTS = re.compile(r"(^|\.)lm_head\.|(^|\.)(language_model|text_model)(\.model)?\.norm\.")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def read_config(path: str | os.PathLike, trust_remote_code: bool = False):
    """The checkpoint's config (cheap: no weights), or InputError."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"--model {path}: not a checkpoint directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many kinds for a bad config
        raise InputError(f"--model {path}: cannot read its config ({first_line(exc)})") from None


def fingerprint(path: str | os.PathLike) -> str:
    """Identifies a checkpoint's contents cheaply: config.json, and each weight file's name and size."""
    path = Path(path)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name.endswith(".index.json"):
            digest.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _cut_config(config, layers: int):
    """A copy of `config` whose language model has its first `layers` decoder layers only (KV
    sharing, as Gemma 4's last layers reuse earlier layers' keys and values, starting where it
    started)."""
    cut = copy.deepcopy(config)
    text = cut.get_text_config()
    shared = getattr(text, "num_kv_shared_layers", 0) or 0
    if shared:
        text.num_kv_shared_layers = max(0, layers - (text.num_hidden_layers - shared))
    text.num_hidden_layers = layers
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:layers]
    return cut


def _per_layer_width(config) -> int:
    """Values per decoder layer in weights that hold some for every layer (Gemma 4's per-layer
    input embeddings and their projection, laid out layer by layer), else 0."""
    return int(getattr(config.get_text_config(), "hidden_size_per_layer_input", 0) or 0)


def _checkpoint_tensor(path: Path, name: str, rows: slice | None, cols: slice | None):
    """Part of one tensor of the checkpoint's safetensors files (the key itself, or the one key
    ending like it), read without loading the rest."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(f, "pt") as handle:
            keys = [k for k in handle.keys() if k == name or k.endswith("." + name.split(".", 1)[-1])]
            if keys:
                part = handle.get_slice(keys[0])
                return part[rows or slice(None), cols or slice(None)]
    raise InputError(f"--model {path}: its weight {name} is not in its safetensors files")


def _fill_per_layer_weights(path: Path, model, mismatched: list, width: int, layers: int, every: int) -> None:
    """The weights sized by the layer count, cut to the loaded layers: of the checkpoint's
    `every` x `width` columns (embeddings) or rows (the projection), the first `layers` x `width`.
    Any other mismatch is an error: the checkpoint does not fit its own config."""
    params = dict(model.named_parameters())
    for name, saved, made in mismatched:
        saved, made = tuple(saved), tuple(made)
        if len(saved) != 2 or name not in params:
            raise InputError(f"--model {path}: {name} has shape {saved}, its config says {made}")
        if made == (saved[0], layers * width) and saved[1] == every * width:
            part = _checkpoint_tensor(path, name, None, slice(0, layers * width))
        elif made == (layers * width, saved[1]) and saved[0] == every * width:
            part = _checkpoint_tensor(path, name, slice(0, layers * width), None)
        else:
            raise InputError(f"--model {path}: {name} has shape {saved}, its config says {made}")
        with torch.no_grad():
            params[name].copy_(part.to(params[name].dtype))


def load_checkpoint(
    path: str | os.PathLike,
    config,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    progress: bool = True,
    layer: int = 0,
    check_processor=None,
):
    """(processor, the model up to decoder layer `layer` in eval mode on `device`, its adapter);
    InputError when it cannot load or lacks weights the fast path uses. check_processor(processor)
    runs before the weights are read, so a processor or template that cannot work fails fast."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging

    path = Path(path)
    if not progress:
        logging.disable_progress_bar()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ImportError as exc:
        raise InputError(
            f"--model {path}: its processor needs a package that is not installed "
            f"({first_line(exc)}); for Qwen-VL: pip install torchvision "
            "(the build that matches your torch)"
        ) from None
    except Exception as exc:  # unknown classes, broken files, ...: one line, not a traceback
        raise InputError(f"--model {path}: cannot load its processor ({first_line(exc)})") from None
    finally:
        logging.set_verbosity(verbosity)
    if getattr(processor, "chat_template", None) is None:
        raise InputError(f"--model {path}: the processor has no chat template")
    if check_processor is not None:
        check_processor(processor)
    logging.set_verbosity_error()  # the layers left out would be reported as unused weights
    try:
        width = _per_layer_width(config)
        model, info = AutoModelForImageTextToText.from_pretrained(
            path,
            config=_cut_config(config, layer + 1),
            local_files_only=True,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=bool(width),
        )
    except Exception as exc:  # corrupt weights, unknown classes, ...: one line, not a traceback
        raise InputError(f"--model {path}: cannot load it ({first_line(exc)})") from None
    finally:
        logging.set_verbosity(verbosity)
    if width:
        _fill_per_layer_weights(
            path, model, info.get("mismatched_keys", []), width, layer + 1, int(config.get_text_config().num_hidden_layers)
        )
    missing = [k for k in info.get("missing_keys", []) if not _UNUSED_WEIGHTS.search(k)]
    if missing:
        shown = ", ".join(sorted(missing)[:4]) + (", ..." if len(missing) > 4 else "")
        raise InputError(
            f"--model {path}: the checkpoint lacks {len(missing)} weights that layers 0..{layer} "
            f"need ({shown}); they would be random"
        )
    return processor, model.to(device).eval(), adapter_for(model)
