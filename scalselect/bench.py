"""`scalselect bench`: on this machine, each native kernel against its PyTorch twin, scoring
against the reference method and a plain PyTorch Gram pipeline, and extraction's fast path
against the reference way, side by side in one run, as times and ratios (and JSON).

Every timed call is synchronised on a GPU; each entry keeps its best and median time. Inputs are
random but seeded, at the sizes of benchmarks/README.md (`quick`: smaller, for a smoke test).
The comparisons with their errors say that what is timed computes the same thing.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import kernels, reference_way
from .errors import InputError
from .kernels import twins
from .scoring import leverage_scores

# The sizes of benchmarks/README.md; `quick` keeps the kernels' and the model's, with a narrower
# scoring matrix and fewer samples, so that a CPU runs it in about a minute.
KERNEL_CHUNK = (4096, 4096)  # a scoring chunk: rows x D, float32
SCORING = {False: (20_000, 4096), True: (20_000, 1024)}  # N x D
MODEL = dict(image_size=224, text_layers=16, text_hidden=512, text_heads=8, text_kv_heads=8, vision_hidden=64)
SAMPLES = {False: 24, True: 8}

# How far each result may be from its baseline's, for an entry to agree (`bench` exits 1 if one
# does not). A kernel and its twin sum float32 products of at most 4,096 terms in other orders:
# within 4,096 * 2^-24 of the largest value, relative. Scores against the reference script
# (float32 SVD): 1e-4 relative, the bound the benchmarks hold them to. Vectors of the fast path
# against the reference way: the tests' cosine bound.
KERNEL_BOUND = 4096 * 2.0**-24
SCORE_BOUND = 1e-4
COSINE_BOUND = 0.99999


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device, repeats: int, warmup: int = 1) -> tuple[dict, object]:
    """{"best_s", "median_s", "repeats"} of `fn()` (synchronised before and after each call on a
    GPU; `warmup` untimed calls first), and its last result."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}, result


def errors(got, want) -> dict:
    """Largest absolute difference, and largest relative to the largest magnitude of `want`."""
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    worst_abs = worst_rel = 0.0
    for g, w in zip(got, want):
        diff = float((g.double().cpu() - w.double().cpu()).abs().max()) if g.numel() else 0.0
        scale = float(w.double().abs().max()) if w.numel() else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


def pair(
    name: str,
    what: str,
    ours: Callable,
    theirs: Callable,
    device,
    repeats: int,
    baseline: str,
    bound: float,
    baseline_repeats: int | None = None,
) -> dict:
    """One entry: ours and the baseline timed side by side (after one warm-up call each, but for
    a baseline timed once, which runs once); ratio = the baseline's best / ours; agrees: the
    largest difference, relative, is within `bound`."""
    mine, got = timed(ours, device, repeats)
    once = baseline_repeats == 1
    base, want = timed(theirs, device, baseline_repeats or repeats, warmup=0 if once else 1)
    found = errors(got, want)
    return {
        "group": name,
        "what": what,
        "ours": mine,
        "baseline": baseline,
        "theirs": base,
        "ratio": base["best_s"] / mine["best_s"],
        **found,
        "bound": bound,
        "agrees": found["max_rel_error"] <= bound,
    }


