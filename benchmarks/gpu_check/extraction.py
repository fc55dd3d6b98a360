"""Step "extraction": end to end on a LLaVA-1.5-7B-shaped model with random weights (built on
the meta device; on a GPU materialised there in bfloat16), scalselect's fast path against the
reference way of the tests on the same in-memory samples. A dry run builds the full shape on
the meta device only and times a tiny LLaVA made the same way on the CPU."""

from __future__ import annotations

import time

import torch

from .device import Stopwatch, device, peak_memory, reset_peak_memory, time_over
from .record import StepRecorder, finite, ratio
from .sizes import SIZES
from .targets import TARGET_EXTRACTION_RATIO

from scalselect import reference_way  # the slow path, shared

# LLaVA-1.5-7B as llava-hf/llava-1.5-7b-hf has it: CLIP ViT-L/14 at 336 px (576 patches + CLS,
# features from the second-to-last layer, CLS dropped) and Llama-2-7B. Its embedding has 32,064
# rows (Llama-2's 32,000 plus <image> = 32,000 and padding), so the image token has an id.
LLAVA_7B = dict(
    vision_hidden=1024,
    vision_intermediate=4096,
    vision_layers=24,
    vision_heads=16,
    image_size=336,
    patch=14,
    text_hidden=4096,
    text_intermediate=11008,
    text_layers=32,
    text_heads=32,
    text_kv_heads=32,
    vocab=32064,
    image_token_id=32000,
)
TINY = dict(
    vision_hidden=32,
    vision_intermediate=64,
    vision_layers=2,
    vision_heads=2,
    image_size=56,
    patch=14,
    text_hidden=64,
    text_intermediate=128,
    text_layers=4,
    text_heads=4,
    text_kv_heads=2,
    vocab=320,
    image_token_id=300,
)


def llava_config(shape: dict):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape["vision_hidden"],
        intermediate_size=shape["vision_intermediate"],
        num_hidden_layers=shape["vision_layers"],
        num_attention_heads=shape["vision_heads"],
        image_size=shape["image_size"],
        patch_size=shape["patch"],
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["text_hidden"],
        intermediate_size=shape["text_intermediate"],
        num_hidden_layers=shape["text_layers"],
        num_attention_heads=shape["text_heads"],
        num_key_value_heads=shape["text_kv_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=shape["image_token_id"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_on_meta(shape: dict, dtype):
    """LlavaForConditionalGeneration of `shape` on the meta device: no memory, no init. Made
    with `dtype` as the default dtype, as from_pretrained(dtype=...) makes it (so the rotary
    inv_freq buffers stay float32)."""
    from transformers import LlavaForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(llava_config(shape))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def materialise(model, dev, seed: int = 0):
    """to_empty on `dev`, then transformers' own random init of every parameter and buffer
    (rotary frequencies, position ids included)."""
    model.to_empty(device=dev)
    for module in model.modules():  # to_empty keeps the "already initialised" marks of post_init
        if "_is_hf_initialized" in module.__dict__:
            del module.__dict__["_is_hf_initialized"]
    for t in list(model.parameters()) + list(model.buffers()):
        if "_is_hf_initialized" in t.__dict__:
            del t.__dict__["_is_hf_initialized"]
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed(seed)
    model.initialize_weights()
    bad = [
        n
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise RuntimeError(f"after the random init, non-finite values in {bad[:5]}")
    return model.eval()


def model_facts(model) -> dict:
    lm = model.model.language_model
    vt = model.model.vision_tower
    params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": params,
        "parameters_billion": round(params / 1e9, 3),
        "decoder_layers": len(lm.layers),
        "vision_layers": len(vt.vision_model.encoder.layers) if hasattr(vt, "vision_model") else len(vt.encoder.layers),
        "hidden_size": model.config.text_config.hidden_size,
        "devices": sorted({str(p.device) for p in model.parameters()}),
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}),
    }


