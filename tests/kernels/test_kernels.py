"""Compiled kernels against their pure-PyTorch twins on fresh random inputs of many shapes."""

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch

from scalselect import kernels
from scalselect.kernels import twins
from tolerances import reordered_projection, reordered_sum, same_rounding, summed

SHAPES = [(0, 5), (1, 1), (1, 7), (3, 300), (17, 33), (100, 257), (1000, 64)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _inputs(n, d, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)
    shift = torch.randn(d, generator=gen, dtype=torch.float64)
    inv_scale = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    return x.to(device), shift.to(device), inv_scale.to(device)


def test_native_module_is_built():
    info = kernels.build_info()
    assert info["native"], info.get("error")
    assert kernels.native_available(torch.device("cpu"))


def _stub_signatures() -> dict[str, list[str]]:
    """Function name -> parameter names, as scalselect/_C.pyi declares them."""
    import ast
    from pathlib import Path

    import scalselect

    tree = ast.parse((Path(scalselect.__file__).parent / "_C.pyi").read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)}


def test_the_shipped_stub_declares_what_the_module_binds():
    """_C.pyi names every function of the native module with the argument names the bindings
    give (a CPU-only build lacks the *_cuda entries, which the stub still lists)."""
    import re

    from scalselect import _C

    stub = _stub_signatures()
    bound = [name for name in dir(_C) if not name.startswith("_")]
    assert bound and set(bound) <= set(stub) and all(n.endswith("_cuda") for n in set(stub) - set(bound))
    for name in bound:
        if not name.endswith(("_cpu", "_cuda")):  # build_info, set_num_threads: not kernels
            continue
        signature = getattr(_C, name).__doc__.splitlines()[0]
        assert re.findall(r"(\w+): ", signature) == stub[name], name
        kernel = name.rsplit("_", 1)[0]
        assert stub[f"{kernel}_cuda"] == [*stub[f"{kernel}_cpu"], "stream"]


@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
@pytest.mark.parametrize("l2,scaled", [(False, False), (True, True), (True, False)])
def test_gram_prep_matches_twin(shape, dtype, l2, scaled):
    n, d = shape
    x, shift, inv_scale = _inputs(n, d, dtype, seed=n * 31 + d)
    inv_scale = inv_scale if scaled else None
    got_c, got_s = kernels.gram_prep(x, shift, inv_scale, l2, backend="native")
    want_c, want_s, want_sq = twins.sketch_prep(x, shift, inv_scale, l2)
    assert got_c.dtype == torch.float32 and got_c.shape == (n, d)
    assert got_s.dtype == torch.float64 and got_s.shape == (d,)
    centred = twins.centre_rows(x, shift, inv_scale, l2)  # float64, what both round and sum
    torch.testing.assert_close(got_c, want_c, **same_rounding(centred))
    assert torch.all((got_s - want_s).abs() <= reordered_sum(centred))
    # sketch_prep: the same kernel with the column sums of squares as well
    sk_c, sk_s, sk_sq = kernels.sketch_prep(x, shift, inv_scale, l2, backend="native")
    assert sk_sq.dtype == torch.float64 and sk_sq.shape == (d,)
    torch.testing.assert_close(sk_c, got_c, rtol=0, atol=0)
    torch.testing.assert_close(sk_s, got_s, rtol=0, atol=0)
    assert torch.all((sk_sq - want_sq).abs() <= reordered_sum(centred**2))


@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
@pytest.mark.parametrize("k", [1, 5, 300])
def test_projected_sqnorm_matches_twin(shape, dtype, k):
    n, d = shape
    x, shift, inv_scale = _inputs(n, d, dtype, seed=n * 7 + d + k)
    w = torch.randn(d, k, generator=torch.Generator().manual_seed(k)) / d**0.5
    for l2, scale in [(False, None), (True, inv_scale)]:
        got = kernels.projected_sqnorm(x, shift, scale, l2, w, backend="native")
        want = twins.projected_sqnorm(x, shift, scale, l2, w)
        assert got.dtype == torch.float64 and got.shape == (n,)
        tol = reordered_projection(twins.centre_rows(x, shift, scale, l2).float(), w)
        assert torch.all((got - want).abs() <= tol)


