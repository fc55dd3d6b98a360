"""Tiny, randomly initialised checkpoints of real VLM architectures, built from configs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences, the
weights are random. Tests and the offline demo save one with `save_pretrained` and load it back
through AutoProcessor / AutoModelForImageTextToText, exactly as a user's checkpoint is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .llava import LLAVA_CHAT_TEMPLATE

_CORPUS = [
    "USER: ASSISTANT: What is shown in the image? Describe the picture in detail.",
    "A cat sits on a red sofa next to a window. The sky is blue and there are two dogs.",
    "How many people are there? What colour is the car? Read the text on the sign.",
    "The answer is yes. No, it is not. There are 3 apples, 12 oranges and 7 bananas.",
]


def byte_tokenizer(
    vocab_size: int = 400,
    *,
    specials: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
    corpus: tuple[str, ...] = (),
    **special_tokens,
):
    """A byte-level BPE tokenizer trained on _CORPUS (+ `corpus`) with `specials` kept whole.

    special_tokens: the PreTrainedTokenizerFast roles (unk_token, bos_token, ..., extra_special_tokens);
    the defaults are LLaVA's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not special_tokens:
        special_tokens = dict(
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )
    unk = special_tokens.get("unk_token")
    tok = Tokenizer(models.BPE(unk_token=unk) if unk else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS + list(corpus), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def save_tiny_llava(
    out: str | Path,
    *,
    image_size: int = 28,
    seed: int = 0,
    text_layers: int = 2,
    text_hidden: int = 64,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
) -> Path:
    """A LLaVA-1.5-architecture checkpoint (CLIP vision tower + Llama LM, GQA) in `out`.

    (image_size / 14)^2 vision tokens per image; the defaults are tiny, the keywords give the
    benchmarks a LLaVA-shaped model of any depth and width."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out)
    tokenizer = byte_tokenizer()
    patch = 14
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --- Qwen2-VL, Qwen2.5-VL, Qwen3-VL -------------------------------------------------------------

_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_QWEN_CORPUS = ("system\nYou are a helpful assistant.", "user\nWhat is in the picture?", "assistant\nThe picture shows a cat.")

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
    "{% else %}{% for content in message['content'] %}" + _QWEN_PART + "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The turns of Qwen3-VL-Instruct's and Qwen3.5's formats, without the tool-calling branches:
# ChatML, no default system turn.
_QWEN3_TURNS = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}" + _QWEN_PART + "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
)
QWEN3_VL_CHAT_TEMPLATE = _QWEN3_TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def _qwen_tokenizer():
    return byte_tokenizer(specials=_QWEN_SPECIALS, corpus=_QWEN_CORPUS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _qwen_ids(tokenizer) -> dict:
    return {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in [
            ("pad", "<|endoftext|>"),
            ("eos", "<|im_end|>"),
            ("image", "<|image_pad|>"),
            ("video", "<|video_pad|>"),
            ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"),
        ]
    }


def _qwen_text_config(
    tokenizer, ids: dict, mrope_section: list[int], mrope_interleaved: bool = False, bos_is_pad: bool = False, **extra
) -> dict:
    """A Qwen decoder: 2 layers, hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16.

    mrope_section splits the head_dim / 2 = 8 rotary frequencies over (temporal, height, width)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section}
    if mrope_interleaved:
        rope["mrope_interleaved"] = True
    if bos_is_pad:  # as Qwen2's config has it
        extra["bos_token_id"] = ids["pad"]
    rope |= extra.pop("rope_extra", {})
    return (
        dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters=rope,
            pad_token_id=ids["pad"],
            eos_token_id=ids["eos"],
        )
        | extra
    )


def _qwen_special_ids(ids: dict) -> dict:
    return dict(
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
    )


def _qwen_pixels(patch: int, merge: int = 2, min_tokens: int = 4, max_tokens: int = 16) -> dict:
    """Image processor size bounds in pixels: between min_tokens and max_tokens vision tokens per image
    (one vision token = a merge x merge block of patch x patch pixels)."""
    unit = (patch * merge) ** 2
    return {"shortest_edge": unit * min_tokens, "longest_edge": unit * max_tokens}


