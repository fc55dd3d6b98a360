"""Every family of scalselect.models.tiny: tiny random checkpoints load like a user's, and the
fast path at the first softmax-attention layer L gives what the reference way (docs/design.md,
the representation) gives, whatever the padding and batch-mates: windowed, chunked and hybrid
decoders included."""

import numpy as np
import pytest
import torch

from PIL import Image

from scalselect.extract import attention_implementations
from scalselect.models import first_softmax_layer, image_token_id, tiny, training_inputs
from scalselect import reference_way
from tolerances import assert_vectors_close, forward_rtol

QWEN = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
MIN_COSINE = 0.99999


def _load(family, tmp_path_factory):
    """(family, processor, model) of a tiny checkpoint saved to disk and loaded like a user's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny.BUILDERS[family](tmp_path_factory.mktemp(family))
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    # float32, as the tolerances assume (a checkpoint saved in bfloat16 would load as such)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    return family, processor, model


def _float32(batch):
    """The processor's output with its floating tensors (pixel values) in float32, as the
    pipeline casts them to the model's dtype."""
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            batch[key] = value.float()
    return batch


@pytest.fixture(scope="module", params=list(QWEN))
def qwen(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=list(tiny.BUILDERS))
def any_family(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory)


def _image(seed, h, w):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def _text(text):
    return {"type": "text", "text": text}


def _samples():
    """Multi-turn conversations with 1 or 2 images of different sizes (images before the text of
    the user turn that carries them, as scalselect.data renders a pool record)."""
    return [
        (
            [_image(0, 56, 56)],
            [
                {"role": "system", "content": [_text("Be brief.")]},
                {"role": "user", "content": [{"type": "image"}, _text("What is in the picture?")]},
                {"role": "assistant", "content": [_text("The picture shows a cat.")]},
                {"role": "user", "content": [_text("How many dogs?")]},
                {"role": "assistant", "content": [_text("There are 2 dogs.")]},
            ],
        ),
        (
            [_image(1, 60, 110), _image(2, 100, 45)],
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "image"}, _text("Read the text on the sign.")]},
                {"role": "assistant", "content": [_text("No.")]},
                {"role": "user", "content": [_text("What colour is the car?")]},
                {"role": "assistant", "content": [_text("The car is red and the sky is blue.")]},
            ],
        ),
        (
            [_image(3, 84, 84)],
            [
                {"role": "user", "content": [_text("Hello.")]},
                {"role": "assistant", "content": [_text("Yes?")]},
                {"role": "user", "content": [{"type": "image"}, _text("Describe the picture in detail.")]},
                {
                    "role": "assistant",
                    "content": [_text("A cat sits on a red sofa next to a window. The sky is blue and there are two dogs.")],
                },
            ],
        ),
    ]


def _render(processor):
    return lambda msgs, gen: processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _prepared(processor, model):
    """Per sample: (images, rendered text, processor output alone, instruction mask alone)."""
    from scalselect.models.roles import reply_char_spans, token_roles

    out = []
    for images, messages in _samples():
        text, spans = reply_char_spans(_render(processor), messages)
        alone = _float32(processor(images=images, text=[text], return_tensors="pt"))
        roles = token_roles(processor.tokenizer, text, spans, image_token_id(model.config), alone["input_ids"][0])
        alone = training_inputs(processor, alone, roles.vision, roles.instruction)
        out.append((images, text, alone, roles.instruction[None]))
    return out


def _windowed(model) -> bool:
    """Whether layer L's own mask cuts rows off from earlier keys (a sliding window or chunks):
    its layer type, or for Mistral, whose layer_types say full attention, the text config's
    sliding_window (MistralModel then builds a sliding mask for every layer)."""
    text = model.config.get_text_config()
    kinds = getattr(text, "layer_types", None)
    if kinds and kinds[first_softmax_layer(model.config)] in ("sliding_attention", "chunked_attention"):
        return True
    return text.model_type == "mistral" and text.sliding_window is not None


