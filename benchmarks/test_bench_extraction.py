"""Extraction: scalselect's layer-0 fast path vs the reference way, side by side, in samples/s.

    pytest benchmarks/test_bench_extraction.py -s

The model is LLaVA-shaped with random weights: a CLIP vision tower at 224 px (256 vision tokens
per image) and a 16-layer Llama decoder, scaled down in width so that it runs on a CPU. The
reference way is what the reference implementation does: a full forward with eager attention,
every layer's attention map and hidden states kept, batch size 1, then the instruction -> vision
block of layer 0. Both ways start from the same pool file and images and do their own sample
preparation (image decoding, chat template, processor, token roles).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalselect import reference_way
from conftest import RESULTS

SAMPLES = 24
SHAPE = dict(image_size=224, text_layers=16, text_hidden=512, text_heads=8, text_kv_heads=8, vision_hidden=64, vision_layers=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image

    from scalselect.models.tiny import save_tiny_llava

    root = tmp_path_factory.mktemp("bench-extract")
    model = save_tiny_llava(root / "model", **SHAPE)
    rng = np.random.default_rng(0)
    records = []
    for i in range(SAMPLES):
        Image.fromarray((rng.random((200 + i, 260, 3)) * 255).astype("uint8")).save(root / f"{i}.png")
        conv = [
            {"from": "human", "value": "<image>\nWhat is shown in the image? Describe it in detail."},
            {"from": "gpt", "value": "A cat sits on a red sofa next to a window. " * (1 + i % 4)},
        ]
        if i % 2:
            conv += [{"from": "human", "value": "How many dogs are there?"}, {"from": "gpt", "value": "Two."}]
        records.append({"id": i, "image": f"{i}.png", "conversations": conv})
    (root / "pool.json").write_text(json.dumps(records))
    return root, model


def test_extract_reference_way(setup):
    root, model = setup
    vectors, seconds = reference_way.reference_pool_vectors(model, root / "pool.json", root)
    RESULTS["extract_reference"] = seconds
    print(f"\nreference way: {SAMPLES / seconds:.2f} samples/s")
    assert len(vectors) == SAMPLES


def scalselect_runs(model, root, out_dir, backend: str, rounds: int):
    """Best loop time of `rounds` extractions (model loading excluded, as for the reference)."""
    from scalselect.pipeline import ExtractOptions, extract_store

    runs = []

    def run():
        out = out_dir / f"{backend}{len(runs)}"
        runs.append(
            extract_store(
                model,
                root / "pool.json",
                root,
                out,
                ExtractOptions(batch_size=8, progress=False, store_dtype="float32", kernel_backend=backend),
            )
        )
        return out

    out = [run() for _ in range(rounds)][-1]
    return out, min(r["seconds"] for r in runs)


def test_extract_scalselect(setup, tmp_path):
    from scalselect.stores import load_representations

    root, model = setup
    out, RESULTS["extract_scalselect"] = scalselect_runs(model, root, tmp_path, "auto", 3)
    print(f"\nscalselect: {SAMPLES / RESULTS['extract_scalselect']:.2f} samples/s")
    ids, x = load_representations(out)
    want, _ = reference_way.reference_pool_vectors(model, root / "pool.json", root)
    for sample_id, row in zip(ids, x):  # the same vectors as the reference way
        cos = torch.nn.functional.cosine_similarity(torch.as_tensor(row), want[sample_id].float(), dim=0)
        assert float(cos) > 0.99999


def test_extract_scalselect_twins(setup, tmp_path):
    """The same, with the PyTorch twins instead of the compiled kernels."""
    root, model = setup
    _, RESULTS["extract_scalselect_twins"] = scalselect_runs(model, root, tmp_path, "torch", 2)
    print(f"\nscalselect with twins: {SAMPLES / RESULTS['extract_scalselect_twins']:.2f} samples/s")