def _save_tiny_qwen(
    out, seed: int, family: str, text: dict, vision: dict, template: str, image_kwargs: dict | None = None, tokenizer=None
) -> Path:
    """Build the `family` classes of transformers ("Qwen2VL", ...) from these configs, save them.

    Qwen3.5 has no processor of its own: it uses Qwen3-VL's (processor and video processor)."""
    import torch
    import transformers

    cls = {kind: getattr(transformers, f"{family}{kind}") for kind in ("Config", "ForConditionalGeneration")}
    cls["Processor"] = getattr(transformers, f"{family}Processor", transformers.Qwen3VLProcessor)
    video_cls = transformers.Qwen3VLVideoProcessor if family in ("Qwen3VL", "Qwen3_5") else transformers.Qwen2VLVideoProcessor
    tokenizer = tokenizer or _qwen_tokenizer()
    ids = _qwen_ids(tokenizer)
    config = cls["Config"](text_config=_qwen_text_config(tokenizer, ids, **text), vision_config=vision, **_qwen_special_ids(ids))
    torch.manual_seed(seed)
    model = cls["ForConditionalGeneration"](config).eval()
    patch = vision["patch_size"]
    images = dict(size=_qwen_pixels(patch), patch_size=patch, merge_size=2)
    processor = cls["Processor"](
        image_processor=transformers.Qwen2VLImageProcessor(**images, **(image_kwargs or {})),
        video_processor=video_cls(**images),
        tokenizer=tokenizer,
        chat_template=template,
    )
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_qwen2_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2-VL-architecture checkpoint (ViT with 2x2 patch merger + Qwen2 LM with mrope, GQA).

    Patch 14, merge 2: a 56x56 image gives 2x2 = 4 vision tokens; each image gives 4 to 16."""
    return _save_tiny_qwen(
        out,
        seed,
        "Qwen2VL",
        dict(mrope_section=[2, 3, 3], bos_is_pad=True),
        dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        QWEN2_VL_CHAT_TEMPLATE,
    )


def save_tiny_qwen2_5_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2.5-VL-architecture checkpoint: windowed-attention ViT (window 56 px = 2x2 merged
    tokens; block 1 full attention), RMSNorm/SwiGLU vision blocks, Qwen2 LM with mrope, GQA."""
    return _save_tiny_qwen(
        out,
        seed,
        "Qwen2_5_VL",
        dict(mrope_section=[2, 3, 3], bos_is_pad=True),
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        QWEN2_VL_CHAT_TEMPLATE,
    )