def _fast(model, batch, instruction, tau, monkeypatch, layer=None):
    """layer_vectors, and the positions it keeps (from the mass it hands to the selection)."""
    from scalselect import extract

    seen = {}
    real_top = extract.kernels.top_mass_mean

    def spy(hidden, mass, vision, tau_, **kw):
        seen["mass"], seen["vision"] = mass, vision
        return real_top(hidden, mass, vision, tau_, **kw)

    with monkeypatch.context() as m:
        m.setattr(extract.kernels, "top_mass_mean", spy)
        vectors, kept = extract.layer_vectors(model, batch, instruction, tau, layer=layer)
    if "mass" not in seen:
        pytest.fail("layer_vectors no longer hands its mass to kernels.top_mass_mean: update this spy")
    positions = []
    for b in range(vectors.shape[0]):
        cols = torch.nonzero(seen["vision"][b]).flatten()
        positions.append(sorted(cols[reference_way.kept_by_definition(seen["mass"][b, cols], tau)].tolist()))
    return vectors, kept, positions


def _cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _ragged_batch(processor, prepared, padding_side):
    """The samples batched as the pipeline batches them: each processed alone, then padded
    (here on either side) and their image tensors stacked by scalselect's collate."""
    from scalselect.data.samples import Prepared, collate

    samples = [Prepared(b, alone, instruction[0]) for b, (_, _, alone, instruction) in enumerate(prepared)]
    batch, instruction = collate(samples, processor.tokenizer.pad_token_id, padding_side)
    real = [torch.nonzero(batch["attention_mask"][b]).flatten() for b in range(len(prepared))]
    return batch, instruction, real


