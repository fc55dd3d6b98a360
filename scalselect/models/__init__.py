"""Model families scalselect extracts representations from: one small adapter per family.

An adapter says where the language model's decoder layers are and which token id marks the
vision tokens; adding a family is one file that calls `register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InputError


@dataclass(frozen=True)
class Adapter:
    family: str
    decoder_layers: Callable  # model -> the language model's list of decoder layers
    image_token_id: Callable  # model -> id of the expanded image placeholder token


_ADAPTERS: dict[str, Adapter] = {}


def register(model_class: str, adapter: Adapter) -> None:
    _ADAPTERS[model_class] = adapter


def adapter_for(model) -> Adapter:
    name = type(model).__name__
    if name not in _ADAPTERS:
        raise InputError(f"unsupported model class {name}; supported: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[name]


from . import llava  # noqa: E402,F401  (registers itself)
from . import qwen_vl  # noqa: E402,F401  (registers itself)
