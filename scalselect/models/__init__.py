"""Model families scalselect extracts representations from.

Any image-text-to-text checkpoint whose language model is a decoder stack running its attention
through transformers' attention interface works through the generic adapter: its decoder layers
found from the model, the image placeholder token from its config, the first softmax-attention
layer from the text config's layer_types. A family file registers an Adapter only for what
differs (LLaVA-NeXT's image_newline rows among the placeholders, say); a class that cannot be
handled exactly is refused with its reason.
"""

from .adapters import (
    SOFTMAX_LAYERS,
    REFUSED,
    Adapter,
    adapter_for,
    check_layer,
    check_supported,
    first_softmax_layer,
    image_token_id,
    register,
    register_inputs,
    training_inputs,
)
from . import llava, paligemma  # noqa: F401  (the family files register themselves)

__all__ = [
    "SOFTMAX_LAYERS",
    "REFUSED",
    "Adapter",
    "adapter_for",
    "check_layer",
    "check_supported",
    "first_softmax_layer",
    "image_token_id",
    "register",
    "register_inputs",
    "training_inputs",
]