def save_tiny_qwen3_vl(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen3-VL-architecture checkpoint: ViT (patch 16, learned position grid 8x8) whose blocks 0
    and 1 also feed DeepStack features into the LM after decoder layers 0 and 1; Qwen3 LM (q/k norm,
    interleaved mrope), GQA. A 64x64 image gives 2x2 = 4 vision tokens; each image gives 4 to 16."""
    return _save_tiny_qwen(
        out,
        seed,
        "Qwen3VL",
        dict(mrope_section=[4, 2, 2], mrope_interleaved=True, head_dim=16),
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        QWEN3_VL_CHAT_TEMPLATE,
        image_kwargs=dict(image_mean=[0.5] * 3, image_std=[0.5] * 3),
    )


# Qwen3.5's format without the tool-calling branches: ChatML, no default system turn; thinking is on
# unless enable_thinking=false, which opens the reply with an empty <think></think> block.
QWEN3_5_CHAT_TEMPLATE = _QWEN3_TURNS + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def save_tiny_qwen3_5(out: str | Path, *, seed: int = 0) -> Path:
    """A Qwen3.5 checkpoint (Qwen3_5ForConditionalGeneration): Qwen3-VL-style ViT (patch 16, no
    DeepStack) and a hybrid decoder whose layers are [linear_attention, linear_attention,
    full_attention, linear_attention]: Gated-DeltaNet (causal conv 4, 2 key / 4 value heads of 16)
    with one gated softmax-attention layer (L = 2); partial rotary (half of head_dim 16), interleaved
    mrope. Qwen3-VL's processor; 4 to 16 vision tokens per image between <|vision_start|>/<|vision_end|>."""
    tokenizer = byte_tokenizer(
        specials=_QWEN_SPECIALS + ("<think>", "</think>"), corpus=_QWEN_CORPUS, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    return _save_tiny_qwen(
        out,
        seed,
        "Qwen3_5",
        dict(
            mrope_section=[2, 1, 1],
            mrope_interleaved=True,
            head_dim=16,
            num_hidden_layers=4,
            rope_extra=dict(partial_rotary_factor=0.5),
            layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        ),
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
        ),
        QWEN3_5_CHAT_TEMPLATE,
        image_kwargs=dict(image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer,
    )


# --- shared pieces of the other families ---------------------------------------------------------


def _ids(tokenizer, *tokens: str) -> list[int]:
    """The ids of `tokens`."""
    return [tokenizer.convert_tokens_to_ids(token) for token in tokens]


def _text_config(
    tokenizer, *, layers: int = 2, pad: str | None = None, bos: str | None = None, eos: str | None = None, **extra
) -> dict:
    """A decoder: hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16, `layers` layers;
    pad / bos / eos default to the tokenizer's."""
    tok = {"pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}
    for key, token in tok.items():
        tok[key] = tokenizer.convert_tokens_to_ids(token) if token else getattr(tokenizer, key)
    return (
        dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            **tok,
        )
        | extra
    )


def _vit(image_size, patch: int, **extra) -> dict:
    """A vision tower config: 2 layers, hidden 32, 2 heads, `patch` px patches (`image_size` px images
    unless None)."""
    size = {} if image_size is None else {"image_size": image_size}
    return (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=patch, **size) | extra
    )


def _save(out, seed: int, model_cls, config, processor, dtype: str | None = None) -> Path:
    """Initialise `model_cls(config)` from `seed` and save it (in `dtype`, e.g. "bfloat16", if given)
    with `processor` in `out`."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    if dtype:  # the parameters only: a complex rotary buffer (not saved) must stay complex
        for param in model.parameters():
            param.data = param.data.to(getattr(torch, dtype))
        model.config.dtype = dtype
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# LLaVA-OneVision's template: ChatML-like, a turn's images first:
# "<|im_start|>user <image><image>\ntext<|im_end|>".
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}{% endfor %}"
    "{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# llava-v1.6-mistral's template: [INST] turns, a turn's images first, <<SYS>> system block.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}{% endif %}"
    "{% endfor %}"
)

# InternVL-hf's: ChatML, each image part becomes <IMG_CONTEXT>\n (the processor expands it to <img>...</img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# --- LLaVA-NeXT, LLaVA-OneVision --------------------------------------------------------------------


def save_tiny_llava_next(out: str | Path, *, seed: int = 0) -> Path:
    """A LLaVA-NeXT (v1.6-mistral) checkpoint: CLIP tower (28 px tiles of 2x2 patches), anyres tiling
    over pinpoints up to 56x56 px, Mistral LM (no sliding window), GQA. An image gives the 4 base
    tokens + its unpadded tile grid + one image_newline per grid row (about 12..16 tokens), all as
    <image> placeholders: the placeholder run mixes patch features and learned image_newline rows."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    tokenizer = byte_tokenizer(corpus=("[INST] [/INST] <<SYS>> <</SYS>>",))
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=dict(_vit(28, 14, projection_dim=32), model_type="clip_vision_model"),
        text_config=dict(_text_config(tokenizer, sliding_window=None), model_type="mistral"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )
    images = LlavaNextImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    return _save(out, seed, LlavaNextForConditionalGeneration, config, processor)


def save_tiny_llava_onevision(out: str | Path, *, seed: int = 0) -> Path:
    """A LLaVA-OneVision checkpoint: SigLIP tower (28 px tiles of 2x2 patches, no CLS, "full" features),
    anyres_max_9 tiling over pinpoints up to 56x56 px, Qwen2 LM, GQA. A single image gives base 4 +
    unpadded grid + one image_newline per row; in a multi-image sample (nested images) each image gives
    4 + 1 trailing image_newline. Placeholders are <image>; the processor also returns batch_num_images."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = byte_tokenizer(
        specials=_QWEN_SPECIALS + ("<image>", "<video>"),
        corpus=_QWEN_CORPUS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaOnevisionConfig(
        vision_config=dict(_vit(28, 14, vision_use_head=False), model_type="siglip_vision_model"),
        text_config=dict(_text_config(tokenizer), model_type="qwen2"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    size = {"height": 28, "width": 28}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    return _save(out, seed, LlavaOnevisionForConditionalGeneration, config, processor)


# --- InternVL ------------------------------------------------------------------------------------


def save_tiny_internvl(out: str | Path, *, seed: int = 0) -> Path:
    """An InternVL3(-hf) checkpoint: InternViT (56 px tiles, patch 14, 2 layers) with 0.5 pixel
    shuffle (4 tokens per tile), Qwen2 LM, GQA. An image is cut into up to 2 tiles plus a thumbnail:
    <img> + 4 x tiles <IMG_CONTEXT> + </img> (4 or 12 placeholders)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    markers = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = byte_tokenizer(
        specials=_QWEN_SPECIALS + tuple(markers.values()),
        corpus=_QWEN_CORPUS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=markers,
    )
    config = InternVLConfig(
        vision_config=_vit([56, 56], [14, 14]),
        text_config=dict(_text_config(tokenizer), model_type="qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
    )
    size = {"height": 56, "width": 56}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size,
            crop_to_patches=True,
            min_patches=1,
            max_patches=2,
            image_mean=[0.485, 0.456, 0.406],  # ImageNet's
            image_std=[0.229, 0.224, 0.225],
        ),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return _save(out, seed, InternVLForConditionalGeneration, config, processor)


# --- Gemma 3, Gemma 4, PaliGemma 1 / 2 ------------------------------------------------------------

_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids 0..3
_GEMMA_ROLES = dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
_GEMMA_CORPUS = ("user\nWhat is in the picture?", "model\nThe picture shows a cat.")

# Gemma 3's template: <bos>, the system text folded into the first user turn, "model" for the assistant,
# each image part as <start_of_image> (the processor expands it to
# \n\n<start_of_image><image_soft_token>...<end_of_image>\n\n).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Gemma 4's (E2B) template without tools and thinking history: <bos>, a native system turn (with <|think|>
# when enable_thinking), <|turn>role ... <turn|> turns, "model" for the assistant, each image part as
# <|image|> (the processor expands it to <|image><|image|>...<image|>).
GEMMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% macro render(content) %}{% if content is string %}{{ content | trim }}"
    "{% else %}{% for item in content %}"
    "{% if item['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{% endmacro %}"
    "{% set thinking = enable_thinking is defined and enable_thinking %}"
    "{% if thinking or messages[0]['role'] == 'system' %}{{ '<|turn>system\n' }}"
    "{% if thinking %}{{ '<|think|>\n' }}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}{{ render(messages[0]['content']) }}{% endif %}"
    "{{ '<turn|>\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ render(message['content']) }}{{ '<turn|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}"
)