def test_tiny_qwen_checkpoints_are_architecturally_real(qwen):
    family, processor, model = qwen
    assert type(model).__name__ == QWEN[family]
    text_config = model.config.text_config
    assert text_config.num_key_value_heads < text_config.num_attention_heads  # GQA
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    assert sum(text_config.rope_parameters["mrope_section"]) == head_dim // 2
    assert text_config.num_hidden_layers >= 2  # else hidden_states[1] would be the final-normed state
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    from scalselect.models import adapter_for

    assert adapter_for(model).family == family
    for images, text, alone, _ in _prepared(processor, model):
        merge = model.config.vision_config.spatial_merge_size
        per_image = (alone["image_grid_thw"].prod(dim=-1) // merge**2).tolist()
        assert len(per_image) == len(images) and min(per_image) > 1
        assert int((alone["input_ids"] == model.config.image_token_id).sum()) == sum(per_image)
        assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == len(images)
    counts = [int((a["input_ids"] == model.config.image_token_id).sum()) for _, _, a, _ in _prepared(processor, model)]
    assert len(set(counts)) == len(counts)  # the samples have different numbers of vision tokens
    messages = _samples()[0][1]
    assert processor.apply_chat_template(messages, tokenize=False).endswith("dogs.<|im_end|>\n")
    assert _render(processor)(messages[:-1], True).endswith("dogs?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_fast_path_equals_the_reference_way(any_family, padding_side, monkeypatch):
    _, processor, model = any_family
    prepared = _prepared(processor, model)
    batch, instruction, real = _ragged_batch(processor, prepared, padding_side)
    assert int(batch["attention_mask"].sum()) < batch["input_ids"].numel()  # ragged
    pads_first = [int(r[0]) for r in real]
    assert (max(pads_first) > 0) == (padding_side == "left")
    rtol = forward_rtol(model.config, decoder_layers=first_softmax_layer(model.config) + 1)
    implementation = attention_implementations(model)

    cosines, blind = [], 0
    for tau in (0.5, 0.9):
        vectors, kept, positions = _fast(model, batch, instruction, tau, monkeypatch)
        assert [len(p) for p in positions] == kept.tolist()
        for b, (_, _, alone, alone_instruction) in enumerate(prepared):
            want_positions, want, blind_rows = reference_way.reference_vector(model, alone, alone_instruction, tau)
            blind += len(blind_rows)
            assert int(kept[b]) == len(want_positions) >= 1
            local = [int(torch.nonzero(real[b] == p)) for p in positions[b]]  # position in the sample
            assert local == want_positions
            cosines.append(_cosine(vectors[b], want))
            # batch invariance: the sample alone (batch size 1) through the fast path
            single, single_kept, single_positions = _fast(model, alone, alone_instruction, tau, monkeypatch)
            assert single_kept.tolist() == [len(want_positions)] and single_positions[0] == want_positions
            cosines.append(_cosine(vectors[b], single[0]))
            assert_vectors_close(vectors[b], single[0], rtol, f"sample {b}")
    assert min(cosines) >= MIN_COSINE, cosines
    # where the layer is windowed, the conversations are long enough that it cuts rows off
    assert (blind > 0) == _windowed(model)
    assert attention_implementations(model) == implementation  # the probe restored them


@pytest.mark.parametrize("qwen", ["qwen3_vl"], indirect=True)
def test_qwen3_vl_hidden_states_1_is_layer_0_output_before_deepstack(qwen):
    """hidden_states[1] is decoder layer 0's own output; DeepStack adds the visual features to the
    vision tokens only afterwards, so layer 1 sees them and hidden_states[1] does not."""
    _, processor, model = qwen
    assert model.config.vision_config.deepstack_visual_indexes  # the tiny model has DeepStack
    _, _, batch, _ = _prepared(processor, model)[1]
    layers = model.model.language_model.layers
    seen = {}
    hooks = [
        layers[0].register_forward_hook(lambda _m, _a, out: seen.__setitem__("out0", out)),
        layers[1].register_forward_pre_hook(lambda _m, args: seen.__setitem__("in1", args[0])),
    ]
    try:
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    vision = batch["input_ids"] == model.config.image_token_id
    assert torch.equal(out.hidden_states[1], seen["out0"])
    assert torch.equal(seen["in1"][~vision], seen["out0"][~vision])
    assert not torch.allclose(seen["in1"][vision], seen["out0"][vision])


@pytest.mark.parametrize("any_family", ["paligemma"], indirect=True)
def test_paligemma_prefix_is_bidirectional_and_the_replies_causal(any_family):
    """As PaliGemma's fine-tuning renders a sample: images and prompt are the prefix, which the
    probed layer lets every prefix row see whole; from the first reply on, rows are causal."""
    from scalselect.extract import layer_probe

    _, processor, model = any_family
    _, _, batch, instruction = _prepared(processor, model)[0]
    types = batch["token_type_ids"][0]
    start = int(types.argmax())  # the first reply token
    reply = ~instruction[0] & (batch["input_ids"][0] != image_token_id(model.config))
    assert 0 < start == int(reply.int().argmax()) and bool(types[start:].all()) and not bool(types[:start].any())
    with layer_probe(model) as run:
        lo, hi, contiguous = run(**batch)["ranges"]
    at = torch.arange(types.numel())
    assert bool(contiguous.all()) and bool((lo == 0).all())
    assert torch.equal(hi[0], torch.where(at < start, start, at + 1).to(hi.dtype))


@pytest.mark.parametrize("any_family", ["paligemma2"], indirect=True)
def test_soft_capped_layers_stay_causal_where_transformers_skips_the_mask(any_family, monkeypatch):
    """Without token types or padding, transformers would hand a full-attention layer no mask
    (SDPA's is_causal instead), while PaliGemma 2's Gemma 2 attention says it is not causal: the
    probe must still see, and run, the causal mask that eager attention applies. Probed at
    layer 1, PaliGemma 2's first full-attention layer."""
    _, processor, model = any_family
    text = model.config.get_text_config()
    assert text.attn_logit_softcapping and text.layer_types[1] == "full_attention"
    _, _, alone, instruction = _prepared(processor, model)[1]
    plain = {k: v for k, v in alone.items() if k != "token_type_ids"}
    want_positions, want, _ = reference_way.reference_vector(model, plain, instruction, 0.9, layer=1)
    vectors, kept, positions = _fast(model, plain, instruction, 0.9, monkeypatch, layer=1)
    assert positions[0] == want_positions and _cosine(vectors[0], want) >= MIN_COSINE


@pytest.mark.parametrize("family, layer", [("llava", 1), ("gemma3", 1)])
def test_a_later_layer_is_probed_as_the_reference_way_reads_it(family, layer, tmp_path, monkeypatch):
    """--layer N: layer N's attention mass and its output, hidden_states[N + 1] (N not the last
    layer, whose hidden_states entry has the final norm applied)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny.save_tiny_llava(tmp_path, text_layers=3) if family == "llava" else tiny.BUILDERS[family](tmp_path)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    assert layer < model.config.get_text_config().num_hidden_layers - 1
    for _, _, alone, instruction in _prepared(processor, model):
        want_positions, want, _ = reference_way.reference_vector(model, alone, instruction, 0.9, layer=layer)
        vectors, _, positions = _fast(model, alone, instruction, 0.9, monkeypatch, layer=layer)
        first, _, _ = _fast(model, alone, instruction, 0.9, monkeypatch)
        assert positions[0] == want_positions and _cosine(vectors[0], want) >= MIN_COSINE
        assert _cosine(vectors[0], first[0]) < MIN_COSINE  # another layer, another vector
