"""Step "leverage": the whole scoring engine (leverage_scores, exact and sketch, native and
twins) on an N x D bfloat16 matrix with a decaying spectrum, made on the device, and one plain
X^T X of it for scale."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from scalselect import kernels, leverage_scores

from .device import Stopwatch, device, peak_memory, reset_peak_memory, time_fn
from .record import StepRecorder, finite, ratio
from .sizes import SIZES
from .targets import TARGET_GRAM_PROJECTION_S


def spectrum_matrix(n: int, d: int, dev, decay: float = 0.7, rank: int = 512, noise: float = 1e-3, chunk: int = 65_536):
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
        x[lo : lo + rows] = block.to(torch.bfloat16)
    return x


def timed_spectrum_matrix(n: int, d: int, dev):
    """(spectrum_matrix(n, d, dev), seconds it took)."""
    with Stopwatch(dev) as watch:
        x = spectrum_matrix(n, d, dev)
    return x, watch.seconds


def entries(rec: StepRecorder, mode: str) -> None:
    dev = device(mode)
    s = SIZES[mode]["leverage"]
    x = None

    def make_x():
        nonlocal x
        x, seconds = timed_spectrum_matrix(s["rows"], s["dim"], dev)
        return {
            "shape": [s["rows"], s["dim"]],
            "dtype": str(x.dtype).removeprefix("torch."),
            "device": str(x.device),
            "generate_s": seconds,
        }

    if rec.entry("matrix", make_x)["status"] != "ok":
        return
    rec.info(
        input_note="leverage_scores takes the bfloat16 tensor where it lies: the engine slices "
        "it into chunks on the device (no host copy) and the kernels read bfloat16 "
        "directly (dtype code 3); the Gram GEMMs run in float32 on the centred chunks"
    )
    results = {}

    def scores(name, backend, rows=None, method="exact"):
        def go():
            data = x if rows is None else x[:rows]
            reset_peak_memory(dev)  # each entry's own peak (with the input, which stays resident)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with Stopwatch(dev) as watch:
                    res = leverage_scores(data, energy=0.9, device=dev.type, backend=backend, method=method)
            results[name] = res
            tm = {k_: finite(v) for k_, v in res.timings.items()}
            gp = (tm.get("gram_pass") or 0.0) + (tm.get("score_pass") or 0.0)
            return {
                "backend": backend,
                "method": res.method,
                "rows": int(data.shape[0]),
                "wall_s": finite(watch.seconds),
                "timings_s": tm,
                "gram_plus_projection_s": finite(gp),
                "k": res.k,
                "eig_method": res.eig_method,
                "side": res.side,
                "captured_energy": finite(res.captured_energy),
                "device": res.device,
                "warnings": [str(w.message)[:300] for w in caught],
                **peak_memory(dev),
            }

        return go

    # warm-up on a slice: CUDA context, cuBLAS handles, the kernels' first-use self-checks
    rec.entry("warmup", scores("warmup", "auto", rows=s["warm_rows"]))
    main = rec.entry("scalselect", scores("scalselect", "auto"))
    if main and main["status"] == "ok":
        main["target_gram_plus_projection_s"] = TARGET_GRAM_PROJECTION_S
        main["meets_target"] = bool(main["gram_plus_projection_s"] <= TARGET_GRAM_PROJECTION_S)
        main["self_check"] = {f"{k_[0]}@{k_[1]}": v for k_, v in kernels.dispatch.cuda_verdict.items()}
        rec.flush()
    # the one-pass sketch on the same matrix, against the exact scores
    sketch = rec.entry("scalselect_sketch", scores("scalselect_sketch", "auto", method="sketch"))
    if sketch and sketch["status"] == "ok" and "scalselect" in results:
        a, b = results["scalselect"], results["scalselect_sketch"]
        top = max(1, int(0.16 * len(a.scores)))
        sketch["top16_overlap_vs_exact"] = len(set(np.argsort(-a.scores)[:top]) & set(np.argsort(-b.scores)[:top])) / top
        sketch["score_rms_err_vs_exact"] = finite(np.sqrt(np.mean((a.scores - b.scores) ** 2)) / np.mean(a.scores))
        sketch["sketch"] = {k_: b.sketch.get(k_) for k_ in ("sketch_size", "score_error_estimate", "certified")}
        sketch["ratio_sketch_over_exact"] = ratio(sketch["wall_s"], main["wall_s"])
        rec.flush()
    if s["twins"]:
        twin = rec.entry("scalselect_twins", scores("scalselect_twins", "torch"))
        if twin["status"] == "ok" and "scalselect" in results:
            a, b = results["scalselect"], results["scalselect_twins"]
            rel = np.abs(a.scores - b.scores) / np.maximum(np.abs(b.scores), 1e-300)
            twin["k_equal"] = a.k == b.k
            twin["scores_max_rel_diff_vs_native"] = finite(rel.max())
            twin["ratio_twin_over_native"] = ratio(twin["wall_s"], main["wall_s"])
            rec.flush()
    if s["xtx"]:

        def xtx():  # one plain X^T X in float32 chunks, summed in float64: the GEMM floor
            d = x.shape[1]
            chunk = max(256, (128 << 20) // (4 * d))

            def go():
                gram = torch.zeros(d, d, dtype=torch.float64, device=dev)
                for lo in range(0, x.shape[0], chunk):
                    c = x[lo : lo + chunk].float()
                    gram += (c.T @ c).double()
                return gram

            best, median, _ = time_fn(go, dev, reps=2)
            out = {"xtx_s": finite(best), "xtx_median_s": finite(median)}
            if "scalselect" in results:
                out["scalselect_gram_pass_over_xtx"] = ratio(results["scalselect"].timings.get("gram_pass"), best)
            return out

        rec.entry("torch_xtx", xtx)