def test_kernels_read_strided_rows_and_convert_other_dtypes():
    x, shift, inv_scale = _inputs(50, 40, torch.float32, seed=3)
    wide = torch.randn(50, 64)
    wide[:, :40] = x
    view = wide[:, :40]  # row stride 64 > d: read in place
    assert view.stride(0) == 64
    w = torch.randn(40, 9)
    tol = reordered_projection(twins.centre_rows(x, shift, None, False).float(), w)
    assert torch.all(
        (
            kernels.projected_sqnorm(view, shift, None, False, w, backend="native")
            - twins.projected_sqnorm(x, shift, None, False, w)
        ).abs()
        <= tol
    )
    transposed = x.T.contiguous().T  # column-major: made contiguous first
    torch.testing.assert_close(
        kernels.gram_prep(transposed, shift, inv_scale, True, backend="native")[0], twins.gram_prep(x, shift, inv_scale, True)[0]
    )
    ints = torch.randint(-50, 50, (20, 40))
    torch.testing.assert_close(
        kernels.gram_prep(ints, shift, None, False, backend="native")[1], twins.gram_prep(ints.float(), shift, None, False)[1]
    )


def test_rows_at_the_shift_stay_zero_under_l2_normalisation():
    """A row equal to the shift is 0 once shifted, and 0 has no direction to scale to unit length."""
    x, _, inv = _inputs(6, 10, torch.float32, seed=5)
    shift = x[2].double()
    for scale in (None, inv):
        got, _ = kernels.gram_prep(x, shift, scale, True, backend="native")
        assert torch.equal(got[2], torch.zeros(10))
        others = torch.linalg.vector_norm(got[[0, 1, 3, 4, 5]].double(), dim=1)
        torch.testing.assert_close(others, torch.ones(5, dtype=torch.float64), rtol=2 * summed(10), atol=0)


def test_bad_arguments_are_refused_before_the_native_call():
    x, shift, _ = _inputs(4, 6, torch.float32, seed=1)
    with pytest.raises(ValueError, match="length 6"):
        kernels.gram_prep(x, shift[:5], None, False, backend="native")
    with pytest.raises(ValueError, match="2-D"):
        kernels.gram_prep(x[0], shift, None, False, backend="native")
    with pytest.raises(ValueError, match="W must be 6 x k"):
        kernels.projected_sqnorm(x, shift, None, False, torch.randn(5, 2), backend="native")
    with pytest.raises(ValueError, match="backend"):
        kernels.gram_prep(x, shift, None, False, backend="fast")
    with pytest.raises(ValueError, match="shift is required"):
        kernels.gram_prep(x, None, None, False, backend="native")


@pytest.mark.cuda
@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
def test_cuda_kernels_match_twins(shape, dtype):
    n, d = shape
    x, shift, inv_scale = _inputs(n, d, dtype, seed=n + d, device="cuda")
    w = torch.randn(d, 300, device="cuda") / d**0.5
    for l2, scale in [(False, None), (True, inv_scale)]:
        got_c, got_s, got_sq = kernels.sketch_prep(x, shift, scale, l2, backend="native")
        want_c, want_s, want_sq = twins.sketch_prep(x, shift, scale, l2)
        centred = twins.centre_rows(x, shift, scale, l2)
        torch.testing.assert_close(got_c, want_c, **same_rounding(centred))
        assert torch.all((got_s - want_s).abs() <= reordered_sum(centred))
        assert torch.all((got_sq - want_sq).abs() <= reordered_sum(centred**2))
        assert torch.all((kernels.gram_prep(x, shift, scale, l2, backend="native")[1] - want_s).abs() <= reordered_sum(centred))
        assert torch.all(
            (
                kernels.projected_sqnorm(x, shift, scale, l2, w, backend="native")
                - twins.projected_sqnorm(x, shift, scale, l2, w)
            ).abs()
            <= reordered_projection(centred.float(), w)
        )


