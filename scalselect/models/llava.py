"""LLaVA-1.5 (LlavaForConditionalGeneration): CLIP vision tower, projector, Llama decoder."""

from . import Adapter, register

register("LlavaForConditionalGeneration", Adapter(
    family="llava",
    decoder_layers=lambda model: model.model.language_model.layers,
    image_token_id=lambda model: model.config.image_token_id,
))