def synthetic_samples(n: int, shape: dict, seed: int = 0):
    """Prepared samples as the DataLoader workers hand them over: a LLaVA-1.5 conversation of
    random token ids (bos, system prompt + "USER:", the image's tokens, a question, a reply,
    half with a second turn) with its token roles, and one random 'processed' image."""
    from scalselect.data.samples import Prepared

    gen = torch.Generator().manual_seed(seed)
    tiny = shape["text_hidden"] < 1024
    prefix, q_len, r_len = (5, (2, 6), (3, 10)) if tiny else (35, (8, 40), (20, 200))
    image_tokens = (shape["image_size"] // shape["patch"]) ** 2
    low, high = 3, shape["image_token_id"]  # text ids below the image token

    def ints(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    def text(count):
        return torch.randint(low, high, (count,), generator=gen)

    samples = []
    for i in range(n):
        parts = [
            (torch.tensor([1]), True),
            (text(prefix - 1), True),
            (torch.full((image_tokens,), shape["image_token_id"]), False),
        ]
        for _ in range(1 + (i % 2)):
            parts += [(text(ints(*q_len)), True), (text(ints(*r_len)), False)]
        ids = torch.cat([p for p, _ in parts])
        instruction = torch.cat([torch.full((len(p),), flag) for p, flag in parts])
        pixels = torch.randn(1, 3, shape["image_size"], shape["image_size"], generator=gen)
        inputs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long), "pixel_values": pixels}
        samples.append(Prepared(i, inputs, instruction))
    return samples