def llava_like_batch(seed: int = 0):
    """The extraction kernels' inputs at a LLaVA-1.5-7B-like size: 4 conversations right-padded
    to 700 tokens (lengths 700, 680, 650, 620), a 35-token system prompt and "USER:", 576 image
    tokens, then user turns and replies alternating every 20 tokens; 8 heads of 64 (the model's
    32 of 128 cut down: the work is linear in both) and a 4,096-wide hidden state, in bfloat16 as
    the model runs. (q, k, hidden, valid, instruction rows, vision columns), on the CPU."""
    batch, heads, seq, head_dim, dim, image = 4, 8, 700, 64, 4096, (35, 35 + 576)
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(batch, heads, seq, head_dim, generator=gen) * 1.5).to(torch.bfloat16)
    k = torch.randn(batch, heads, seq, head_dim, generator=gen).to(torch.bfloat16)
    hidden = torch.randn(batch, seq, dim, generator=gen).to(torch.bfloat16)
    positions = torch.arange(seq)
    valid = positions[None, :] < torch.tensor([700, 680, 650, 620])[:, None]
    vision = ((positions >= image[0]) & (positions < image[1]))[None, :] & valid
    reply = (positions >= image[1]) & ((positions - image[1]) // 20 % 2 == 1)
    return q, k, hidden, valid, valid & ~vision & ~reply[None, :], vision


def kernel_entries(device: torch.device, quick: bool) -> list[dict]:
    """Each native kernel (backend "native") against its twin on the same device."""
    g = torch.Generator().manual_seed(0)
    n, d = KERNEL_CHUNK
    x = torch.randn(n, d, generator=g).to(device)
    shift = x[:256].double().mean(0)
    reps = 3 if quick else 5

    def entry(what, ours, twin):
        return pair("kernel", what, ours, twin, device, reps, "twin", KERNEL_BOUND)

    out = [
        entry(
            f"gram_prep {n}x{d} float32",
            lambda: kernels.gram_prep(x, shift, None, False, backend="native"),
            lambda: twins.gram_prep(x, shift, None, False),
        )
    ]
    for k in (16, 256):
        w = (torch.randn(d, k, generator=g) / d**0.5).to(device)
        out.append(
            entry(
                f"projected_sqnorm {n}x{d}, k={k}",
                lambda w=w: kernels.projected_sqnorm(x, shift, None, False, w, backend="native"),
                lambda w=w: twins.projected_sqnorm(x, shift, None, False, w),
            )
        )
    q, keys, hidden, valid, rows, cols = llava_like_batch()
    mass = torch.rand(cols.shape, generator=g, dtype=torch.float64) * cols
    q, keys, hidden, valid, rows, cols, mass = (t.to(device) for t in (q, keys, hidden, valid, rows, cols, mass))
    b, h, s, hd = q.shape
    out.append(
        entry(
            f"attention_mass {b}x{h}x{s}x{hd} bfloat16",
            lambda: kernels.attention_mass(q, keys, valid, rows, cols, hd**-0.5, backend="native"),
            lambda: twins.attention_mass(q, keys, valid, rows, cols, hd**-0.5),
        )
    )
    out.append(
        entry(
            f"top_mass_mean {b}x{s}x{hidden.shape[-1]} bfloat16",
            lambda: kernels.top_mass_mean(hidden, mass, cols, 0.9, backend="native"),
            lambda: twins.top_mass_mean(hidden, mass, cols, 0.9),
        )
    )
    return out


def reference_scores(x: np.ndarray, energy: float = 0.9) -> np.ndarray:
    """The reference method as the paper's script runs it: centre, thin SVD twice (the first
    chooses k, the second gives the left vectors), in the input's dtype."""
    centred = x - x.mean(axis=0)
    s = np.linalg.svd(centred, full_matrices=False)[1]
    k = max(1, min(int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), energy)) + 1, len(s)))
    u = np.linalg.svd(centred, full_matrices=False)[0]
    return (u[:, :k].astype(np.float64) ** 2).sum(axis=1)


def gram_pipeline_scores(x: torch.Tensor, energy: float = 0.9) -> torch.Tensor:
    """The obvious pure-PyTorch version: centre, XᵀX, full eigh, project."""
    centred = x - x.mean(dim=0)
    values, vectors = torch.linalg.eigh((centred.T @ centred).double())
    values, vectors = values.flip(0), vectors.flip(1)
    k = int(torch.nonzero(torch.cumsum(values, 0) >= energy * values.sum())[0]) + 1
    return ((centred @ (vectors[:, :k] / values[:k].sqrt()).to(x.dtype)).double() ** 2).sum(dim=1)


def scoring_entries(device: torch.device, quick: bool) -> list[dict]:
    """leverage_scores (exact, compiled kernels) against the reference method and the Gram
    pipeline, on a matrix of decaying spectrum (sigma_i ~ i^-0.7, k ~ 100 at full size)."""
    n, d = SCORING[quick]
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    spectrum = torch.arange(1, d + 1, dtype=torch.float64) ** -0.7
    x = ((torch.randn(n, d, generator=g, dtype=torch.float64) * spectrum) @ basis.T).float() + 0.3
    x = x + 1e-3 * torch.randn(n, d, generator=g)
    on_device = x.to(device)
    where = str(device)

    def ours():
        return torch.from_numpy(leverage_scores(on_device, device=where, method="exact", backend="native").scores)

    def twins_engine():
        return torch.from_numpy(leverage_scores(on_device, device=where, method="exact", backend="torch").scores)

    reps = 2 if quick else 5
    what = f"{n}x{d} float32"
    return [
        pair(
            "scoring",
            what,
            ours,
            lambda: torch.from_numpy(reference_scores(x.numpy())),
            device,
            reps,
            "reference (centre + thin SVD x2, numpy on the CPU)",
            SCORE_BOUND,
            baseline_repeats=1,  # minutes at full size: once
        ),
        pair(
            "scoring",
            what,
            ours,
            lambda: gram_pipeline_scores(on_device).cpu(),
            device,
            reps,
            "pure-PyTorch Gram pipeline",
            SCORE_BOUND,
        ),
        pair("scoring", what, ours, twins_engine, device, reps, "scalselect on its PyTorch twins", SCORE_BOUND),
    ]


