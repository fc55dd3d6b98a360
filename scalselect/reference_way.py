"""The reference way, written once from the definition (docs/design.md, section 1a): a full
forward with eager attention and every attention map kept, batch size 1. The slow path that the
tests, the benchmarks and `scalselect bench` compare the fast path with; it ships in the package
for the last of them, and nothing of the package's own path uses it."""

import time

import torch

from .data import read_pool
from .data.samples import SampleMaker, collate
from .extract import attention_implementations
from .models import SOFTMAX_LAYERS, first_softmax_layer, image_token_id


def kept_by_definition(mass: torch.Tensor, tau: float) -> list[int]:
    """Indices into `mass` (one value per vision token, in sequence order) that docs/design.md 1a step 4
    keeps: normalise, sort descending (ties: earlier first), keep the prefix up to and including the
    first token where the running sum exceeds tau; at least one."""
    mass = mass.double().cpu()
    p = mass / mass.sum() if float(mass.sum()) > 0 else torch.full_like(mass, 1.0 / mass.numel())
    order = sorted(range(p.numel()), key=lambda j: (-float(p[j]), j))
    kept, running = [], 0.0
    for j in order:
        kept.append(j)
        running += float(p[j])
        if running > tau:
            break
    return kept


def reference_vector(model, batch, instruction, tau, layer=None):
    """The reference way, straight from the definition, for a batch of size 1: full forward with
    eager attention and every map kept; layer L's attention (L: `layer`, else the first softmax
    layer) averaged over heads; vision tokens: the placeholder positions whose decoder input is an image feature
    (not a learned image_newline); each one's mean attention from the instruction rows (markers
    among the placeholders included); top-mass prefix; mean of hidden_states[L + 1] there.
    Returns (kept positions in the sequence, float64 vector, instruction rows after a vision
    token that see none)."""
    assert batch["input_ids"].shape[0] == 1 and bool(batch["attention_mask"].all())
    previous = attention_implementations(model)
    model.set_attn_implementation("eager")
    seen = {}  # the language model's own output: its hidden states and attention maps
    hook = model.get_decoder().register_forward_hook(lambda _m, _a, output: seen.setdefault("out", output))
    try:
        with torch.no_grad():
            model(**batch, output_hidden_states=True, output_attentions=True)
    except AttributeError:  # Llama4ForConditionalGeneration fails after the language model ran,
        if "out" not in seen:  # wrapping its output (transformers 5.24)
            raise
    finally:
        hook.remove()
        model.set_attn_implementation(previous)
    out = seen["out"]
    layer = first_softmax_layer(model.config) if layer is None else layer
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or []
    if len(out.attentions) != model.config.get_text_config().num_hidden_layers:  # softmax layers only
        assert len(out.attentions) == sum(kind in SOFTMAX_LAYERS for kind in kinds)
        attention = out.attentions[sum(kind in SOFTMAX_LAYERS for kind in kinds[:layer])]
    else:
        attention = out.attentions[layer]
    probs = attention[0].double().mean(dim=0)  # [S, S], heads averaged
    placeholder = batch["input_ids"][0] == image_token_id(model.config)
    marker = torch.zeros_like(placeholder)
    newline = getattr(getattr(model, "model", None), "image_newline", None)
    if newline is not None:
        marker = placeholder & (out.hidden_states[0][0] == newline).all(dim=-1)
    vision = torch.nonzero(placeholder & ~marker).flatten()
    rows = torch.nonzero((instruction[0] | marker) & ~(placeholder & ~marker)).flatten()
    block = probs[rows][:, vision]
    positions = vision[kept_by_definition(block.mean(dim=0), tau)]
    blind = rows[(block == 0).all(dim=1) & (rows > vision.min())]  # after an image, seeing none
    return sorted(positions.tolist()), out.hidden_states[layer + 1][0, positions].double().mean(dim=0), blind


def reference_pool_vectors(model_dir, pool_path, image_root, tau=0.9, device="cpu"):
    """Every sample of a pool file the reference way, alone, from its own preparation (decode,
    chat template, processor, token roles) on: the vectors by sample id (on the CPU) and the
    loop's seconds (model loading excluded)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval().to(device)
    maker = SampleMaker(processor, image_token_id(model.config), image_root, 4096)
    pool = read_pool(pool_path)
    vectors = {}
    t0 = time.perf_counter()
    for record, sample_id in zip(pool.records, pool.ids):
        batch, instruction = collate([maker(record, pool.layout, sample_id)], 0)
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        vectors[sample_id] = reference_vector(model, batch, instruction.to(device), tau)[1].cpu()
    return vectors, time.perf_counter() - t0
