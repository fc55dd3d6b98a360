#!/usr/bin/env python3
"""The Python half of benchmarks/gpu_check.sh: kernel timings, the whole scoring
engine, end-to-end extraction on a LLaVA-1.5-7B-shaped model, and the report.

    python benchmarks/gpu_check.py step {kernels,leverage,extraction} --out DIR --mode {full,quick,dry}
    python benchmarks/gpu_check.py record --out DIR --name NAME --status ok ...  (used by the .sh)
    python benchmarks/gpu_check.py report --out DIR --mode MODE

Each `step` runs in its own process (the shell gives it a timeout) and writes
DIR/steps/NAME.json after every entry, so a step killed half way keeps what it measured.
Mode "dry" (`gpu_check.sh --cpu-dry-run`) runs the very same functions on the CPU with tiny
tensors, and builds the full-size LLaVA-1.5-7B on the meta device only.

torch is imported inside the steps, so `record` and `report` start fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import reference_way  # noqa: E402  (the slow path of the tests, shared)

SCHEMA = "scalselect-gpu-check/1"
STEPS = ("build", "tests", "sanitizer", "kernels", "leverage", "extraction")
STATUSES = ("ok", "failed", "skipped")

# --- Sizes per mode ------------------------------------------------------------------------------
# full: the whole check (<= 8 min in all on an H200); quick: <= 3 min; dry: tiny CPU tensors
# through the same code (a typo in the timing code fails here, not on the rented GPU).
SIZES = {
    "full": {
        "device": "cuda",
        # LLaVA-1.5-7B layer 0: 32 heads (no GQA) of 128; 32 samples padded to 2,048 tokens,
        # 576 vision tokens each after a 35-token system prompt.
        "mass": dict(batch=32, seq=2048, heads=32, kv_heads=32, head_dim=128, vision=576, prefix=35,
                     dtypes=["bfloat16", "float16"], reps=10, twin_reps=2),
        "top": dict(batch=32, seq=2048, dim=4096, vision=576, prefix=35,
                    dtypes=["bfloat16", "float16"], reps=10, twin_reps=3),
        # the engine's chunk: 128 MiB of float32 centred rows = 8,192 rows at D = 4,096
        "gram": dict(rows=665_000, dim=4096, chunk=8192, ks=[128, 1024], reps=3, twin_reps=2),
        "leverage": dict(rows=665_000, dim=4096, warm_rows=32_768, twins=True, xtx=True),
        "extraction": dict(samples=256, batch=16, twin_samples=64, ref_samples=24, tau=0.9),
    },
    "quick": {
        "device": "cuda",
        "mass": dict(batch=32, seq=2048, heads=32, kv_heads=32, head_dim=128, vision=576, prefix=35,
                     dtypes=["bfloat16"], reps=5, twin_reps=1),
        "top": dict(batch=32, seq=2048, dim=4096, vision=576, prefix=35,
                    dtypes=["bfloat16"], reps=5, twin_reps=1),
        "gram": dict(rows=131_072, dim=4096, chunk=8192, ks=[128], reps=2, twin_reps=1),
        "leverage": dict(rows=131_072, dim=4096, warm_rows=16_384, twins=True, xtx=True),
        "extraction": dict(samples=64, batch=16, twin_samples=16, ref_samples=8, tau=0.9),
    },
    "dry": {
        "device": "cpu",
        "mass": dict(batch=2, seq=96, heads=4, kv_heads=2, head_dim=32, vision=32, prefix=6,
                     dtypes=["bfloat16", "float16"], reps=2, twin_reps=1),
        "top": dict(batch=2, seq=96, dim=64, vision=32, prefix=6,
                    dtypes=["bfloat16", "float16"], reps=2, twin_reps=1),
        "gram": dict(rows=3000, dim=64, chunk=1024, ks=[16, 48], reps=2, twin_reps=1),
        "leverage": dict(rows=3000, dim=64, warm_rows=1000, twins=True, xtx=True),
        "extraction": dict(samples=8, batch=4, twin_samples=4, ref_samples=2, tau=0.9),
    },
}

# The GPU targets (to be verified on an H200).
TARGET_EXTRACTION_RATIO = 20.0
TARGET_KERNEL_RATIO = 1.0
TARGET_GRAM_PROJECTION_S = 1.0


# --- Small helpers -------------------------------------------------------------------------------

def _write_json(path: Path, data) -> None:
    """Written to a temporary file and renamed: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _finite(x):
    """JSON has no NaN / inf: None instead."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(num, den):
    return _finite(num / den) if num is not None and den else None


class StepRecorder:
    """DIR/steps/NAME.json, rewritten after every entry."""

    def __init__(self, out: Path, name: str, mode: str):
        self.path = out / "steps" / f"{name}.json"
        self.data = {"step": name, "mode": mode, "status": "running", "entries": [], "info": {},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.t0 = time.perf_counter()
        self.flush()

    def flush(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.t0, 3)
        _write_json(self.path, self.data)

    def info(self, **kw) -> None:
        self.data["info"].update(kw)
        self.flush()

    def entry(self, name: str, fn) -> dict | None:
        """Run fn() -> dict and keep it as an entry; an exception is kept as a failed entry and
        the step goes on with its next entry."""
        t0 = time.perf_counter()
        print(f"[{self.data['step']}] {name} ...", flush=True)
        try:
            result = {"name": name, "status": "ok", **fn()}
        except Exception as exc:  # one failing entry must not hide the others' numbers
            traceback.print_exc()
            result = {"name": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        self.data["entries"].append(result)
        self.flush()
        print(f"[{self.data['step']}] {name}: {result['status']} ({result['seconds']:.1f} s)", flush=True)
        return result

    def finish(self) -> int:
        failed = [e["name"] for e in self.data["entries"] if e["status"] != "ok"]
        self.data["status"] = "failed" if failed else "ok"
        if failed:
            self.data["failed_entries"] = failed
        self.flush()
        return 1 if failed else 0


def _device(mode: str):
    import torch

    dev = torch.device(SIZES[mode]["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no usable CUDA GPU (torch.cuda.is_available() is False); "
                           "use --cpu-dry-run on a machine without one")
    return dev


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn, dev, reps: int, warmup: int = 1):
    """(best seconds, median seconds, last result) of fn() over `reps` runs after `warmup`."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(dev)
    times = []
    for _ in range(max(1, reps)):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def errors(got, want) -> dict:
    """max |got - want|, and the largest elementwise relative error among the entries of `want`
    above 1e-6 x its largest magnitude (tinier ones have no meaningful relative error)."""
    import torch

    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    diff = (got - want).abs()
    scale = float(want.abs().max()) if want.numel() else 0.0
    big = want.abs() > 1e-6 * scale
    rel = float((diff[big] / want[big].abs()).max()) if bool(big.any()) else 0.0
    return {"max_abs_err": _finite(diff.max()) if diff.numel() else 0.0, "max_rel_err": _finite(rel),
            "ref_max_abs": _finite(scale), "finite": bool(torch.isfinite(got).all())}