def extraction_entries(device: torch.device, quick: bool, workdir: Path) -> list[dict]:
    """extract_store (batch 8, compiled kernels) against the reference way (full forward, eager
    attention, every map kept, batch 1) on a LLaVA-shaped model with random weights built from
    its config; both prepare their own samples, neither counts model loading."""
    from PIL import Image

    from .models.tiny import save_tiny_llava
    from .pipeline import ExtractOptions, extract_store
    from .stores import load_representations

    samples, shape = SAMPLES[quick], MODEL
    model = save_tiny_llava(workdir / "model", vision_layers=2, **shape)
    rng = np.random.default_rng(0)
    records = []
    for i in range(samples):
        Image.fromarray((rng.random((200 + i, 260, 3)) * 255).astype("uint8")).save(workdir / f"{i}.png")
        reply = "A cat sits on a red sofa next to a window. " * (1 + i % 4)
        records.append(
            {
                "id": i,
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is shown in the image? Describe it in detail."},
                    {"from": "gpt", "value": reply},
                ],
            }
        )
    pool = workdir / "pool.json"
    pool.write_text(json.dumps(records), encoding="utf-8")
    runs, reference_runs = [], []

    def ours():  # float32 like the reference way, so that only the way differs
        out = workdir / f"store{len(runs)}"
        options = ExtractOptions(
            batch_size=8, progress=False, dtype="float32", store_dtype="float32", device=str(device), workers=0
        )
        runs.append(extract_store(model, pool, workdir, out, options)["seconds"])
        return out

    for _ in range(2 if quick else 3):  # the first run of each warms up what the others reuse
        store = ours()
        want, seconds = reference_way.reference_pool_vectors(model, pool, workdir, device=device)
        reference_runs.append(seconds)
    ids, got = load_representations(store)
    cosine = min(
        float(torch.nn.functional.cosine_similarity(torch.as_tensor(row).double(), want[i].double(), dim=0))
        for i, row in zip(ids, got)
    )
    best = min(runs)
    return [
        {
            "group": "extraction",
            "what": f"{samples} samples, {shape['text_layers']}-layer LLaVA-shaped model",
            "ours": {"best_s": best, "median_s": statistics.median(runs), "repeats": len(runs)},
            "baseline": "reference way (full forward, eager, batch 1)",
            "theirs": {
                "best_s": min(reference_runs),
                "median_s": statistics.median(reference_runs),
                "repeats": len(reference_runs),
            },
            "ratio": min(reference_runs) / best,
            "min_cosine": cosine,
            "bound": COSINE_BOUND,
            "agrees": cosine >= COSINE_BOUND,
        }
    ]


def run_bench(device: torch.device, quick: bool, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every entry on `device`: {"device", "quick", "torch_threads", "native", "entries": [...]}."""
    built = kernels.build_info()
    if not built["native"]:
        raise InputError(f"the compiled kernels are not available ({built['error']}): there is nothing to compare the twins with")
    if device.type == "cuda" and not built["cuda"]:
        raise InputError("this scalselect was built without CUDA kernels: bench --device cpu, or install a wheel with them")
    entries = []
    progress("kernels")
    entries += kernel_entries(device, quick)
    progress("scoring")
    entries += scoring_entries(device, quick)
    progress("extraction")
    with tempfile.TemporaryDirectory(prefix="scalselect-bench-") as tmp:
        entries += extraction_entries(device, quick, Path(tmp))
    return {
        "device": str(device),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "native": built,
        "entries": entries,
    }


def table(report: dict) -> str:
    """The report as a fixed-width table: one line per entry."""
    lines = [
        f"scalselect bench on {report['device']} ({'quick' if report['quick'] else 'full'} sizes, "
        f"{report['torch_threads']} CPU threads)",
        f"{'group':<11}{'what':<52}{'scalselect':>12}{'baseline':>12}{'ratio':>9}  {'agreement':<30}baseline",
    ]
    for e in report["entries"]:
        if "min_cosine" in e:
            agree = f"1 - cosine {1 - e['min_cosine']:.1e} <= {1 - e['bound']:.0e}"
        else:
            agree = f"rel err {e['max_rel_error']:.1e} <= {e['bound']:.1e}"
        agree = agree if e["agrees"] else agree.replace("<=", "EXCEEDS")
        lines.append(
            f"{e['group']:<11}{e['what'][:51]:<52}{e['ours']['best_s']:>11.4f}s{e['theirs']['best_s']:>11.4f}s"
            f"{e['ratio']:>8.2f}x  {agree:<30}{e['baseline']}"
        )
    lines.append("ratio: the baseline's best time / scalselect's best time (> 1: scalselect is faster)")
    return "\n".join(lines)


def disagreeing(report: dict) -> list[str]:
    """The entries whose results are further from their baselines' than their bounds allow."""
    return [f"{e['group']} {e['what']} vs {e['baseline']}" for e in report["entries"] if not e["agrees"]]