def _to_device(inputs: dict, dev, dtype) -> dict:
    return {k: v.to(device=dev, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}


def ours_loop(model, samples, batch_size, dev, dtype, tau, backend):
    """scalselect's fast path as the extraction job runs it in its main process: length-grouped
    batches, collate, to the device, layer 0 only, the two kernels, vectors back to the host.
    Returns ({id: vector}, {id: kept}, seconds of the timed loop); the first batch warms up."""
    from scalselect.data.samples import LengthBatcher, collate
    from scalselect.extract import layer_probe, probe_vectors

    batcher = LengthBatcher(batch_size)
    batches = [b for s in samples for b in batcher.push(s)] + batcher.flush()
    vectors, kept = {}, {}
    with layer_probe(model) as run:

        def forward(group):
            inputs, instruction = collate(group, 0)
            vec, count = probe_vectors(model, run, _to_device(inputs, dev, dtype), instruction.to(dev), tau, backend)
            for s, v, c in zip(group, vec.cpu(), count.cpu().tolist()):
                vectors[s.sample_id], kept[s.sample_id] = v, c

        seconds = time_over(batches, forward, dev)
    return vectors, kept, seconds


def reference_loop(model, samples, dev, dtype, tau):
    """The reference way of the tests (scalselect/reference_way.py: full forward with eager attention,
    every layer's attention map and hidden states kept, batch size 1), sample by sample. The first
    sample warms up (not timed)."""
    from scalselect.data.samples import collate

    vectors, kept = {}, {}

    def one(s):
        inputs, instruction = collate([s], 0)
        positions, vector, _ = reference_way.reference_vector(model, _to_device(inputs, dev, dtype), instruction.to(dev), tau)
        vectors[s.sample_id], kept[s.sample_id] = vector.float().cpu(), len(positions)

    seconds = time_over(samples, one, dev)
    return vectors, kept, seconds


def entries(rec: StepRecorder, mode: str) -> None:
    dev = device(mode)
    s = SIZES[mode]["extraction"]
    dtype = torch.bfloat16
    state: dict = {}

    def meta_full():  # the full LLaVA-1.5-7B on the meta device (every mode)
        t0 = time.perf_counter()
        model = build_on_meta(LLAVA_7B, dtype)
        facts = model_facts(model)
        facts["build_s"] = time.perf_counter() - t0
        facts["shape"] = LLAVA_7B
        state["full"] = model
        return facts

    rec.entry("meta_model_llava_1_5_7b", meta_full)

    def materialise_entry():
        if dev.type == "cuda":  # the full model, 14 GB of bfloat16 on the GPU
            model = state["full"] if state.get("full") is not None else build_on_meta(LLAVA_7B, dtype)
            shape = LLAVA_7B
        else:  # dry run: the same code on a tiny LLaVA on the CPU
            model, shape = build_on_meta(TINY, dtype), TINY
        with Stopwatch(dev) as watch:
            materialise(model, dev)
        state["model"], state["shape"] = model, shape
        facts = model_facts(model)
        facts["materialise_s"] = watch.seconds
        facts["shape"] = "LLaVA-1.5-7B" if shape is LLAVA_7B else "tiny (dry run)"
        if dev.type == "cuda":
            facts["gpu_bytes_allocated"] = torch.cuda.memory_allocated(dev)
        return facts

    if rec.entry("materialise", materialise_entry)["status"] != "ok":
        return
    model, shape = state["model"], state["shape"]
    n_max = max(s["samples"], s["twin_samples"], s["ref_samples"])
    samples = synthetic_samples(n_max, shape)
    lengths = [x.length for x in samples]
    rec.info(
        samples_tokens={"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        image_tokens=(shape["image_size"] // shape["patch"]) ** 2,
        note="in-memory samples (random token ids with LLaVA-1.5 roles, random processed pixels): "
        "sample preparation (image decoding, processor, chat template) is excluded for both "
        "ways; model loading is excluded for both",
    )
    res: dict = {}

    def ours(name, backend, count):
        def go():
            reset_peak_memory(dev)
            vec, kept, seconds = ours_loop(model, samples[:count], s["batch"], dev, dtype, s["tau"], backend)
            res[name] = (vec, kept)
            return {
                "backend": backend,
                "samples": count,
                "batch_size": s["batch"],
                "seconds": finite(seconds),
                "samples_per_s": ratio(count, seconds),
                "mean_kept_vision_tokens": sum(kept.values()) / len(kept),
                **peak_memory(dev),
            }

        return go

    def reference():
        reset_peak_memory(dev)
        count = s["ref_samples"]
        vec, kept, seconds = reference_loop(model, samples[:count], dev, dtype, s["tau"])
        res["reference"] = (vec, kept)
        out = {
            "samples": count,
            "batch_size": 1,
            "attention": "eager, every layer's map kept",
            "seconds": finite(seconds),
            "samples_per_s": ratio(count, seconds),
            **peak_memory(dev),
        }
        if "ours" in res:  # the same samples: how close are the two ways' vectors?
            v_ours, k_ours = res["ours"]
            cos = [float(torch.nn.functional.cosine_similarity(v_ours[i].float(), vec[i].float(), dim=0)) for i in vec]
            out["min_cosine_vs_ours"] = finite(min(cos))
            out["kept_equal_share"] = sum(k_ours[i] == kept[i] for i in kept) / len(kept)
        return out

    e_ours = rec.entry("scalselect", ours("ours", "auto", s["samples"]))
    e_twin = rec.entry("scalselect_twins", ours("twins", "torch", s["twin_samples"]))
    e_ref = rec.entry("reference", reference)
    summary = {}
    if e_ours["status"] == "ok" and e_ref["status"] == "ok":
        summary["ratio_ours_over_reference"] = ratio(e_ours["samples_per_s"], e_ref["samples_per_s"])
        summary["target_ratio"] = TARGET_EXTRACTION_RATIO
        summary["meets_target"] = bool((summary["ratio_ours_over_reference"] or 0) >= TARGET_EXTRACTION_RATIO)
    if e_ours["status"] == "ok" and e_twin["status"] == "ok":
        summary["ratio_ours_over_twins"] = ratio(e_ours["samples_per_s"], e_twin["samples_per_s"])
    rec.info(**summary)
