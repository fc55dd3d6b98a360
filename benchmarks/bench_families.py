"""A windowed and a hybrid family: the fast path against the reference way, and the attention
kernel under a sliding window against causal attention.

    python benchmarks/bench_families.py [--dir /tmp/scalselect-families] [--layers 16] [--samples 16]

Extraction: tiny Gemma 3 (layer types [sliding, sliding, full] repeated, window 16) and tiny
Qwen3.5 (Gated DeltaNet layers with a softmax layer every fourth, so L = 2), made --layers deep
with random weights; a pool of multi-turn one-image samples. The reference way is
scalselect/reference_way.py (full forward, eager attention, every map kept, batch size 1); scalselect
is extract_store, batch 8, with the compiled kernels and with the PyTorch twins. Model loading
is excluded from both. Every vector is checked against the reference (cosine).

Kernel: attention_mass on a LLaVA-sized batch (2 x 4,096 tokens, 8 heads of 64, bfloat16, a
block of 2,880 vision tokens) with causal key ranges and with a sliding window of 512 keys.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from scalselect import reference_way  # noqa: E402  (the slow path)


def deepened(family: str, out: Path, layers: int) -> Path:
    """The tiny `family` checkpoint with `layers` decoder layers (its layer-type pattern repeated)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from scalselect.models import tiny

    path = tiny.BUILDERS[family](out)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text = config.get_text_config()
    pattern = list(text.layer_types)
    text.num_hidden_layers, text.layer_types = layers, [pattern[i % len(pattern)] for i in range(layers)]
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(path)
    return path


def make_pool(root: Path, samples: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(samples):
        Image.fromarray((rng.random((56 + 4 * i, 64, 3)) * 255).astype("uint8")).save(root / f"{i}.png")
        conv = [
            {"from": "human", "value": "<image>\nWhat is shown in the image? Describe it in detail."},
            {"from": "gpt", "value": "A cat sits on a red sofa next to a window. " * (1 + i % 3)},
            {"from": "human", "value": "How many dogs are there? What colour is the car?"},
            {"from": "gpt", "value": "There are 2 dogs. The car is red. " * (1 + i % 2)},
        ]
        records.append({"id": i, "image": f"{i}.png", "conversations": conv})
    (root / "pool.json").write_text(json.dumps(records))
    return root / "pool.json"


def scalselect_loop(model_dir: Path, pool_path: Path, root: Path, out: Path, backend: str):
    from scalselect.pipeline import ExtractOptions, extract_store
    from scalselect.stores import load_representations

    summary = extract_store(
        model_dir,
        pool_path,
        root,
        out,
        ExtractOptions(batch_size=8, progress=False, store_dtype="float32", kernel_backend=backend, workers=0),
    )
    ids, x = load_representations(out)
    return dict(zip(ids, x)), summary["seconds"]


def extraction(family: str, work: Path, layers: int, samples: int) -> dict:
    root = work / family
    root.mkdir(parents=True, exist_ok=True)
    model_dir = deepened(family, root / "model", layers)
    pool = make_pool(root, samples)
    want, ref_s = reference_way.reference_pool_vectors(model_dir, pool, root)
    got, ours_s = scalselect_loop(model_dir, pool, root, root / "native", "auto")
    _, twin_s = scalselect_loop(model_dir, pool, root, root / "twins", "torch")
    cosine = min(
        float(torch.nn.functional.cosine_similarity(torch.as_tensor(got[k]).double(), want[k].double(), dim=0)) for k in want
    )
    return {
        "family": family,
        "layers": layers,
        "samples": samples,
        "reference_s": ref_s,
        "scalselect_s": ours_s,
        "twins_s": twin_s,
        "min_cosine": cosine,
    }


def best(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def kernel(window: int = 512) -> dict:
    from scalselect import kernels
    from scalselect.kernels import twins

    gen = torch.Generator().manual_seed(0)
    b, heads, seq, hd = 2, 8, 4096, 64
    q = torch.randn(b, heads, seq, hd, generator=gen).bfloat16()
    k = torch.randn(b, heads, seq, hd, generator=gen).bfloat16()
    valid = torch.ones(b, seq, dtype=torch.bool)
    vision = torch.zeros(b, seq, dtype=torch.bool)
    vision[:, 40 : 40 + 2880] = True  # five 576-token images after a short prompt
    rows = ~vision
    causal = twins.causal_key_ranges(valid)
    at = torch.arange(seq, dtype=torch.int32)
    sliding = ((at - window + 1).clamp(min=0).expand(b, seq).contiguous(), causal[1])
    out = {}
    for name, ranges in (("causal", causal), ("sliding", sliding)):
        out[f"{name}_native_s"] = best(lambda: kernels.attention_mass(q, k, valid, rows, vision, 0.125, ranges, backend="native"))
        out[f"{name}_twin_s"] = best(
            lambda: kernels.attention_mass(q, k, valid, rows, vision, 0.125, ranges, backend="torch"), rounds=2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scalselect-families"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    results = {
        "extraction": [extraction(f, args.dir, args.layers, args.samples) for f in ("gemma3", "qwen3_5")],
        "kernel": kernel(),
    }
    print("| family | reference way | scalselect | with twins | reference / scalselect | min cosine |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results["extraction"]:
        print(
            f"| {r['family']} ({r['layers']} layers) | {r['reference_s']:.2f} s | {r['scalselect_s']:.2f} s | "
            f"{r['twins_s']:.2f} s | {r['reference_s'] / r['scalselect_s']:.1f}x | {r['min_cosine']:.7f} |"
        )
    kr = results["kernel"]
    print("\n| attention_mass, 2 x 4,096 tokens | native | twin | twin / native |")
    print("| --- | --- | --- | --- |")
    for name in ("causal", "sliding"):
        n, t = kr[f"{name}_native_s"], kr[f"{name}_twin_s"]
        print(f"| {name} | {n * 1e3:.1f} ms | {t * 1e3:.0f} ms | {t / n:.1f}x |")
    print(f"| causal / sliding (native) | {kr['causal_native_s'] / kr['sliding_native_s']:.1f}x | | |")
    (args.dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
