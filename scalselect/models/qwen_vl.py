"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: a ViT whose 2x2 patch merger gives the vision tokens, and a
Qwen decoder with multimodal rotary positions (mrope).

The three families differ here only in data. Vision tokens are the image pad token
(<|image_pad|>, config.image_token_id) that the processor repeats once per merged patch.
The mrope position ids (temporal/height/width per vision token, text positions continuing after
an image from its largest grid side) are computed by the model's own forward from input_ids,
mm_token_type_ids, image_grid_thw and attention_mask; padding is skipped there, so a left- or
right-padded row gets the same positions as the sample alone. The batch must therefore carry the
processor's mm_token_type_ids and image_grid_thw.

Qwen3-VL DeepStack: Qwen3VLTextModel adds visual features of early ViT blocks to the vision
tokens' hidden states AFTER decoder layers 0, 1, ... (`_deepstack_process`, on a copy of the
layer's output). What a full forward returns as hidden_states[1] is recorded by a forward hook on
Qwen3VLTextDecoderLayer, i.e. layer 0's own output WITHOUT the DeepStack addition (the addition
first enters hidden_states[2], through layer 1's input). The layer-0 hook of scalselect.extract
takes that same output, so no Qwen3-specific hook is needed.
"""

from . import Adapter, register


def _decoder_layers(model):
    return model.model.language_model.layers


def _image_token_id(model):
    return model.config.image_token_id


for _class, _family in [("Qwen2VLForConditionalGeneration", "qwen2_vl"),
                        ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
                        ("Qwen3VLForConditionalGeneration", "qwen3_vl")]:
    register(_class, Adapter(family=_family, decoder_layers=_decoder_layers,
                             image_token_id=_image_token_id))
