"""Step "kernels": each of the four kernels (backend="native") against its PyTorch twin, with
times, speed ratio and errors: attention_mass and top_mass_mean on a LLaVA-like padded batch,
gram_prep and projected_sqnorm over one pass of an N x D bfloat16 matrix in the engine's chunks."""

from __future__ import annotations

import torch

from scalselect import kernels
from scalselect.kernels import twins

from .device import device, time_fn
from .leverage import timed_spectrum_matrix
from .record import StepRecorder, finite, ratio
from .sizes import SIZES
from .targets import TARGET_KERNEL_RATIO


def extraction_batch(
    b: int,
    seq: int,
    heads: int,
    kv_heads: int,
    hd: int,
    vision: int,
    prefix: int,
    dtype,
    dev,
    dim: int | None = None,
    seed: int = 0,
):
    """A LLaVA-like padded batch: `prefix` system/template tokens, `vision` image tokens, then
    user turns and assistant replies alternating every 20 tokens; right padding, lengths from
    seq down to ~60 % of it. Returns q, k, hidden (or None), valid, instruction, vision masks."""
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


def errors(got, want) -> dict:
    """max |got - want|, and the largest elementwise relative error among the entries of `want`
    above 1e-6 x its largest magnitude (tinier ones have no meaningful relative error)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    diff = (got - want).abs()
    scale = float(want.abs().max()) if want.numel() else 0.0
    big = want.abs() > 1e-6 * scale
    rel = float((diff[big] / want[big].abs()).max()) if bool(big.any()) else 0.0
    return {
        "max_abs_err": finite(diff.max()) if diff.numel() else 0.0,
        "max_rel_err": finite(rel),
        "ref_max_abs": finite(scale),
        "finite": bool(torch.isfinite(got).all()),
    }


def worst_errors(pairs) -> dict:
    """The largest max_abs_err and max_rel_err over (got, want) pairs."""
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    for got, want in pairs:
        e = errors(got, want)
        worst = {k: max(worst[k], e[k] or 0.0) for k in worst}
    return worst


def timing_entry(shape: dict, dtype: str, native: tuple, twin: tuple, errs: dict, **extra) -> dict:
    """The fields every kernel entry has: native and twin times, speed ratio, errors."""
    return {
        "shape": shape,
        "dtype": dtype,
        "native_s": finite(native[0]),
        "native_median_s": finite(native[1]),
        "twin_s": finite(twin[0]),
        "twin_median_s": finite(twin[1]),
        "ratio": ratio(twin[0], native[0]),  # twin / native: > 1 means the kernel is faster
        "target_ratio": TARGET_KERNEL_RATIO,
        **errs,
        **extra,
    }


def entries(rec: StepRecorder, mode: str) -> None:
    dev = device(mode)
    sizes = SIZES[mode]
    m, t, g = sizes["mass"], sizes["top"], sizes["gram"]

    for dtype_name in m["dtypes"]:

        def mass_entry(dtype_name=dtype_name):
            dtype = getattr(torch, dtype_name)
            q, k, _, valid, instr, vis = extraction_batch(
                m["batch"], m["seq"], m["heads"], m["kv_heads"], m["head_dim"], m["vision"], m["prefix"], dtype, dev
            )
            scale = m["head_dim"] ** -0.5
            native = time_fn(lambda: kernels.attention_mass(q, k, valid, instr, vis, scale, backend="native"), dev, m["reps"])
            twin = time_fn(lambda: twins.attention_mass(q, k, valid, instr, vis, scale), dev, m["twin_reps"])
            shape = {k_: m[k_] for k_ in ("batch", "seq", "heads", "kv_heads", "head_dim", "vision")}
            shape["instruction_rows"] = int((instr & valid).sum())
            return timing_entry(shape, dtype_name, native, twin, errors(native[2], twin[2]), kernel="attention_mass")

        rec.entry(f"attention_mass[{dtype_name}]", mass_entry)

    for dtype_name in t["dtypes"]:

        def top_entry(dtype_name=dtype_name):
            dtype = getattr(torch, dtype_name)
            _, _, hidden, valid, _, vis = extraction_batch(
                t["batch"], t["seq"], 1, 1, 8, t["vision"], t["prefix"], dtype, dev, dim=t["dim"], seed=1
            )
            gen = torch.Generator(device=dev).manual_seed(2)
            mass = torch.rand(t["batch"], t["seq"], generator=gen, dtype=torch.float64, device=dev) ** 4
            mass = mass * vis  # what attention_mass gives: 0 outside the vision tokens
            native = time_fn(lambda: kernels.top_mass_mean(hidden, mass, vis, 0.9, backend="native"), dev, t["reps"])
            twin = time_fn(lambda: twins.top_mass_mean(hidden, mass, vis, 0.9), dev, t["twin_reps"])
            shape = {k_: t[k_] for k_ in ("batch", "seq", "dim", "vision")}
            (got, kept), (want, want_kept) = native[2], twin[2]
            return timing_entry(
                shape,
                dtype_name,
                native,
                twin,
                errors(got, want),
                kernel="top_mass_mean",
                kept_equal=bool(torch.equal(kept.cpu(), want_kept.cpu())),
                mean_kept=float(kept.double().mean()),
            )

        rec.entry(f"top_mass_mean[{dtype_name}]", top_entry)

    # gram_prep and projected_sqnorm: one pass over an N x D bfloat16 matrix on the device, in
    # the engine's chunks, as leverage_scores makes it (errors on the first and last chunks).
    x = None

    def make_x():
        nonlocal x
        x, seconds = timed_spectrum_matrix(g["rows"], g["dim"], dev)
        return {"shape": [g["rows"], g["dim"]], "dtype": "bfloat16", "generate_s": seconds, "bytes": x.numel() * x.element_size()}

    if rec.entry("matrix", make_x)["status"] != "ok":
        return
    d, chunk = g["dim"], g["chunk"]
    shift = x[:1024].double().mean(dim=0)
    probe = [x[:chunk], x[-chunk:]]

    def one_pass(fn):
        def run():
            last = None
            for lo in range(0, x.shape[0], chunk):
                last = fn(x[lo : lo + chunk])
            return last

        return run

    def prep_entry():
        native = time_fn(one_pass(lambda c: kernels.gram_prep(c, shift, backend="native")), dev, g["reps"])
        twin = time_fn(one_pass(lambda c: twins.gram_prep(c, shift, None, False)), dev, g["twin_reps"])
        worst = worst_errors(
            pair
            for c in probe
            for pair in zip(kernels.gram_prep(c, shift, backend="native"), twins.gram_prep(c, shift, None, False))
        )
        return timing_entry(
            {"rows": g["rows"], "dim": d, "chunk": chunk},
            "bfloat16",
            native,
            twin,
            worst,
            kernel="gram_prep",
            per="one pass over all rows",
        )

    rec.entry("gram_prep[bfloat16]", prep_entry)

    for k in g["ks"]:

        def proj_entry(k=k):
            gen = torch.Generator(device=dev).manual_seed(k)
            w = torch.randn(d, k, generator=gen, device=dev) / d**0.5
            native = time_fn(
                one_pass(lambda c: kernels.projected_sqnorm(c, shift, None, False, w, backend="native")), dev, g["reps"]
            )
            twin = time_fn(one_pass(lambda c: twins.projected_sqnorm(c, shift, None, False, w)), dev, g["twin_reps"])
            worst = worst_errors(
                (
                    kernels.projected_sqnorm(c, shift, None, False, w, backend="native"),
                    twins.projected_sqnorm(c, shift, None, False, w),
                )
                for c in probe
            )
            return timing_entry(
                {"rows": g["rows"], "dim": d, "chunk": chunk, "k": k},
                "bfloat16",
                native,
                twin,
                worst,
                kernel="projected_sqnorm",
                per="one pass over all rows",
            )

        rec.entry(f"projected_sqnorm[k={k}]", proj_entry)
