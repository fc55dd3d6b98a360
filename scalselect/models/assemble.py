"""A LLaVA-1.5 checkpoint before instruction tuning, assembled from its parts.

ScalSelect selects with the model about to be instruction-tuned: for LLaVA-1.5, the model after
stage-1 alignment, which LLaVA's own code never saves as one checkpoint. Its parts are a base
LLM (a Hugging Face causal LM, e.g. Vicuna), a CLIP vision tower (a Hugging Face CLIP or
CLIP-vision checkpoint) and the stage-1 projector (`mm_projector.bin`: the two linear layers of
LLaVA's `mlp2x_gelu`). `assemble_llava` writes them as one `LlavaForConditionalGeneration`
checkpoint with its processor (the CLIP image processor, padding images to a square in the mean
colour as LLaVA-1.5 trains; the LLM's tokenizer with `<image>` added; the LLaVA-1.5 chat
template), which `extract` and `run` then take as `--model`.

The projector file is read with `torch.load(weights_only=True)` (tensors only: never an
unpickle of arbitrary objects) or as safetensors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError, first_line
from .llava import LLAVA_CHAT_TEMPLATE

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
# the projector's keys in LLaVA's stage-1 file (a "model." prefix or none), in Llava's names
_PROJECTOR_KEYS = {
    "mm_projector.0.weight": "linear_1.weight",
    "mm_projector.0.bias": "linear_1.bias",
    "mm_projector.2.weight": "linear_2.weight",
    "mm_projector.2.bias": "linear_2.bias",
}


def read_projector(path: Path) -> dict:
    """linear_1/linear_2 weights and biases from a stage-1 projector file (.bin/.pt or .safetensors)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--projector {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(path)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickler refusal, a corrupt file: one line
        raise InputError(f"--projector {path}: cannot read it as tensors ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise InputError(f"--projector {path}: not a dict of tensors")
    found = {}
    for key, value in raw.items():
        name = str(key).removeprefix("model.")
        if name in _PROJECTOR_KEYS and isinstance(value, torch.Tensor):
            found[_PROJECTOR_KEYS[name]] = value
    if set(found) != set(_PROJECTOR_KEYS.values()):
        raise InputError(
            f"--projector {path}: expected LLaVA's mlp2x_gelu projector ({', '.join(_PROJECTOR_KEYS)}), "
            f"found {', '.join(sorted(map(str, raw))[:6]) or 'nothing'}"
        )
    return found


_IMAGE_SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


def _padding_to_square(clip):
    """The CLIP tower's image processor, padding each image to a square in the mean colour first,
    as LLaVA-1.5 trains (image_aspect_ratio "pad"), instead of cropping its sides away."""
    from transformers import LlavaImageProcessorPil

    settings = {k: getattr(clip, k) for k in _IMAGE_SETTINGS if getattr(clip, k, None) is not None}
    return LlavaImageProcessorPil(**settings, do_pad=True)


def assemble_llava(llm: Path, vision: Path, projector: Path, out: Path, *, vision_feature_layer: int = -2) -> Path:
    """Write the assembled checkpoint into `out` (which must not exist yet): whole or not at all."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    llm, vision, projector, out = Path(llm), Path(vision), Path(projector), Path(out)
    if out.exists():
        raise InputError(f"--out {out}: exists; name a new folder")
    for flag, path in (("--llm", llm), ("--vision", vision)):
        if not (path / "config.json").is_file():
            raise InputError(f"{flag} {path}: not a checkpoint directory (no config.json)")
    weights = read_projector(projector)
    try:
        tokenizer = AutoTokenizer.from_pretrained(llm, local_files_only=True)
        language = AutoModelForCausalLM.from_pretrained(llm, local_files_only=True)
        tower = CLIPVisionModel.from_pretrained(vision, local_files_only=True)
        images = _padding_to_square(CLIPImageProcessor.from_pretrained(vision, local_files_only=True))
    except Exception as exc:  # a wrong kind of checkpoint, missing files: one line
        raise InputError(f"cannot load the parts ({first_line(exc)})") from None
    vision_config = tower.config
    text_config = language.config
    hidden, width = text_config.hidden_size, vision_config.hidden_size
    shapes = {
        "linear_1.weight": (hidden, width),
        "linear_1.bias": (hidden,),
        "linear_2.weight": (hidden, hidden),
        "linear_2.bias": (hidden,),
    }
    wrong = [f"{k} {tuple(weights[k].shape)}, not {s}" for k, s in shapes.items() if tuple(weights[k].shape) != s]
    if wrong:
        raise InputError(
            f"--projector {projector}: does not join this vision tower ({width} wide) to this "
            f"LLM ({hidden} wide): {'; '.join(wrong)}"
        )

    # special even where the vocabulary has it already (it must never be split)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    state = {f"model.language_model.{k}": v for k, v in language.model.state_dict().items()}
    state["lm_head.weight"] = language.lm_head.weight.detach()
    vocab = len(tokenizer)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = state[key]
        if rows.shape[0] < vocab:  # new tokens start at the mean row (as resize_token_embeddings does)
            state[key] = torch.cat([rows, rows.mean(dim=0, keepdim=True).expand(vocab - rows.shape[0], -1)])
    state |= {f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()}
    state |= {f"model.multi_modal_projector.{k}": v for k, v in weights.items()}

    text_config.vocab_size = vocab
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    dtype = language.dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise InputError(f"the parts do not make a LLaVA model (missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.tie_weights()
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide it from other users
        if out.exists():  # made while the parts loaded: never replace it
            raise InputError(f"--out {out}: appeared while the parts were loading; nothing was written there")
        staging.rename(out)  # the checkpoint appears whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
