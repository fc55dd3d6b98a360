"""One vector per sample from the target VLM's first decoder layer (DESIGN.md section 1a).

The forward stops right after decoder layer 0: a hook takes that layer's output (what a full
model returns as hidden_states[1]) and ends the forward. Layer 0 runs with SDPA through an
attention function registered with transformers that also keeps its rotary-embedded queries and
keys, from which the instruction -> vision attention mass is computed without any [B, H, S, S]
map. The most-attended vision tokens' states are then averaged.
"""

from __future__ import annotations

import contextlib

import torch

from . import kernels
from .models import adapter_for

_ATTENTION_NAME = "scalselect_layer0"


class _StopForward(Exception):
    """Raised by the layer-0 hook: nothing after layer 0 is needed."""


def _capturing_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store = getattr(module, "_scalselect_store", None)
    if store is not None:
        store["q"], store["k"] = query, key
        store["scaling"] = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def first_layer_probe(model):
    """Yields run(**batch) -> {"hidden", "q", "k", "scaling"} that runs `model` up to layer 0."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_ATTENTION_NAME, _capturing_sdpa)
    # The padding mask is built per implementation name: without this, an unknown name gets
    # no mask, and left-padded rows would attend to the padding.
    AttentionMaskInterface.register(_ATTENTION_NAME, sdpa_mask)
    layer0 = adapter_for(model).decoder_layers(model)[0]
    store: dict = {}

    def stop(_module, _args, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    previous = model.config._attn_implementation
    model.set_attn_implementation(_ATTENTION_NAME)
    layer0.self_attn._scalselect_store = store
    handle = layer0.register_forward_hook(stop)

    def run(**batch) -> dict:
        store.clear()
        with contextlib.suppress(_StopForward), torch.no_grad():
            model(**batch)
        if "hidden" not in store or "q" not in store:
            raise RuntimeError("the forward did not reach decoder layer 0's attention")
        return dict(store)

    try:
        yield run
    finally:
        handle.remove()
        del layer0.self_attn._scalselect_store
        model.set_attn_implementation(previous)


def probe_vectors(model, run, batch: dict, instruction: torch.Tensor, tau: float = 0.9,
                  backend: str = "auto"):
    """Representation vectors [B, D] (float32) and kept vision-token counts [B] for a batch,
    with `run` from an open first_layer_probe(model).

    batch: the processor's output (input_ids, attention_mask, pixel_values, ...);
    instruction: [B, S] bool, the instruction tokens (see scalselect.models.roles);
    backend: the kernels' (auto: compiled when available, torch: the PyTorch twins)."""
    vision = batch["input_ids"] == adapter_for(model).image_token_id(model)
    valid = batch["attention_mask"].bool()
    got = run(**batch)
    mass = kernels.attention_mass(got["q"], got["k"], valid, instruction & ~vision, vision,
                                  float(got["scaling"]), backend=backend)
    return kernels.top_mass_mean(got["hidden"], mass, vision, tau, backend=backend)


def first_layer_vectors(model, batch: dict, instruction: torch.Tensor, tau: float = 0.9,
                        backend: str = "auto"):
    """probe_vectors for one batch, the probe opened and closed around it."""
    with first_layer_probe(model) as run:
        return probe_vectors(model, run, batch, instruction, tau, backend)