def timing_entry(shape: dict, dtype: str, native: tuple, twin: tuple, errs: dict, **extra) -> dict:
    """The fields every kernel entry has: native and twin times, speed ratio, errors."""
    return {"shape": shape, "dtype": dtype,
            "native_s": _finite(native[0]), "native_median_s": _finite(native[1]),
            "twin_s": _finite(twin[0]), "twin_median_s": _finite(twin[1]),
            "ratio": _ratio(twin[0], native[0]),  # twin / native: > 1 means the kernel is faster
            "target_ratio": TARGET_KERNEL_RATIO, **errs, **extra}


# --- (d) the four kernels vs their twins ---------------------------------------------------------

def extraction_batch(b: int, seq: int, heads: int, kv_heads: int, hd: int, vision: int, prefix: int,
                     dtype, dev, dim: int | None = None, seed: int = 0):
    """A LLaVA-like padded batch: `prefix` system/template tokens, `vision` image tokens, then
    user turns and assistant replies alternating every 20 tokens; right padding, lengths from
    seq down to ~60 % of it. Returns q, k, hidden (or None), valid, instruction, vision masks."""
    import torch

    gen = torch.Generator(device=dev).manual_seed(seed)  # made where they are used: no 1 GB host copies
    q = (torch.randn(b, heads, seq, hd, generator=gen, device=dev) * 1.5).to(dtype)
    k = torch.randn(b, kv_heads, seq, hd, generator=gen, device=dev).to(dtype)
    hidden = torch.randn(b, seq, dim, generator=gen, device=dev).to(dtype) if dim else None
    lo = max(prefix + vision + 4, int(0.6 * seq))
    lengths = torch.linspace(seq, lo, b).round().long()
    positions = torch.arange(seq)
    valid = positions[None, :] < lengths[:, None]
    vis = ((positions >= prefix) & (positions < prefix + vision))[None, :] & valid
    reply = (positions >= prefix + vision) & ((positions - prefix - vision) // 20 % 2 == 1)
    instruction = valid & ~vis & ~reply[None, :]
    return (q, k, hidden, *(t.to(dev) for t in (valid, instruction, vis)))


def kernel_entries(rec: StepRecorder, mode: str) -> None:
    import torch

    from scalselect import kernels
    from scalselect.kernels import twins

    dev = _device(mode)
    sizes = SIZES[mode]
    m, t, g = sizes["mass"], sizes["top"], sizes["gram"]

    for dtype_name in m["dtypes"]:
        def mass_entry(dtype_name=dtype_name):
            dtype = getattr(torch, dtype_name)
            q, k, _, valid, instr, vis = extraction_batch(m["batch"], m["seq"], m["heads"], m["kv_heads"],
                                                          m["head_dim"], m["vision"], m["prefix"], dtype, dev)
            scale = m["head_dim"] ** -0.5
            native = time_fn(lambda: kernels.attention_mass(q, k, valid, instr, vis, scale, backend="native"),
                             dev, m["reps"])
            twin = time_fn(lambda: twins.attention_mass(q, k, valid, instr, vis, scale), dev, m["twin_reps"])
            shape = {k_: m[k_] for k_ in ("batch", "seq", "heads", "kv_heads", "head_dim", "vision")}
            shape["instruction_rows"] = int((instr & valid).sum())
            return timing_entry(shape, dtype_name, native, twin, errors(native[2], twin[2]),
                                kernel="attention_mass")
        rec.entry(f"attention_mass[{dtype_name}]", mass_entry)

    for dtype_name in t["dtypes"]:
        def top_entry(dtype_name=dtype_name):
            dtype = getattr(torch, dtype_name)
            _, _, hidden, valid, _, vis = extraction_batch(t["batch"], t["seq"], 1, 1, 8, t["vision"],
                                                           t["prefix"], dtype, dev, dim=t["dim"], seed=1)
            gen = torch.Generator(device=dev).manual_seed(2)
            mass = torch.rand(t["batch"], t["seq"], generator=gen, dtype=torch.float64, device=dev) ** 4
            mass = mass * vis  # what attention_mass gives: 0 outside the vision tokens
            native = time_fn(lambda: kernels.top_mass_mean(hidden, mass, vis, 0.9, backend="native"),
                             dev, t["reps"])
            twin = time_fn(lambda: twins.top_mass_mean(hidden, mass, vis, 0.9), dev, t["twin_reps"])
            shape = {k_: t[k_] for k_ in ("batch", "seq", "dim", "vision")}
            (got, kept), (want, want_kept) = native[2], twin[2]
            return timing_entry(shape, dtype_name, native, twin, errors(got, want), kernel="top_mass_mean",
                                kept_equal=bool(torch.equal(kept.cpu(), want_kept.cpu())),
                                mean_kept=float(kept.double().mean()))
        rec.entry(f"top_mass_mean[{dtype_name}]", top_entry)

    # gram_prep and projected_sqnorm: one pass over an N x D bfloat16 matrix on the device, in
    # the engine's chunks, as leverage_scores makes it (errors on the first and last chunks).
    x = None

    def make_x():
        nonlocal x
        t0 = time.perf_counter()
        x = spectrum_matrix(g["rows"], g["dim"], dev)
        _sync(dev)
        return {"shape": [g["rows"], g["dim"]], "dtype": "bfloat16", "generate_s": time.perf_counter() - t0,
                "bytes": x.numel() * x.element_size()}
    if rec.entry("matrix", make_x)["status"] != "ok":
        return
    d, chunk = g["dim"], g["chunk"]
    shift = x[:1024].double().mean(dim=0)
    probe = [x[:chunk], x[-chunk:]]

    def one_pass(fn):
        def run():
            last = None
            for lo in range(0, x.shape[0], chunk):
                last = fn(x[lo:lo + chunk])
            return last
        return run

    def prep_entry():
        native = time_fn(one_pass(lambda c: kernels.gram_prep(c, shift, backend="native")), dev, g["reps"])
        twin = time_fn(one_pass(lambda c: twins.gram_prep(c, shift, None, False)), dev, g["twin_reps"])
        worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
        for c in probe:
            got, want = kernels.gram_prep(c, shift, backend="native"), twins.gram_prep(c, shift, None, False)
            for a, b in zip(got, want):
                e = errors(a, b)
                worst = {k_: max(worst[k_], e[k_] or 0.0) for k_ in worst}
        return timing_entry({"rows": g["rows"], "dim": d, "chunk": chunk}, "bfloat16", native, twin, worst,
                            kernel="gram_prep", per="one pass over all rows")
    rec.entry("gram_prep[bfloat16]", prep_entry)

    for k in g["ks"]:
        def proj_entry(k=k):
            gen = torch.Generator(device=dev).manual_seed(k)
            w = torch.randn(d, k, generator=gen, device=dev) / d ** 0.5
            native = time_fn(one_pass(lambda c: kernels.projected_sqnorm(c, shift, None, False, w,
                                                                         backend="native")), dev, g["reps"])
            twin = time_fn(one_pass(lambda c: twins.projected_sqnorm(c, shift, None, False, w)), dev,
                           g["twin_reps"])
            worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
            for c in probe:
                e = errors(kernels.projected_sqnorm(c, shift, None, False, w, backend="native"),
                           twins.projected_sqnorm(c, shift, None, False, w))
                worst = {k_: max(worst[k_], e[k_] or 0.0) for k_ in worst}
            return timing_entry({"rows": g["rows"], "dim": d, "chunk": chunk, "k": k}, "bfloat16", native,
                                twin, worst, kernel="projected_sqnorm", per="one pass over all rows")
        rec.entry(f"projected_sqnorm[k={k}]", proj_entry)


def spectrum_matrix(n: int, d: int, dev, decay: float = 0.7, rank: int = 512, noise: float = 1e-3,
                    chunk: int = 65_536):
    """n x d bfloat16 rows with a decaying spectrum (sigma_i ~ i^-decay over `rank` directions,
    plus noise, offset 0.3: k ~ 100 at 90 % energy, as in test_bench_scoring.py), made on `dev`
    chunk by chunk (no n x d float32 copy)."""
    import torch

    gen = torch.Generator(device=dev).manual_seed(0)
    r = min(rank, d)
    sv = torch.arange(1, r + 1, dtype=torch.float32, device=dev) ** -decay
    right = torch.linalg.qr(torch.randn(d, r, generator=gen, device=dev))[0]  # d x r, orthonormal
    scaled = (right * sv).T.contiguous()  # r x d
    x = torch.empty(n, d, dtype=torch.bfloat16, device=dev)
    for lo in range(0, n, chunk):
        rows = min(chunk, n - lo)
        left = torch.randn(rows, r, generator=gen, device=dev)
        block = left @ scaled + noise * torch.randn(rows, d, generator=gen, device=dev) + 0.3
        x[lo:lo + rows] = block.to(torch.bfloat16)
    return x


# --- (d) the whole scoring engine ----------------------------------------------------------------

def leverage_entries(rec: StepRecorder, mode: str) -> None:
    import warnings

    import numpy as np
    import torch

    from scalselect import kernels, leverage_scores

    dev = _device(mode)
    s = SIZES[mode]["leverage"]
    x = None

    def make_x():
        nonlocal x
        t0 = time.perf_counter()
        x = spectrum_matrix(s["rows"], s["dim"], dev)
        _sync(dev)
        return {"shape": [s["rows"], s["dim"]], "dtype": str(x.dtype).removeprefix("torch."),
                "device": str(x.device), "generate_s": time.perf_counter() - t0}
    if rec.entry("matrix", make_x)["status"] != "ok":
        return
    rec.info(input_note="leverage_scores takes the bfloat16 tensor where it lies: the engine slices "
                        "it into chunks on the device (no host copy) and the kernels read bfloat16 "
                        "directly (dtype code 3); the Gram GEMMs run in float32 on the centred chunks")
    results = {}

    def run(name, backend, rows=None, method="exact"):
        def go():
            data = x if rows is None else x[:rows]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _sync(dev)
                t0 = time.perf_counter()
                res = leverage_scores(data, energy=0.9, device=dev.type, backend=backend, method=method)
                _sync(dev)
                wall = time.perf_counter() - t0
            results[name] = res
            tm = {k_: _finite(v) for k_, v in res.timings.items()}
            gp = (tm.get("gram_pass") or 0.0) + (tm.get("score_pass") or 0.0)
            out = {"backend": backend, "method": res.method, "rows": int(data.shape[0]), "wall_s": _finite(wall),
                   "timings_s": tm,
                   "gram_plus_projection_s": _finite(gp), "k": res.k, "eig_method": res.eig_method,
                   "side": res.side, "captured_energy": _finite(res.captured_energy), "device": res.device,
                   "warnings": [str(w.message)[:300] for w in caught]}
            if dev.type == "cuda":
                out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(dev)
            return out
        return go

    # warm-up on a slice: CUDA context, cuBLAS handles, the kernels' first-use self-checks
    rec.entry("warmup", run("warmup", "auto", rows=s["warm_rows"]))
    main = rec.entry("scalselect", run("scalselect", "auto"))
    if main and main["status"] == "ok":
        main["target_gram_plus_projection_s"] = TARGET_GRAM_PROJECTION_S
        main["meets_target"] = bool(main["gram_plus_projection_s"] <= TARGET_GRAM_PROJECTION_S)
        main["self_check"] = {f"{k_[0]}@{k_[1]}": v for k_, v in kernels.dispatch.cuda_verdict.items()}
        rec.flush()
    # the one-pass sketch on the same matrix, against the exact scores
    sketch = rec.entry("scalselect_sketch", run("scalselect_sketch", "auto", method="sketch"))
    if sketch and sketch["status"] == "ok" and "scalselect" in results:
        a, b = results["scalselect"], results["scalselect_sketch"]
        top = max(1, int(0.16 * len(a.scores)))
        sketch["top16_overlap_vs_exact"] = len(set(np.argsort(-a.scores)[:top]) & set(np.argsort(-b.scores)[:top])) / top
        sketch["score_rms_err_vs_exact"] = _finite(np.sqrt(np.mean((a.scores - b.scores) ** 2)) / np.mean(a.scores))
        sketch["sketch"] = {k_: b.sketch.get(k_) for k_ in ("sketch_size", "score_error_estimate", "certified")}
        sketch["ratio_sketch_over_exact"] = _ratio(sketch["wall_s"], main["wall_s"])
        rec.flush()
    if s["twins"]:
        twin = rec.entry("scalselect_twins", run("scalselect_twins", "torch"))
        if twin["status"] == "ok" and "scalselect" in results:
            a, b = results["scalselect"], results["scalselect_twins"]
            rel = np.abs(a.scores - b.scores) / np.maximum(np.abs(b.scores), 1e-300)
            twin["k_equal"] = a.k == b.k
            twin["scores_max_rel_diff_vs_native"] = _finite(rel.max())
            twin["ratio_twin_over_native"] = _ratio(twin["wall_s"], main["wall_s"])
            rec.flush()
    if s["xtx"]:
        def xtx():  # one plain X^T X in float32 chunks, summed in float64: the GEMM floor
            d = x.shape[1]
            chunk = max(256, (128 << 20) // (4 * d))

            def go():
                gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
                for lo in range(0, x.shape[0], chunk):
                    c = x[lo:lo + chunk].float()
                    gram += (c.T @ c).double()
                return gram
            best, median, _ = time_fn(go, dev, reps=2)
            out = {"xtx_s": _finite(best), "xtx_median_s": _finite(median)}
            if "scalselect" in results:
                out["scalselect_gram_pass_over_xtx"] = _ratio(results["scalselect"].timings.get("gram_pass"), best)
            return out
        rec.entry("torch_xtx", xtx)


# --- (e) end-to-end extraction on a LLaVA-1.5-7B-shaped model ------------------------------------

# LLaVA-1.5-7B as llava-hf/llava-1.5-7b-hf has it: CLIP ViT-L/14 at 336 px (576 patches + CLS,
# features from the second-to-last layer, CLS dropped) and Llama-2-7B. Its embedding has 32,064
# rows (Llama-2's 32,000 plus <image> = 32,000 and padding), so the image token has an id.
LLAVA_7B = dict(vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16,
                image_size=336, patch=14, text_hidden=4096, text_intermediate=11008, text_layers=32,
                text_heads=32, text_kv_heads=32, vocab=32064, image_token_id=32000)
TINY = dict(vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2, image_size=56,
            patch=14, text_hidden=64, text_intermediate=128, text_layers=4, text_heads=4, text_kv_heads=2,
            vocab=320, image_token_id=300)


def llava_config(shape: dict):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=shape["vision_hidden"], intermediate_size=shape["vision_intermediate"],
                              num_hidden_layers=shape["vision_layers"], num_attention_heads=shape["vision_heads"],
                              image_size=shape["image_size"], patch_size=shape["patch"], projection_dim=768,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["text_hidden"],
                       intermediate_size=shape["text_intermediate"], num_hidden_layers=shape["text_layers"],
                       num_attention_heads=shape["text_heads"], num_key_value_heads=shape["text_kv_heads"],
                       max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=shape["image_token_id"],
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def build_on_meta(shape: dict, dtype):
    """LlavaForConditionalGeneration of `shape` on the meta device: no memory, no init. Made
    with `dtype` as the default dtype, as from_pretrained(dtype=...) makes it (so the rotary
    inv_freq buffers stay float32)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(llava_config(shape))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def materialise(model, device, seed: int = 0):
    """to_empty on `device`, then transformers' own random init of every parameter and buffer
    (rotary frequencies, position ids included)."""
    import torch

    model.to_empty(device=device)
    for module in model.modules():  # to_empty keeps the "already initialised" marks of post_init
        if "_is_hf_initialized" in module.__dict__:
            del module.__dict__["_is_hf_initialized"]
    for t in list(model.parameters()) + list(model.buffers()):
        if "_is_hf_initialized" in t.__dict__:
            del t.__dict__["_is_hf_initialized"]
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    model.initialize_weights()
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise RuntimeError(f"after the random init, non-finite values in {bad[:5]}")
    return model.eval()


def model_facts(model) -> dict:
    lm = model.model.language_model
    vt = model.model.vision_tower
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "parameters_billion": round(params / 1e9, 3),
            "decoder_layers": len(lm.layers), "vision_layers": len(vt.vision_model.encoder.layers)
            if hasattr(vt, "vision_model") else len(vt.encoder.layers),
            "hidden_size": model.config.text_config.hidden_size,
            "devices": sorted({str(p.device) for p in model.parameters()}),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})}


def synthetic_samples(n: int, shape: dict, seed: int = 0):
    """Prepared samples as the DataLoader workers hand them over: a LLaVA-1.5 conversation of
    random token ids (bos, system prompt + "USER:", the image's tokens, a question, a reply,
    half with a second turn) with its token roles, and one random 'processed' image."""
    import torch

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
        parts = [(torch.tensor([1]), True), (text(prefix - 1), True),
                 (torch.full((image_tokens,), shape["image_token_id"]), False)]
        for _ in range(1 + (i % 2)):
            parts += [(text(ints(*q_len)), True), (text(ints(*r_len)), False)]
        ids = torch.cat([p for p, _ in parts])
        instruction = torch.cat([torch.full((len(p),), flag) for p, flag in parts])
        pixels = torch.randn(1, 3, shape["image_size"], shape["image_size"], generator=gen)
        inputs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                  "pixel_values": pixels}
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
            vec, count = probe_vectors(model, run, _to_device(inputs, dev, dtype), instruction.to(dev), tau,
                                       backend)
            for s, v, c in zip(group, vec.cpu(), count.cpu().tolist()):
                vectors[s.sample_id], kept[s.sample_id] = v, c

        forward(batches[0])  # warm-up: not timed
        _sync(dev)
        t0 = time.perf_counter()
        for group in batches:
            forward(group)
        _sync(dev)
        seconds = time.perf_counter() - t0
    return vectors, kept, seconds


def reference_loop(model, samples, dev, dtype, tau):
    """The reference way of the tests (tests/reference_way.py: full forward with eager attention,
    every layer's attention map and hidden states kept, batch size 1), sample by sample. The first
    sample warms up (not timed)."""
    from scalselect.data.samples import collate

    vectors, kept = {}, {}

    def one(s):
        inputs, instruction = collate([s], 0)
        positions, vector, _ = reference_way.reference_vector(model, _to_device(inputs, dev, dtype),
                                                             instruction.to(dev), tau)
        vectors[s.sample_id], kept[s.sample_id] = vector.float().cpu(), len(positions)

    one(samples[0])
    _sync(dev)
    t0 = time.perf_counter()
    for s in samples:
        one(s)
    _sync(dev)
    return vectors, kept, time.perf_counter() - t0


def extraction_entries(rec: StepRecorder, mode: str) -> None:
    import torch

    dev = _device(mode)
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
        t0 = time.perf_counter()
        materialise(model, dev)
        _sync(dev)
        state["model"], state["shape"] = model, shape
        facts = model_facts(model)
        facts["materialise_s"] = time.perf_counter() - t0
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
    rec.info(samples_tokens={"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
             image_tokens=(shape["image_size"] // shape["patch"]) ** 2,
             note="in-memory samples (random token ids with LLaVA-1.5 roles, random processed pixels): "
                  "sample preparation (image decoding, processor, chat template) is excluded for both "
                  "ways; model loading is excluded for both")
    res: dict = {}

    def ours(name, backend, count):
        def go():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            vec, kept, seconds = ours_loop(model, samples[:count], s["batch"], dev, dtype, s["tau"], backend)
            res[name] = (vec, kept)
            out = {"backend": backend, "samples": count, "batch_size": s["batch"], "seconds": _finite(seconds),
                   "samples_per_s": _ratio(count, seconds),
                   "mean_kept_vision_tokens": sum(kept.values()) / len(kept)}
            if dev.type == "cuda":
                out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(dev)
            return out
        return go

    def reference():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        count = s["ref_samples"]
        vec, kept, seconds = reference_loop(model, samples[:count], dev, dtype, s["tau"])
        res["reference"] = (vec, kept)
        out = {"samples": count, "batch_size": 1, "attention": "eager, every layer's map kept",
               "seconds": _finite(seconds), "samples_per_s": _ratio(count, seconds)}
        if dev.type == "cuda":
            out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(dev)
        if "ours" in res:  # the same samples: how close are the two ways' vectors?
            v_ours, k_ours = res["ours"]
            cos = [float(torch.nn.functional.cosine_similarity(v_ours[i].float(), vec[i].float(), dim=0))
                   for i in vec]
            out["min_cosine_vs_ours"] = _finite(min(cos))
            out["kept_equal_share"] = sum(k_ours[i] == kept[i] for i in kept) / len(kept)
        return out

    e_ours = rec.entry("scalselect", ours("ours", "auto", s["samples"]))
    e_twin = rec.entry("scalselect_twins", ours("twins", "torch", s["twin_samples"]))
    e_ref = rec.entry("reference", reference)
    summary = {}
    if e_ours["status"] == "ok" and e_ref["status"] == "ok":
        summary["ratio_ours_over_reference"] = _ratio(e_ours["samples_per_s"], e_ref["samples_per_s"])
        summary["target_ratio"] = TARGET_EXTRACTION_RATIO
        summary["meets_target"] = bool((summary["ratio_ours_over_reference"] or 0) >= TARGET_EXTRACTION_RATIO)
    if e_ours["status"] == "ok" and e_twin["status"] == "ok":
        summary["ratio_ours_over_twins"] = _ratio(e_ours["samples_per_s"], e_twin["samples_per_s"])
    rec.info(**summary)


# --- machine facts, shell records, the report ----------------------------------------------------

def machine_facts() -> dict:
    facts = {"hostname": socket.gethostname(), "python": sys.version.split()[0], "platform": platform.platform(),
             "cpus": os.cpu_count()}
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["cuda_available"] = torch.cuda.is_available()
        facts["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            facts["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                            "memory_bytes": p.total_memory, "count": torch.cuda.device_count(),
                            **{k: getattr(p, k) for k in ("shared_memory_per_block", "shared_memory_per_block_optin",
                                                          "shared_memory_per_multiprocessor", "L2_cache_size")
                               if hasattr(p, k)}}
    except Exception as exc:  # the report must be written whatever is broken
        facts["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        from importlib.metadata import version

        facts["transformers"] = version("transformers")
    except Exception as exc:
        facts["transformers_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import scalselect
        from scalselect.kernels import build_info

        facts["scalselect"] = {"version": scalselect.__version__, "path": str(Path(scalselect.__file__).parent),
                               "build": build_info()}
    except Exception as exc:
        facts["scalselect_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def cmd_step(args) -> int:
    rec = StepRecorder(Path(args.out), args.name, args.mode)
    rec.info(machine=machine_facts())  # the report takes it from here (no torch import there)
    fn = {"kernels": kernel_entries, "leverage": leverage_entries, "extraction": extraction_entries}[args.name]
    try:
        fn(rec, args.mode)
    except Exception as exc:  # e.g. no GPU: the step fails, with its reason
        traceback.print_exc()
        rec.data["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec.data["entries"].append({"name": "setup", "status": "failed", "error": rec.data["error"]})
    return rec.finish()


def cmd_record(args) -> int:
    """The shell's record of a step it ran (or skipped): DIR/steps/NAME.run.json."""
    data = {"step": args.name, "status": args.status, "seconds": args.seconds, "rc": args.rc,
            "timeout_s": args.timeout, "detail": args.detail, "log": args.log, "command": args.command}
    extra = {}
    if args.junit:  # test counts from pytest's JUnit XML files
        extra["junit"] = args.junit
        extra["counts"] = junit_counts([Path(args.out) / j for j in args.junit])
    if args.log and args.name == "sanitizer":
        extra.update(sanitizer_summary(Path(args.out) / args.log))
    data.update(extra)
    _write_json(Path(args.out) / "steps" / f"{args.name}.run.json", {k: v for k, v in data.items() if v is not None})
    return 0


def junit_counts(paths) -> dict:
    import xml.etree.ElementTree as ET

    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            counts.setdefault("unreadable", []).append(str(path.name))
            continue
        for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
            for key in ("tests", "failures", "errors", "skipped"):
                counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def sanitizer_summary(log: Path) -> dict:
    """compute-sanitizer's 'ERROR SUMMARY: N errors' lines (one per process it watched)."""
    import re

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    found = [int(m) for m in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    return {"sanitizer_error_summaries": found, "sanitizer_errors": sum(found)} if found else {}


def cmd_report(args) -> int:
    out = Path(args.out)
    steps = {}
    for name in STEPS:
        run = _read(out / "steps" / f"{name}.run.json")
        body = _read(out / "steps" / f"{name}.json")
        if run is None and body is None:
            steps[name] = {"status": "failed", "detail": "never ran (the script stopped before it?)"}
            continue
        step = dict(body or {})
        step.pop("step", None)
        if run:  # the shell's view (exit code, timeout) decides; the Python side adds its numbers
            step.update({k: v for k, v in run.items() if k != "step"})
            if body and body.get("status") == "failed" and run["status"] == "ok":
                step["status"] = "failed"
            if body and body.get("status") == "running":
                step["detail"] = (run.get("detail") or "") + "; stopped before its last entry"
        steps[name] = step
    started = _read(out / "started.json") or {}
    machine = next((st["info"]["machine"] for st in steps.values() if st.get("info", {}).get("machine")), None)
    for st in steps.values():
        st.get("info", {}).pop("machine", None)
    report = {"schema": SCHEMA, "mode": args.mode, "started": started.get("started"),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "total_s": _finite(time.time() - started["epoch"]) if "epoch" in started else None,
              "time_bound_s": started.get("bound_s"), "command": started.get("command"),
              "machine": machine or machine_facts(), "steps": steps}
    report["targets"] = targets(steps, evaluate=args.mode != "dry")
    report["failed_steps"] = [n for n, st in steps.items() if st.get("status") == "failed"]
    _write_json(out / "report.json", report)
    print_table(report, out)
    return 1 if report["failed_steps"] else 0


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _entries(step: dict) -> list:
    return [e for e in step.get("entries", []) if isinstance(e, dict)]


def targets(steps: dict, evaluate: bool = True) -> list:
    """The GPU targets against what this run measured (met: null when not measured, and
    always in a dry run, whose tiny CPU sizes say nothing about them)."""
    rows = []
    ex = steps.get("extraction", {}).get("info", {})
    rows.append({"target": f"extraction >= {TARGET_EXTRACTION_RATIO:g}x the reference way's samples/s",
                 "value": ex.get("ratio_ours_over_reference"), "met": ex.get("meets_target")})
    for e in _entries(steps.get("kernels", {})):
        if "kernel" in e:
            rows.append({"target": f"{e['name']} >= {TARGET_KERNEL_RATIO:g}x its twin", "value": e.get("ratio"),
                         "met": None if e.get("ratio") is None else e["ratio"] >= TARGET_KERNEL_RATIO})
    for e in _entries(steps.get("leverage", {})):
        if e["name"] == "scalselect":
            rows.append({"target": f"Gram + projection for {e.get('rows')} x D in <= {TARGET_GRAM_PROJECTION_S:g} s",
                         "value": e.get("gram_plus_projection_s"), "met": e.get("meets_target")})
    if not evaluate:
        for row in rows:
            row["met"] = None
    return rows


def _fmt(x, unit="", digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}{unit}"
        return f"{x:.{digits}g}{unit}"
    return f"{x}{unit}"


def print_table(report: dict, out: Path) -> None:
    lines = ["", f"scalselect GPU check ({report['mode']}): {out / 'report.json'}"]
    m = report["machine"]
    gpu = m.get("gpu", {}).get("name", "no GPU")
    build = m.get("scalselect", {}).get("build", {})
    lines.append(f"machine: {gpu}; torch {m.get('torch')}; scalselect cuda={build.get('cuda')} "
                 f"archs={build.get('cuda_archs') or '-'}; total {_fmt(report.get('total_s'), ' s')} "
                 f"(bound {report.get('time_bound_s')} s)")
    lines.append(f"{'step':<11} {'status':<8} {'seconds':>8}  detail")
    for name, st in report["steps"].items():
        detail = st.get("detail") or ""
        if "counts" in st:
            c = st["counts"]
            detail = f"{c.get('passed')} passed, {c.get('failures')} failed, {c.get('errors')} errors, " \
                     f"{c.get('skipped')} skipped; " + detail
        if st.get("failed_entries"):
            detail = f"failed: {', '.join(st['failed_entries'])}; " + detail
        lines.append(f"{name:<11} {st.get('status', '?'):<8} {_fmt(st.get('seconds'), digits=4):>8}  {detail[:90]}")
    kern = [e for e in _entries(report["steps"].get("kernels", {})) if "kernel" in e or e["status"] != "ok"]
    if kern:
        lines += ["", f"{'kernel':<28} {'native':>10} {'twin':>10} {'twin/nat':>9} {'max abs err':>12} {'max rel err':>12}"]
        for e in kern:
            lines.append(f"{e['name']:<28} {_fmt(e.get('native_s'), ' s'):>10} {_fmt(e.get('twin_s'), ' s'):>10} "
                         f"{_fmt(e.get('ratio'), 'x'):>9} {_fmt(e.get('max_abs_err')):>12} "
                         f"{_fmt(e.get('max_rel_err')):>12}" + ("" if e["status"] == "ok" else "  FAILED"))
    lev = {e["name"]: e for e in _entries(report["steps"].get("leverage", {}))}
    if "scalselect" in lev or "scalselect_twins" in lev:
        lines.append("")
        for name in ("scalselect", "scalselect_twins"):
            e = lev.get(name)
            if e and e["status"] == "ok":
                t = e.get("timings_s", {})
                lines.append(f"leverage_scores {name:<17} {e['rows']} rows: {_fmt(e['wall_s'], ' s')} (Gram pass "
                             f"{_fmt(t.get('gram_pass'), ' s')}, eigen {_fmt(t.get('eigen'), ' s')}, score pass "
                             f"{_fmt(t.get('score_pass'), ' s')}), k={e['k']}")
            elif e:
                lines.append(f"leverage_scores {name:<17} FAILED: {e.get('error', '')[:80]}")
        if "torch_xtx" in lev and lev["torch_xtx"]["status"] == "ok":
            lines.append(f"one float32 X^T X of the same matrix: {_fmt(lev['torch_xtx'].get('xtx_s'), ' s')}")
    ex = report["steps"].get("extraction", {})
    exe = {e["name"]: e for e in _entries(ex)}
    if exe:
        lines.append("")
        meta = exe.get("meta_model_llava_1_5_7b", {})
        if meta.get("status") == "ok":
            lines.append(f"meta-device LLaVA-1.5-7B: {meta['parameters_billion']} B parameters, "
                         f"{meta['decoder_layers']} decoder layers, {meta['vision_layers']} vision layers")
        for name in ("scalselect", "scalselect_twins", "reference"):
            e = exe.get(name)
            if e and e["status"] == "ok":
                lines.append(f"extraction {name:<17} {e['samples']:>4} samples, batch {e['batch_size']:>2}: "
                             f"{_fmt(e['samples_per_s'], ' samples/s')}")
            elif e:
                lines.append(f"extraction {name:<17} FAILED: {e.get('error', '')[:80]}")
        info = ex.get("info", {})
        if info.get("ratio_ours_over_reference") is not None:
            lines.append(f"extraction: scalselect / reference way = {_fmt(info['ratio_ours_over_reference'], 'x')}")
    dry = report["mode"] == "dry"
    lines += ["", "targets (to be met on an H200)" + (": not evaluated in a dry run" if dry else ":")]
    for t in report["targets"]:
        met = "dry run" if dry else {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  {t['target']:<58} {_fmt(t['value']):>10}  {met}")
    if report["failed_steps"]:
        lines.append(f"FAILED steps: {', '.join(report['failed_steps'])} (logs in {out / 'logs'})")
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("step")
    p.add_argument("name", choices=("kernels", "leverage", "extraction"))
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=tuple(SIZES), required=True)
    p = sub.add_parser("record")
    p.add_argument("--out", required=True)
    p.add_argument("--name", choices=STEPS, required=True)
    p.add_argument("--status", choices=STATUSES, required=True)
    p.add_argument("--seconds", type=float)
    p.add_argument("--rc", type=int)
    p.add_argument("--timeout", type=int)
    p.add_argument("--detail")
    p.add_argument("--log")
    p.add_argument("--command")
    p.add_argument("--junit", action="append")
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=tuple(SIZES), required=True)
    args = parser.parse_args(argv)
    return {"step": cmd_step, "record": cmd_record, "report": cmd_report}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
