"""Tiny, randomly initialised checkpoints of real VLM architectures, built from configs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences, the
weights are random. Tests and the offline demo save one with `save_pretrained` and load it back
through AutoProcessor / AutoModelForImageTextToText, exactly as a user's checkpoint is loaded.
"""

from __future__ import annotations

from pathlib import Path

from .llava import LLAVA_CHAT_TEMPLATE

_CORPUS = [
    "USER: ASSISTANT: What is shown in the image? Describe the picture in detail.",
    "A cat sits on a red sofa next to a window. The sky is blue and there are two dogs.",
    "How many people are there? What colour is the car? Read the text on the sign.",
    "The answer is yes. No, it is not. There are 3 apples, 12 oranges and 7 bananas.",
]


def _tokenizer(vocab_size: int = 400, *, specials: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
               corpus: tuple[str, ...] = (), **special_tokens):
    """A byte-level BPE tokenizer trained on _CORPUS (+ `corpus`) with `specials` kept whole.

    special_tokens: the PreTrainedTokenizerFast roles (unk_token, bos_token, ..., extra_special_tokens);
    the defaults are LLaVA's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not special_tokens:
        special_tokens = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                              extra_special_tokens={"image_token": "<image>"})
    unk = special_tokens.get("unk_token")
    tok = Tokenizer(models.BPE(unk_token=unk) if unk else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS + list(corpus), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def save_tiny_llava(out: str | Path, *, image_size: int = 28, seed: int = 0, text_layers: int = 2,
                    text_hidden: int = 64, text_heads: int = 4, text_kv_heads: int = 2,
                    vision_hidden: int = 32, vision_layers: int = 2) -> Path:
    """A LLaVA-1.5-architecture checkpoint (CLIP vision tower + Llama LM, GQA) in `out`.

    (image_size / 14)^2 vision tokens per image; the defaults are tiny, the keywords give the
    benchmarks a LLaVA-shaped model of any depth and width."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out = Path(out)
    tokenizer = _tokenizer()
    patch = 14
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=2,
                              image_size=image_size, patch_size=patch, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden,
                       intermediate_size=2 * text_hidden, num_hidden_layers=text_layers,
                       num_attention_heads=text_heads, num_key_value_heads=text_kv_heads,
                       max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default",
                               chat_template=LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --- Qwen2-VL, Qwen2.5-VL, Qwen3-VL -------------------------------------------------------------

_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>")

_QWEN_CORPUS = ("system\nYou are a helpful assistant.", "user\nWhat is in the picture?",
                "assistant\nThe picture shows a cat.")

# One part of a Qwen-VL message: an image part becomes <|vision_start|><|image_pad|><|vision_end|>.
_QWEN_PART = (
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
)

# The Qwen2-VL / Qwen2.5-VL chat template (ChatML; a default system turn; each image part becomes
# <|vision_start|><|image_pad|><|vision_end|> where it stands in the user turn).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    + _QWEN_PART +
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's format, without the tool-calling branches: ChatML, no default system turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    + _QWEN_PART +
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tokenizer():
    return _tokenizer(specials=_QWEN_SPECIALS, corpus=_QWEN_CORPUS, eos_token="<|im_end|>",
                      pad_token="<|endoftext|>")


def _qwen_ids(tokenizer) -> dict:
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("pad", "<|endoftext|>"), ("eos", "<|im_end|>"), ("image", "<|image_pad|>"),
        ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>")]}


def _qwen_text_config(tokenizer, ids: dict, mrope_section: list[int], mrope_interleaved: bool = False,
                      bos_is_pad: bool = False, **extra) -> dict:
    """A Qwen decoder: 2 layers, hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16.

    mrope_section splits the head_dim / 2 = 8 rotary frequencies over (temporal, height, width)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section}
    if mrope_interleaved:
        rope["mrope_interleaved"] = True
    if bos_is_pad:  # as Qwen2's config has it
        extra["bos_token_id"] = ids["pad"]
    return dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters=rope, pad_token_id=ids["pad"], eos_token_id=ids["eos"], **extra)


def _qwen_special_ids(ids: dict) -> dict:
    return dict(image_token_id=ids["image"], video_token_id=ids["video"],
                vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])


def _qwen_pixels(patch: int, merge: int = 2, min_tokens: int = 4, max_tokens: int = 16) -> dict:
    """Image processor size bounds in pixels: between min_tokens and max_tokens vision tokens per image
    (one vision token = a merge x merge block of patch x patch pixels)."""
    unit = (patch * merge) ** 2
    return {"shortest_edge": unit * min_tokens, "longest_edge": unit * max_tokens}


def _save_tiny_qwen(out, seed: int, family: str, text: dict, vision: dict, template: str,
                    image_kwargs: dict | None = None) -> Path:
    """Build the `family` classes of transformers ("Qwen2VL", ...) from these configs, save them."""
    import torch
    import transformers

    cls = {kind: getattr(transformers, f"{family}{kind}")
           for kind in ("Config", "ForConditionalGeneration", "Processor")}
    video_cls = transformers.Qwen3VLVideoProcessor if family == "Qwen3VL" else transformers.Qwen2VLVideoProcessor
    tokenizer = _qwen_tokenizer()
    ids = _qwen_ids(tokenizer)
    config = cls["Config"](text_config=_qwen_text_config(tokenizer, ids, **text), vision_config=vision,
                           **_qwen_special_ids(ids))
    torch.manual_seed(seed)
    model = cls["ForConditionalGeneration"](config).eval()
    patch = vision["patch_size"]
    images = dict(size=_qwen_pixels(patch), patch_size=patch, merge_size=2)
    processor = cls["Processor"](
        image_processor=transformers.Qwen2VLImageProcessor(**images, **(image_kwargs or {})),
        video_processor=video_cls(**images), tokenizer=tokenizer, chat_template=template)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_qwen2_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2-VL-architecture checkpoint (ViT with 2x2 patch merger + Qwen2 LM with mrope, GQA).

    Patch 14, merge 2: a 56x56 image gives 2x2 = 4 vision tokens; each image gives 4 to 16."""
    return _save_tiny_qwen(
        out, seed, "Qwen2VL", dict(mrope_section=[2, 3, 3], bos_is_pad=True),
        dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
             spatial_merge_size=2, temporal_patch_size=2),
        QWEN2_VL_CHAT_TEMPLATE)


def save_tiny_qwen2_5_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2.5-VL-architecture checkpoint: windowed-attention ViT (window 56 px = 2x2 merged
    tokens; block 1 full attention), RMSNorm/SwiGLU vision blocks, Qwen2 LM with mrope, GQA."""
    return _save_tiny_qwen(
        out, seed, "Qwen2_5_VL", dict(mrope_section=[2, 3, 3], bos_is_pad=True),
        dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
             patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
             fullatt_block_indexes=[1]),
        QWEN2_VL_CHAT_TEMPLATE)


def save_tiny_qwen3_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen3-VL-architecture checkpoint: ViT (patch 16, learned position grid 8x8) whose blocks 0
    and 1 also feed DeepStack features into the LM after decoder layers 0 and 1; Qwen3 LM (q/k norm,
    interleaved mrope), GQA. A 64x64 image gives 2x2 = 4 vision tokens; each image gives 4 to 16."""
    return _save_tiny_qwen(
        out, seed, "Qwen3VL", dict(mrope_section=[4, 2, 2], mrope_interleaved=True, head_dim=16),
        dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
             patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
             deepstack_visual_indexes=[0, 1]),
        QWEN3_VL_CHAT_TEMPLATE, image_kwargs=dict(image_mean=[0.5] * 3, image_std=[0.5] * 3))