@pytest.mark.parametrize("name", ["gram_prep", "projected_sqnorm", "attention_mass", "top_mass_mean"])
def test_self_check_passes_a_good_kernel_and_rejects_a_wrong_one(monkeypatch, name):
    """The first-use check a GPU kernel runs, exercised here with the CPU kernels."""
    from scalselect.kernels import dispatch, extraction, leverage

    cpu = torch.device("cpu")
    monkeypatch.setattr(dispatch, "cuda_verdict", {})
    assert dispatch.cuda_kernel_ok(name, cpu)

    family = extraction if hasattr(extraction, f"native_{name}") else leverage
    real = getattr(family, f"native_{name}")

    def off_by_a_little(*args):
        out = real(*args)
        return (out[0] * 1.001, *out[1:]) if isinstance(out, tuple) else out * 1.001

    monkeypatch.setattr(family, f"native_{name}", off_by_a_little)
    monkeypatch.setattr(dispatch, "cuda_verdict", {})
    with pytest.warns(RuntimeWarning, match="failed its self-check"):
        assert not dispatch.cuda_kernel_ok(name, cpu)
    assert dispatch.cuda_verdict[(name, "cpu")] is False


def test_a_gpu_the_kernels_cannot_run_on_gets_the_twins_with_one_warning(monkeypatch):
    """A driver too old for the compiled kernels, or a GPU they were not built for: the first
    self-check raises, and every kernel takes its twin on that device, with one warning in all.
    Forced here by a self-check whose launch raises as CUDA does then (the real self-checks need
    a GPU to make their inputs on)."""
    from scalselect.kernels import dispatch, native

    def launch_fails(device):
        raise RuntimeError("CUDA error: CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(dispatch, "SELF_CHECKS", dict.fromkeys(dispatch.SELF_CHECKS, launch_fails))
    monkeypatch.setattr(native, "native_available", lambda device, kernel="gram_prep": True)
    monkeypatch.setattr(dispatch, "cuda_verdict", {})
    monkeypatch.setattr(dispatch, "cuda_unusable", {})
    cuda = torch.device("cuda")
    names = ["gram_prep", "projected_sqnorm", "attention_mass", "top_mass_mean"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [dispatch.use_native(name, cuda, "auto") for name in names * 2] == [False] * 8
    assert [str(w.message) for w in caught if "cannot run on cuda" in str(w.message)] == [str(caught[0].message)]
    assert len(caught) == 1
    assert dispatch.use_native("gram_prep", cuda, "torch") is False  # the twin, asked for, without a check


def test_a_full_gpu_during_a_self_check_is_asked_again_later(monkeypatch):
    """Out of memory says nothing about the kernels: no verdict is kept, no warning given, and
    the next call checks again (and passes)."""
    from scalselect.kernels import dispatch, native

    calls = []

    def full_then_fine(device):
        calls.append(device)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return True

    monkeypatch.setattr(dispatch, "SELF_CHECKS", {"gram_prep": full_then_fine})
    monkeypatch.setattr(native, "native_available", lambda device, kernel="gram_prep": True)
    monkeypatch.setattr(dispatch, "cuda_verdict", {})
    monkeypatch.setattr(dispatch, "cuda_unusable", {})
    cuda = torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.use_native("gram_prep", cuda, "auto") is False
        assert dispatch.use_native("gram_prep", cuda, "auto") is True
    assert len(calls) == 2 and dispatch.cuda_verdict[("gram_prep", "cuda")] is True


def test_the_package_imports_and_scores_where_no_gpu_is_visible(tmp_path):
    """CUDA_VISIBLE_DEVICES hides every GPU: the native module still loads (its CUDA runtime is
    static and starts only on a CUDA call) and the CPU kernels score."""
    code = (
        "import numpy as np, scalselect\n"
        "facts = scalselect.info()\n"
        "assert facts['native'] and not facts['gpu_usable'], facts\n"
        "x = np.random.default_rng(0).standard_normal((300, 24)).astype(np.float32)\n"
        "res = scalselect.leverage_scores(x, device='auto', backend='native')\n"
        # the scores sum to k; each comes from float32 products over 24 columns (relative
        # error ~ 24 u32 = 1.4e-6), so their sum is within k * 1e-4
        "assert res.device == 'cpu' and abs(res.scores.sum() - res.k) <= 1e-4 * res.k, res\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    # from an empty folder: the installed package, not a source tree beside it
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
