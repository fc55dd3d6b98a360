"""One vector per sample from the target VLM's decoder layer L, by default its first
softmax-attention layer (docs/design.md, section 1a).

The forward stops right after layer L: a hook takes that layer's output (what a full model
returns as hidden_states[L + 1]) and ends the forward. The model's attention runs through a
function registered with transformers that also keeps layer L's rotary-embedded queries and keys
and turns the mask transformers built for that layer (causal, sliding window, chunked,
bidirectional blocks, padding) into each row's key range; from these the instruction -> vision
attention mass is computed without any [B, H, S, S] map. The most-attended vision tokens'
states are then averaged.

The hook takes the layer's own output. Qwen3-VL's DeepStack adds visual features of early ViT
blocks to the vision tokens after decoder layers 0, 1, ..., on a copy of the layer's output, so
what a full forward returns as hidden_states[L + 1] is that same output without the addition.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from . import kernels
from .errors import InputError
from .models import adapter_for, first_softmax_layer, image_token_id

_ATTENTION_NAME = "scalselect_probe"


class _StopForward(Exception):
    """Raised by the hook on layer L: nothing after it is needed."""


class UnsupportedModel(InputError):
    """The model's layer L cannot be probed exactly (found during the first forward)."""


# Mask rows read at once: the uint8 copies of one block stay a few MiB even at S = 32k.
_MASK_ROWS = 1024


def key_ranges_from_mask(mask: torch.Tensor | None, batch: int, seq: int, causal: bool, device: torch.device | str = "cpu"):
    """(lo, hi, contiguous), [B, S] each, from the mask an attention function receives: row i
    attends to keys lo <= j < hi, and `contiguous` says whether those are exactly its keys.

    mask: bool [B or 1, 1 or H, S, S] (True: attend), an additive float mask of the same shape
    (0: attend, very negative: not), or None (no padding: causal, or everything when the layer
    is not causal). Read in blocks of rows, at the mask's own batch size."""
    if mask is None:
        every = torch.ones(batch, seq, dtype=torch.bool, device=device)
        lo, hi = kernels.twins.causal_key_ranges(every)
        return lo, hi if causal else torch.full_like(hi, seq), every
    if mask.dim() != 4 or mask.shape[-2:] != (seq, seq) or mask.shape[0] not in (1, batch):
        raise UnsupportedModel(f"its attention mask has shape {tuple(mask.shape)}, not [B, 1, {seq}, {seq}]")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise UnsupportedModel(f"its attention mask is {mask.dtype}, neither bool nor an additive float mask")
    if mask.shape[1] != 1 and not bool((mask == mask[:, :1]).all()):
        raise UnsupportedModel("its attention mask differs between heads")
    parts = []
    for start in range(0, seq, _MASK_ROWS):
        block = mask[:, 0, start : start + _MASK_ROWS]  # [B or 1, rows, S]
        if block.dtype != torch.bool:
            allowed = block > torch.finfo(block.dtype).min / 2
            if bool((allowed & (block != 0)).any()):
                raise UnsupportedModel("its attention mask adds a bias to the logits (not a plain mask)")
            block = allowed
        count = block.sum(dim=-1, dtype=torch.int32)
        keys = block.to(torch.uint8)
        lo = keys.argmax(dim=-1).to(torch.int32)  # the first allowed key
        hi = seq - keys.flip(-1).argmax(dim=-1).to(torch.int32)  # after the last
        parts.append((torch.where(count > 0, lo, 0), torch.where(count > 0, hi, 0), count))
    lo, hi, count = (torch.cat(t, dim=1) for t in zip(*parts))
    lo, hi, contiguous = (t.expand(batch, seq).contiguous() for t in (lo, hi, count == hi - lo))
    return lo, hi, contiguous


def _probe_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention for every layer, and for layer L the probe's captures. SDPA,
    except where the layer soft-caps its logits (SDPA cannot): the family's own eager attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store = getattr(module, "_scalselect_store", None)
    if store is not None:
        causal = bool(kwargs["is_causal"] if kwargs.get("is_causal") is not None else getattr(module, "is_causal", True))
        if "q" in store:
            raise UnsupportedModel("its probed layer runs attention twice (cross-attention?)")
        b_size, seq = query.shape[0], query.shape[2]
        if key.shape[2] != seq:
            raise UnsupportedModel("its probed layer attends to other keys than its own tokens")
        store["q"], store["k"] = query, key
        store["scaling"] = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
        store["softcap"] = kwargs.get("softcap")
        store["ranges"] = key_ranges_from_mask(attention_mask, b_size, seq, causal, query.device)
    if kwargs.get("softcap") is not None:
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise UnsupportedModel("it soft-caps attention logits without an eager attention function")
        if attention_mask is not None and attention_mask.dtype == torch.bool:  # eager adds its mask
            attention_mask = _additive(attention_mask, query.dtype)
        return eager(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


# The additive form of the last bool mask converted: every layer of one kind gets the same mask
# object in a forward, so it is converted once, not once per layer. Emptied after each forward.
_ADDITIVE: dict = {}


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _ADDITIVE.get("bool") is not mask or _ADDITIVE["float"].dtype != dtype:
        _ADDITIVE.update(
            bool=mask, float=torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        )
    return _ADDITIVE["float"]


def _explicit_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})


