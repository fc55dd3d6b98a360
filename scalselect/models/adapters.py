"""Adapters: how scalselect finds what it needs in a model (its decoder layers, the image
placeholder token, the first softmax-attention layer), the generic adapter, the refusals, and
the registries that family files add to (scalselect.models.llava, scalselect.models.paligemma)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InputError

# Layer kinds of text configs' layer_types whose attention is a softmax over keys.
SOFTMAX_LAYERS = ("full_attention", "sliding_attention", "chunked_attention", "attention")

# Classes that cannot be probed exactly, with the reason.
REFUSED = {
    "MllamaForConditionalGeneration": "the image reaches the language model through cross-attention "
    "layers, not as tokens its first layers attend to",
}


def _decoder_layers(model):
    """The language model's decoder layers: model.get_decoder().layers, else the one ModuleList
    named "layers" outside the vision tower."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    found = [
        m
        for name, m in model.named_modules()
        if name.split(".")[-1] == "layers"
        and isinstance(m, torch.nn.ModuleList)
        and "vision" not in name
        and "visual" not in name
    ]
    if len(found) != 1:
        raise InputError(f"{type(model).__name__}: cannot find its language model's decoder layers")
    return found[0]


def image_token_id(config) -> int:
    """The id of the expanded image placeholder token (the positions that receive image features)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise InputError(f"{type(config).__name__}: its config names no image placeholder token (image_token_id / image_token_index)")


def first_softmax_layer(config) -> int:
    """Index of the first decoder layer with softmax attention (0 where layer_types is absent)."""
    kinds = getattr(config.get_text_config(), "layer_types", None)
    if not kinds:
        return 0
    for i, kind in enumerate(kinds):
        if kind in SOFTMAX_LAYERS:
            return i
    raise InputError(
        f"{type(config).__name__}: no decoder layer has softmax attention (layer kinds: {', '.join(sorted(set(kinds)))})"
    )


def check_layer(config, layer: int) -> None:
    """InputError unless decoder layer `layer` exists and has softmax attention."""
    text = config.get_text_config()
    count = int(text.num_hidden_layers)
    if not 0 <= layer < count:
        raise InputError(f"--layer {layer}: the language model has decoder layers 0..{count - 1}")
    kinds = getattr(text, "layer_types", None)
    if kinds and kinds[layer] not in SOFTMAX_LAYERS:
        raise InputError(f"--layer {layer}: that decoder layer is {kinds[layer]}, not softmax attention")


def check_supported(config) -> None:
    """InputError (one line: the class and why) for a checkpoint that cannot be handled exactly."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in REFUSED:
            raise InputError(f"{name} is not supported: {REFUSED[name]}")
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(
            f"{names[0] if names else type(config).__name__} is not supported: an "
            "encoder-decoder model has no decoder-only layer stack to probe"
        )
    try:
        image_token_id(config)
    except InputError as exc:
        raise InputError(
            f"{names[0] if names else type(config).__name__} is not an image-text model: {str(exc).split(': ', 1)[1]}"
        ) from None
    first_softmax_layer(config)


@dataclass(frozen=True)
class Adapter:
    family: str
    decoder_layers: Callable = _decoder_layers  # model -> the language model's decoder layers
    # model -> the learned vector some placeholder positions hold instead of image features
    image_newline: Callable = lambda model: None


_ADAPTERS: dict[str, Adapter] = {}
# processor class -> f(inputs, vision, instruction) -> inputs: what a family's trainer adds to
# the processor's output of one sample (PaliGemma's prefix / suffix split)
_INPUT_RULES: dict[str, Callable] = {}


def register_inputs(processor_class: str, rule: Callable) -> None:
    _INPUT_RULES[processor_class] = rule


def training_inputs(processor, inputs: dict, vision, instruction) -> dict:
    """The processor's output of one sample as the family's trainer feeds it to the model."""
    rule = _INPUT_RULES.get(type(processor).__name__)
    return inputs if rule is None else rule(inputs, vision, instruction)


def register(model_class: str, adapter: Adapter) -> None:
    _ADAPTERS[model_class] = adapter


def adapter_for(model) -> Adapter:
    name = type(model).__name__
    if name in REFUSED:
        raise InputError(f"{name} is not supported: {REFUSED[name]}")
    if name in _ADAPTERS:
        return _ADAPTERS[name]
    return _ADAPTERS.setdefault(name, Adapter(family=getattr(model.config, "model_type", name)))