# PaliGemma has no chat template of its own; its prompt is "<image>...<bos>prefix\n" (the processor
# inserts <bos> after the last <image> and appends the final "\n"). This one renders the turns as plain
# text, each image part as <image> where it stands (so a conversation whose images open it gets that
# layout), a user/system turn ended by "\n" (the last one by the processor), an assistant turn by <eos>.
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% elif not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
)


def save_tiny_gemma3(out: str | Path, *, seed: int = 0) -> Path:
    """A Gemma 3 checkpoint: SigLIP tower (64 px, patch 8 -> 8x8 patches, average-pooled to 16 tokens
    per image), Gemma 3 LM with layer_types [sliding, sliding, full] and a sliding window of 16 (q/k norm,
    GQA, head_dim 16). Each image is <start_of_image> + 16 <image_soft_token> + <end_of_image>, with
    two newlines either side.
    The processor returns token_type_ids (1 on the image soft tokens): passed to the model, they make
    each image's tokens attend to each other bidirectionally."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    markers = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = byte_tokenizer(
        specials=_GEMMA_SPECIALS + ("<start_of_turn>", "<end_of_turn>") + tuple(markers.values()),
        corpus=_GEMMA_CORPUS,
        **_GEMMA_ROLES,
        extra_special_tokens=markers,
    )
    boi, eoi, image = _ids(tokenizer, *markers.values())
    config = Gemma3Config(
        vision_config=dict(_vit(64, 8, vision_use_head=False), model_type="siglip_vision_model"),
        text_config=_text_config(
            tokenizer,
            layers=3,
            eos="<end_of_turn>",
            sliding_window=16,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
        mm_tokens_per_image=16,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 64, "width": 64}),
        tokenizer=tokenizer,
        image_seq_length=16,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    return _save(out, seed, Gemma3ForConditionalGeneration, config, processor)


def save_tiny_gemma4(out: str | Path, *, seed: int = 0) -> Path:
    """A Gemma 4 (E2B-like, no audio tower) checkpoint: Gemma 4 vision encoder (patch 16, 2D positions,
    3x3 pooling; images resized keeping their aspect ratio to at most 70 soft tokens, the smallest
    budget the image processor allows, so an image gives ~50..70 tokens), Gemma 4 LM with layer_types
    [sliding, sliding, full], sliding window 16, head_dim 16 (32 on the full layer), per-layer input
    embeddings. Each image is <|image> + n <|image|> + <image|>; the processor returns mm_token_type_ids."""
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessor,
        Gemma4Processor,
        Gemma4VideoProcessor,
    )

    markers = {
        "image_token": "<|image|>",
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "audio_token": "<|audio|>",
        "boa_token": "<|audio>",
        "eoa_token": "<audio|>",
        "sot_token": "<|turn>",
        "eot_token": "<turn|>",
        "think_token": "<|think|>",
        "soc_token": "<|channel>",
        "eoc_token": "<channel|>",
    }
    tokenizer = byte_tokenizer(
        specials=_GEMMA_SPECIALS + tuple(markers.values()) + ("<|video|>",),
        corpus=_GEMMA_CORPUS,
        **_GEMMA_ROLES,
        extra_special_tokens=markers,
    )
    image, boi, eoi, audio, boa, eoa = _ids(tokenizer, *list(markers.values())[:6])
    text = _text_config(
        tokenizer,
        layers=3,
        eos="<turn|>",
        sliding_window=16,
        global_head_dim=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=len(tokenizer),
    )
    vision = _vit(None, 16, num_key_value_heads=2, head_dim=16, pooling_kernel_size=3, position_embedding_size=128)
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        image_token_id=image,
        boi_token_id=boi,
        eoi_token_id=eoi,
        audio_token_id=audio,
        boa_token_id=boa,
        eoa_token_index=eoa,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video|>"),
    )
    images = dict(patch_size=16, max_soft_tokens=70, pooling_kernel_size=3)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**images),
        video_processor=Gemma4VideoProcessor(**images),
        tokenizer=tokenizer,
        image_seq_length=70,
        chat_template=GEMMA4_CHAT_TEMPLATE,
    )
    return _save(out, seed, Gemma4ForConditionalGeneration, config, processor)


def _save_tiny_paligemma(out, seed: int, text: dict) -> Path:
    """PaliGemma around the Gemma `text` config: SigLIP tower (32 px, patch 8 -> 16 image tokens)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tokenizer = byte_tokenizer(
        specials=_GEMMA_SPECIALS + ("<image>",), **_GEMMA_ROLES, extra_special_tokens={"image_token": "<image>"}
    )
    processor = PaliGemmaProcessor(  # adds the 1024 <locNNNN> and 128 <segNNN> tokens to the tokenizer
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16),
        tokenizer=tokenizer,
        chat_template=PALIGEMMA_CHAT_TEMPLATE,
    )
    config = PaliGemmaConfig(
        vision_config=dict(_vit(32, 8, vision_use_head=False), model_type="siglip_vision_model"),
        text_config=_text_config(tokenizer, **text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    return _save(out, seed, PaliGemmaForConditionalGeneration, config, processor)


def save_tiny_paligemma(out: str | Path, *, seed: int = 0) -> Path:
    """A PaliGemma (1) checkpoint: SigLIP tower (32 px, patch 8: 16 <image> tokens per image), Gemma LM
    (2 layers, GQA, head_dim 16). Prefix-LM: the processor returns token_type_ids (0 on the images and
    the prompt, 1 on a suffix) and labels; passed to the model, token_type_ids make the whole prefix
    attend bidirectionally (sliding windows included). <bos> goes after the last image."""
    return _save_tiny_paligemma(out, seed, dict(model_type="gemma"))


def save_tiny_paligemma2(out: str | Path, *, seed: int = 0) -> Path:
    """A PaliGemma 2 checkpoint: as PaliGemma, with a Gemma 2 LM: layer_types [sliding, full, sliding,
    full], sliding window 16, attention logit softcapping 50, final logit softcapping 30."""
    return _save_tiny_paligemma(
        out,
        seed,
        dict(
            model_type="gemma2",
            layers=4,
            sliding_window=16,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
    )


# --- Idefics3, SmolVLM ---------------------------------------------------------------------------


# Idefics3's / SmolVLM's template after `bos`: "Role:" turns (no space before an image that opens the
# turn), each image part as <image> (the processor expands it to the tile grid), <end_of_utterance>.
def _idefics_chat_template(bos: str) -> str:
    return (
        bos + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for line in message['content'] %}"
        "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
        "{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


def _idefics_tokenizer(bos: str, eos: str, pad: str):
    """Llama-3 / SmolLM2-style specials plus the Idefics image markers: <fake_token_around_image>,
    <global-img>, <row_i_col_j> (i, j <= 6), <image>, <end_of_utterance>."""
    grid = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
    markers = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
    specials = tuple(dict.fromkeys((pad, bos, eos) + markers + grid))
    return byte_tokenizer(
        specials=specials,
        corpus=("User: Assistant:",),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )


def _save_tiny_idefics(out, seed: int, family: str, tokenizer, template: str, tile: int, scale: int) -> Path:
    """Idefics3 / SmolVLM: a SigLIP-style tower on `tile` px tiles (patch 8), pixel shuffle by `scale`
    into 4 tokens per tile; images split into up to 2x2 tiles plus a global view; Llama LM, GQA."""
    import transformers

    cls = {
        kind: getattr(transformers, f"{family}{kind}")
        for kind in ("Config", "ForConditionalGeneration", "Processor", "ImageProcessor")
    }
    seq = (tile // 8) ** 2 // scale**2
    sizes = dict(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
    extra = {"video_processor": transformers.SmolVLMVideoProcessor(**sizes)} if family == "SmolVLM" else {}
    processor = cls["Processor"](
        image_processor=cls["ImageProcessor"](**sizes), tokenizer=tokenizer, image_seq_len=seq, chat_template=template, **extra
    )
    config = cls["Config"](
        vision_config=dict(_vit(tile, 8)),
        text_config=dict(_text_config(tokenizer), model_type="llama"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    return _save(out, seed, cls["ForConditionalGeneration"], config, processor)


def save_tiny_idefics3(out: str | Path, *, seed: int = 0) -> Path:
    """An Idefics3 checkpoint: SigLIP-style tower on 32 px tiles (patch 8), pixel shuffle x2 -> 4 tokens
    per tile; an image of up to 64 px is split into up to 2x2 tiles plus a global view, each tile
    <fake_token_around_image><row_i_col_j> + 4 <image>, each row ended by a newline, then a newline,
    <fake_token_around_image><global-img> + 4 <image> + <fake_token_around_image> (one placeholder run
    per tile, 4..20 per image).
    Llama-3-style LM, GQA. The processor returns pixel_attention_mask."""
    tokenizer = _idefics_tokenizer("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>")
    return _save_tiny_idefics(out, seed, "Idefics3", tokenizer, _idefics_chat_template("<|begin_of_text|>"), tile=32, scale=2)


def save_tiny_smolvlm(out: str | Path, *, seed: int = 0) -> Path:
    """A SmolVLM checkpoint: as Idefics3 (same tile grid and markers) with 64 px tiles, pixel shuffle
    x4 -> 4 tokens per tile, a SmolLM2-style LM (<|im_start|> / <|im_end|>), GQA."""
    tokenizer = _idefics_tokenizer("<|im_start|>", "<|im_end|>", "<|im_end|>")
    return _save_tiny_idefics(out, seed, "SmolVLM", tokenizer, _idefics_chat_template("<|im_start|>"), tile=64, scale=4)


# --- Mistral 3 (Pixtral processor), Llama 4 -------------------------------------------------------

# Mistral-Small-3.1's template: <s>, a [SYSTEM_PROMPT] block (a default one when there is no system
# turn), [INST] user turns with each image part as [IMG], assistant replies ended by </s>.
MISTRAL3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set system_message = messages[0]['content'][0]['text'] %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = 'You are a helpful assistant.' %}{% set loop_messages = messages %}{% endif %}"
    "{{ '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'text' %}{{ block['text'] }}"
    "{% elif block['type'] in ['image', 'image_url'] %}{{ '[IMG]' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'][0]['text'] + eos_token }}{% endif %}"
    "{% endif %}{% endfor %}"
)

# Llama 4's template without tools: <|begin_of_text|>, <|header_start|>role<|header_end|>\n\n turns
# ended by <|eot|>, each image part as <|image|> (the processor expands it to the tile layout).
LLAMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim if message['role'] == 'system' else message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] | trim if message['role'] == 'system' else content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)


def save_tiny_mistral3(out: str | Path, *, seed: int = 0) -> Path:
    """A Mistral 3 (Mistral-Small-3.1) checkpoint: Pixtral tower (patch 8, 2D rope, images up to 64 px,
    kept at their aspect ratio) with a 2x2 patch merger (one token per 16x16 px), Mistral LM with a
    sliding window of 16 on every layer, GQA. PixtralProcessor: an image is rows of [IMG] tokens, each
    row ended by [IMG_BREAK], the last by [IMG_END] (the placeholder run is broken at every row). The
    processor returns image_sizes, which the model needs."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    tokenizer = byte_tokenizer(
        specials=(
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[SYSTEM_PROMPT]",
            "[/SYSTEM_PROMPT]",
            "[IMG]",
            "[IMG_BREAK]",
            "[IMG_END]",
        ),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
    )
    config = Mistral3Config(
        vision_config=dict(_vit(64, 8, head_dim=16), model_type="pixtral"),
        text_config=dict(_text_config(tokenizer, sliding_window=16), model_type="mistral"),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size=16),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )
    return _save(out, seed, Mistral3ForConditionalGeneration, config, processor)


def save_tiny_llama4(out: str | Path, *, seed: int = 0) -> Path:
    """A Llama 4 checkpoint: Llama 4 vision encoder on 32 px tiles (patch 8, pixel shuffle 0.5 -> 4
    tokens per tile), MoE LM (2 experts + shared expert on layers 1 and 3), layer_types [chunked,
    chunked, chunked, full] with attention_chunk_size 16 (the full layer is the NoPE one), q/k norm,
    GQA. An image is <|image_start|> [tiles: 4 <|patch|> each, <|tile_x_separator|> between columns,
    <|tile_y_separator|> after a row] <|image|> + 4 <|patch|> (global view) <|image_end|>; a one-tile
    image has only the global view. The placeholder is <|patch|> (config.image_token_index), while the
    processor's image_token is the template's <|image|>. Saved in bfloat16, as the image processor
    always returns bfloat16 pixel_values (it loads back in bfloat16). In transformers 5.24
    Llama4ForConditionalGeneration.forward raises AttributeError ('MoeCausalLMOutputWithPast' has no
    attribute 'image_outputs') on any input, after its language model has run: read the decoder's own
    output (a forward hook on model.get_decoder()) to get hidden states and attention maps."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4ImageProcessor, Llama4Processor

    markers = ("<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>")
    tokenizer = byte_tokenizer(
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad|>",
            "<|header_start|>",
            "<|header_end|>",
            "<|eot|>",
        )
        + markers,
        corpus=("system\n\nuser\n\nassistant\n\n",),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
    )
    boi, eoi, patch = _ids(tokenizer, "<|image_start|>", "<|image_end|>", "<|patch|>")
    text = _text_config(
        tokenizer,
        layers=4,
        intermediate_size_mlp=128,
        attention_chunk_size=16,
        no_rope_layer_interval=4,
        num_local_experts=2,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
    )
    vision = _vit(
        32,
        8,
        intermediate_size=128,
        pixel_shuffle_ratio=0.5,
        vision_output_dim=64,  # 4 x hidden:
        projector_input_dim=64,
        projector_output_dim=64,
    )  # the pixel-shuffled width
    config = Llama4Config(
        vision_config=vision, text_config=text, boi_token_index=boi, eoi_token_index=eoi, image_token_index=patch
    )
    processor = Llama4Processor(
        image_processor=Llama4ImageProcessor(size={"height": 32, "width": 32}, max_patches=4),
        tokenizer=tokenizer,
        patch_size=8,
        pixel_shuffle_ratio=0.5,
        chat_template=LLAMA4_CHAT_TEMPLATE,
    )
    return _save(out, seed, Llama4ForConditionalGeneration, config, processor, dtype="bfloat16")


# --- GLM-4.1V, LFM2-VL ----------------------------------------------------------------------------

# GLM-4.1V's template: [gMASK]<sop>, <|system|> / <|user|> / <|assistant|> turns, each image part as
# <|begin_of_image|><|image|><|end_of_image|> (the processor expands <|image|>).
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# LFM2-VL's template: <|startoftext|>, ChatML turns, each image part as <image>.
LFM2_VL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_tiny_glm4v(out: str | Path, *, seed: int = 0) -> Path:
    """A GLM-4.1V checkpoint (Glm4vForConditionalGeneration): ViT (patch 14, 2x2 merger, interpolated
    learned positions + 2D rope) and a GLM-4 LM with mrope over half the head dim, GQA. 4 to 16 <|image|>
    tokens per image between <|begin_of_image|> / <|end_of_image|>; the processor returns image_grid_thw
    and mm_token_type_ids."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    markers = ("<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>")
    tokenizer = byte_tokenizer(
        specials=("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>") + markers,
        eos_token="<|user|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    boi, eoi, image, bov, eov, video = _ids(tokenizer, *markers)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}
    config = Glm4vConfig(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            image_size=56,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=image,
        video_token_id=video,
        image_start_token_id=boi,
        image_end_token_id=eoi,
        video_start_token_id=bov,
        video_end_token_id=eov,
    )
    sizes = dict(size={k: 2 * v for k, v in _qwen_pixels(14).items()}, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**sizes),
        video_processor=Glm4vVideoProcessor(**sizes),
        tokenizer=tokenizer,
        chat_template=GLM4V_CHAT_TEMPLATE,
    )
    return _save(out, seed, Glm4vForConditionalGeneration, config, processor)


def save_tiny_lfm2_vl(out: str | Path, *, seed: int = 0) -> Path:
    """An LFM2-VL checkpoint: SigLIP2 NaFlex tower (patch 8, native aspect ratio) with 2x2 pixel unshuffle
    (one token per 16x16 px, 4 to 16 tokens per image; larger images are tiled in 64 px tiles plus a
    thumbnail), LFM2 hybrid LM with layer_types [conv, full_attention, conv] (short gated convolutions;
    the first softmax layer is L = 1), GQA. An image is <|image_start|> + n <image> + <|image_end|>
    (tiles add <|img_row_i_col_j|> and <|img_thumbnail|>); the processor returns pixel_attention_mask
    and spatial_shapes, which the model needs."""
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration, Lfm2VlImageProcessor, Lfm2VlProcessor

    grid = tuple(f"<|img_row_{i + 1}_col_{j + 1}|>" for i in range(4) for j in range(4))
    tokenizer = byte_tokenizer(
        specials=(
            "<|pad|>",
            "<|startoftext|>",
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<image>",
            "<|image_start|>",
            "<|image_end|>",
            "<|img_thumbnail|>",
        )
        + grid,
        corpus=_QWEN_CORPUS,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    text = _text_config(
        tokenizer, layers=3, layer_types=["conv", "full_attention", "conv"], block_auto_adjust_ff_dim=False, conv_L_cache=3
    )
    config = Lfm2VlConfig(
        vision_config=dict(_vit(None, 8, vision_use_head=False, num_patches=256), model_type="siglip2_vision_model"),
        text_config=dict(text, model_type="lfm2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_size=64,
        downsample_factor=2,
    )
    images = Lfm2VlImageProcessor(
        encoder_patch_size=8,
        downsample_factor=2,
        tile_size=64,
        min_image_tokens=4,
        max_image_tokens=16,
        min_tiles=2,
        max_tiles=4,
        size={"height": 64, "width": 64},
    )
    processor = Lfm2VlProcessor(image_processor=images, tokenizer=tokenizer, chat_template=LFM2_VL_CHAT_TEMPLATE)
    return _save(out, seed, Lfm2VlForConditionalGeneration, config, processor)


# Family key -> builder: `BUILDERS[key](out, seed=0)` saves that family's tiny checkpoint in `out`.
BUILDERS: dict[str, Callable[..., Path]] = {
    "llava": save_tiny_llava,
    "qwen2_vl": save_tiny_qwen2_vl,
    "qwen2_5_vl": save_tiny_qwen2_5_vl,
    "qwen3_vl": save_tiny_qwen3_vl,
    "llava_next": save_tiny_llava_next,
    "llava_onevision": save_tiny_llava_onevision,
    "internvl": save_tiny_internvl,
    "qwen3_5": save_tiny_qwen3_5,
    "gemma3": save_tiny_gemma3,
    "gemma4": save_tiny_gemma4,
    "paligemma": save_tiny_paligemma,
    "paligemma2": save_tiny_paligemma2,
    "idefics3": save_tiny_idefics3,
    "smolvlm": save_tiny_smolvlm,
    "mistral3": save_tiny_mistral3,
    "llama4": save_tiny_llama4,
    "glm4v": save_tiny_glm4v,
    "lfm2_vl": save_tiny_lfm2_vl,
}