def attention_implementations(model) -> dict:
    """The attention implementation of the model and of each sub-model (they may differ: a
    Gemma 2 text model cannot take SDPA under a PaliGemma that can), to restore them as found."""
    config = model.config
    found = {"": config._attn_implementation}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            found[key] = sub._attn_implementation
    return found


@contextlib.contextmanager
def layer_probe(model, layer: int | None = None):
    """Yields run(**batch) -> {"hidden", "q", "k", "scaling", "softcap", "ranges", "image_token_id",
    "image_newline", "embeds"?} that runs `model` up to decoder layer `layer` (default: the adapter's first softmax layer)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(_ATTENTION_NAME, _probe_attention)
    # Masks are built per implementation name: without this, an unknown name gets no mask, and
    # left-padded rows would attend to the padding. Never skipped: SDPA's skip (no mask: use
    # is_causal) trusts the module's is_causal, which some decoders set False (PaliGemma 2's
    # Gemma 2 says bidirectional while its mask is causal), and eager attention has no skip.
    AttentionMaskInterface.register(_ATTENTION_NAME, _explicit_mask)
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    index = first_softmax_layer(model.config) if layer is None else layer
    if not 0 <= index < len(layers):
        raise InputError(f"decoder layer {index} is not loaded (the model has {len(layers)})")
    target = layers[index]
    store: dict = {}

    def stop(_module, _args, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    def embeds(_module, args, kwargs):  # the decoder's input, for markers among the placeholders
        store["embeds"] = args[0] if args else kwargs["hidden_states"]

    previous = attention_implementations(model)
    model.set_attn_implementation(_ATTENTION_NAME)
    marked = list(target.modules())
    for m in marked:
        m._scalselect_store = store
    handles = [target.register_forward_hook(stop)]
    if adapter.image_newline(model) is not None:  # markers among the placeholders: see token_sets
        handles.append(layers[0].register_forward_pre_hook(embeds, with_kwargs=True))

    image_id, newline = image_token_id(model.config), adapter.image_newline(model)

    def run(**batch) -> dict:
        store.clear()
        try:
            with contextlib.suppress(_StopForward), torch.no_grad():
                model(**batch)
        finally:
            _ADDITIVE.clear()
        if "hidden" not in store or "q" not in store:
            raise UnsupportedModel(
                f"{type(model).__name__}: its decoder layer {index} did not run "
                "softmax attention through transformers' attention interface"
            )
        return {**store, "image_token_id": image_id, "image_newline": newline}

    try:
        yield run
    finally:
        for h in handles:
            h.remove()
        for m in marked:
            del m._scalselect_store
        model.set_attn_implementation(previous)


def token_sets(batch: dict, instruction: torch.Tensor, got: dict):
    """(vision, instruction) [B, S] bool: the placeholder positions that received image features,
    and the instruction rows with the markers among the placeholders (LLaVA-NeXT's image_newline
    rows, say) moved to them; `got` is what the probe's run returned."""
    vision = batch["input_ids"] == got["image_token_id"]
    newline = got["image_newline"]
    if newline is not None:
        marker = torch.zeros_like(vision)
        embeds = got["embeds"][vision]  # the placeholder rows only
        marker[vision] = (embeds == newline.to(embeds.dtype)).all(dim=-1)
        vision, instruction = vision & ~marker, instruction | marker
    return vision, instruction & ~vision


def probe_vectors(model, run, batch: dict, instruction: torch.Tensor, tau: float = 0.9, backend: str = "auto"):
    """Representation vectors [B, D] (float32) and kept vision-token counts [B] for a batch,
    with `run` from an open layer_probe(model).

    batch: the processor's output (input_ids, attention_mask, pixel_values, ...);
    instruction: [B, S] bool, the instruction tokens (see scalselect.models.roles);
    backend: the kernels' (auto: compiled when available, torch: the PyTorch twins)."""
    valid = batch["attention_mask"].bool()
    got = run(**batch)
    vision, rows = token_sets(batch, instruction, got)
    lo, hi, contiguous = got["ranges"]
    if not bool(contiguous[rows & valid].all()):  # (kernels.attention_mass checks each holds its row)
        raise UnsupportedModel(
            f"{type(model).__name__}: an instruction row's keys in the probed layer are not one contiguous range"
        )
    try:
        mass = kernels.attention_mass(
            got["q"], got["k"], valid, rows, vision, float(got["scaling"]), (lo, hi), got["softcap"], backend=backend
        )
    except ValueError as exc:  # what the layer handed over does not fit the definition: the model's fault
        raise UnsupportedModel(f"{type(model).__name__}: its probed layer {exc}") from None
    return kernels.top_mass_mean(got["hidden"], mass, vision, tau, backend=backend)


def layer_vectors(
    model, batch: dict, instruction: torch.Tensor, tau: float = 0.9, backend: str = "auto", layer: int | None = None
):
    """probe_vectors for one batch, the probe opened and closed around it."""
    with layer_probe(model, layer) as run:
        return probe_vectors(model, run, batch, instruction, tau, backend)
