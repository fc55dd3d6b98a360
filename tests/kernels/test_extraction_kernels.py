"""Native extraction kernels (attention_mass, top_mass_mean) against their PyTorch twins on
fresh random inputs: ragged batches, GQA, half precision, empty and degenerate samples."""

import warnings

import pytest
import torch

from scalselect import kernels
from scalselect.kernels import twins
import layer_masks
from tolerances import attention_mass_rtol, mean_atol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (batch, heads, kv_heads, seq, head_dim, logit sharpness)
MASS_SHAPES = [
    (1, 1, 1, 1, 8, 1.0),  # one token
    (1, 2, 1, 9, 8, 1.0),
    (3, 4, 4, 23, 16, 1.5),
    (2, 8, 2, 67, 32, 1.5),  # GQA group 4
    (4, 6, 3, 130, 128, 1.0),  # group 2, the largest head size
    (3, 4, 4, 50, 13, 6.0),  # odd head size, sharp softmax (logits of tens)
    (12, 2, 1, 90, 24, 1.5),  # a larger batch
    (2, 4, 2, 700, 64, 1.5),  # LLaVA-1.5-like: 576 image tokens
]


def extraction_batch(seed, batch, heads, kv_heads, seq, hd, sharp=1.5, dtype=torch.float32):
    """q, k and masks like a padded batch: even samples left-padded, odd ones right-padded; a
    block of vision tokens inside the real tokens (every third sample: scattered ones instead);
    instruction rows = other real tokens except some (assistant replies)."""
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(batch, heads, seq, hd, generator=gen) * sharp).to(dtype)
    k = torch.randn(batch, kv_heads, seq, hd, generator=gen).to(dtype)
    valid = torch.ones(batch, seq, dtype=torch.bool)
    vision = torch.zeros(batch, seq, dtype=torch.bool)
    for b in range(batch):
        pad = int(torch.randint(0, seq // 4 + 1, (1,), generator=gen))
        lo, hi = (0, seq - pad) if b % 2 else (pad, seq)
        valid[b, :lo], valid[b, hi:] = False, False
        if b % 3 == 2:
            vision[b, lo:hi] = torch.rand(hi - lo, generator=gen) < 0.4
        else:
            length = int((hi - lo) * (0.5 + 0.35 * float(torch.rand(1, generator=gen))))
            start = lo + int(torch.randint(0, hi - lo - length + 1, (1,), generator=gen))
            vision[b, start : start + length] = True
    instruction = ~vision & valid & (torch.rand(batch, seq, generator=gen) < 0.8)
    return q, k, valid, instruction, vision


def check_attention_mass(q, k, valid, rows, cols, scale, device="cpu", ranges=None, softcap=None):
    """Native on `device` against the twin on the CPU; returns the native result (CPU)."""
    want = twins.attention_mass(q, k, valid, rows, cols, scale, ranges, softcap)
    on_device = None if ranges is None else tuple(r.to(device) for r in ranges)
    got = kernels.attention_mass(*(t.to(device) for t in (q, k, valid, rows, cols)), scale, on_device, softcap, backend="native")
    assert got.dtype == torch.float32 and got.shape == cols.shape and got.device.type == device
    got = got.cpu()
    rtol = attention_mass_rtol(q, k, valid, rows, scale, softcap)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)
    assert torch.all(got[~cols] == 0)
    assert torch.all(got >= 0)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MASS_SHAPES)
def test_attention_mass_matches_twin(shape, dtype):
    batch, heads, kv_heads, seq, hd, sharp = shape
    q, k, valid, rows, cols = extraction_batch(seq + hd, batch, heads, kv_heads, seq, hd, sharp, dtype)
    got = check_attention_mass(q, k, valid, rows, cols, hd**-0.5)
    # something was measured: samples with rows before some vision token have mass there
    for b in range(batch):
        r, c = torch.nonzero(rows[b] & valid[b]).flatten(), torch.nonzero(cols[b]).flatten()
        if r.numel() and c.numel() and int(r.max()) >= int(c.min()):
            assert float(got[b].sum()) > 0


# (batch, heads, kv_heads, seq, head_dim, window / chunk / prefix length)
MASK_SHAPES = [
    (1, 1, 1, 1, 8, 1),
    (3, 4, 2, 23, 16, 5),
    (2, 8, 2, 130, 32, 16),  # windows on panel boundaries
    (2, 4, 4, 300, 24, 37),  # many panels before a row's window
    (2, 4, 2, 700, 64, 100),
]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("kind", layer_masks.KINDS)
@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_attention_mass_follows_key_ranges(kind, shape, device):
    """Sliding windows, chunks and prefixes: the native kernels read each row's key range as the
    twin does, with and without soft-capping, in half precision too."""
    batch, heads, kv_heads, seq, hd, size = shape
    for dtype, softcap in ((torch.float32, None), (torch.bfloat16, 1.5)):
        q, k, valid, rows, cols = extraction_batch(seq + size, batch, heads, kv_heads, seq, hd, 2.0, dtype)
        rows &= ~cols
        ranges = layer_masks.key_ranges(kind, valid, window=size, chunk=size, prefix=size)
        got = check_attention_mass(q, k, valid, rows, cols, hd**-0.5, device, ranges, softcap)
        assert torch.all(got[~cols] == 0) and torch.all(got >= 0)


def test_attention_mass_refuses_key_ranges_without_the_row():
    q, k, valid, rows, cols = extraction_batch(4, 2, 2, 2, 20, 8)
    lo, hi = layer_masks.key_ranges("sliding", valid, window=3)
    i = int(torch.nonzero(rows[0] & valid[0])[0])
    for bad in (
        (lo, hi.clone().index_put_((torch.tensor([0]), torch.tensor([i])), torch.tensor(i, dtype=torch.int32))),
        (lo.clone().index_put_((torch.tensor([0]), torch.tensor([i])), torch.tensor(i + 1, dtype=torch.int32)), hi),
        (lo, hi + 30),
    ):
        for backend in ("torch", "native"):
            with pytest.raises(ValueError, match="must hold the row itself"):
                kernels.attention_mass(q, k, valid, rows, cols, 0.3, bad, backend=backend)
    for cap in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softcap must be positive and finite"):
            kernels.attention_mass(q, k, valid, rows, cols, 0.3, (lo, hi), cap)


def test_attention_mass_degenerate_samples():
    q, k, valid, rows, cols = extraction_batch(5, 7, 4, 2, 40, 16)
    rows[0] = False  # no instruction rows
    cols[1] = False  # no vision tokens
    cols[2] = False
    cols[2, int(torch.nonzero(valid[2])[0])] = True  # one vision token, the first real one
    rows[2] = valid[2] & ~cols[2]
    cols[3, :20], cols[3, 20:] = False, valid[3, 20:]  # every instruction row before the image:
    rows[3, :20], rows[3, 20:] = valid[3, :20], False  # causal attention gives it nothing
    valid[4], rows[4], cols[4] = False, False, False  # an all-padding sample
    valid[5, 34:] = False  # vision marks on padding get nothing either
    cols[5] = (torch.arange(40) % 2 == 0) | ~valid[5]
    rows[5] = valid[5] & ~cols[5]
    got = check_attention_mass(q, k, valid, rows, cols, 0.25)
    assert torch.all(got[:2] == 0) and torch.all(got[3:5] == 0)
    assert float(got[2].sum()) > 0 and int((got[2] > 0).sum()) == 1
    assert torch.all(got[5, 34:] == 0) and float(got[5].sum()) > 0


def test_attention_mass_reads_views_and_mixed_dtypes():
    """q and k as the attention layer holds them ([B, S, H, hd] transposed), q and k of
    different dtypes, masks as uint8: all converted before the native call."""
    q, k, valid, rows, cols = extraction_batch(9, 3, 4, 2, 33, 16)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    want = twins.attention_mass(q, k, valid, rows, cols, 0.25)
    got = kernels.attention_mass(q_view, k, valid.to(torch.uint8), rows, cols, 0.25, backend="native")
    rtol = attention_mass_rtol(q, k, valid, rows, 0.25)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)
    got = kernels.attention_mass(q.half(), k, valid, rows, cols, 0.25, backend="native")
    torch.testing.assert_close(got, twins.attention_mass(q.half().float(), k, valid, rows, cols, 0.25), rtol=rtol, atol=0.0)


def test_attention_mass_of_a_sample_does_not_depend_on_its_batch_mates():
    q, k, valid, rows, cols = extraction_batch(13, 5, 4, 4, 60, 32)
    together = kernels.attention_mass(q, k, valid, rows, cols, 0.2, backend="native")
    alone = kernels.attention_mass(q[3:4], k[3:4], valid[3:4], rows[3:4], cols[3:4], 0.2, backend="native")
    torch.testing.assert_close(together[3:4], alone, rtol=attention_mass_rtol(q, k, valid, rows, 0.2), atol=0.0)


def mass_batch(seed, batch, seq, dim, dtype=torch.float32):
    """hidden, mass and vision masks with the special samples the selection must handle."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(batch, seq, dim, generator=gen) * 2 + 0.5).to(dtype)
    vision = torch.rand(batch, seq, generator=gen) < 0.6
    mass = torch.rand(batch, seq, generator=gen) ** 3 / seq  # like attention: many small, a few large
    specials = ["zero", "ties", "one", "none", "dyadic"]
    for b in range(min(batch - 1, len(specials))):
        kind = specials[b]
        if kind == "zero":  # no attention at all: uniform over the vision tokens
            vision[b, : seq - seq % 2] = True  # an even count: running sums land on tau = 0.5
            mass[b] = 0.0
        elif kind == "ties":  # ties (and mass off the vision tokens, which must not count)
            mass[b, : seq // 2] = 0.25 / seq
        elif kind == "one":
            vision[b] = False
            vision[b, seq // 2] = True
        elif kind == "none":
            vision[b] = False
        else:  # exactly representable values: the running sums hit tau exactly
            mass[b] = torch.tensor([0.5, 0.25, 0.125, 0.0625])[torch.arange(seq) % 4]
    return hidden, mass, vision


def check_top_mass_mean(hidden, mass, vision, tau, device="cpu"):
    want, want_kept = twins.top_mass_mean(hidden, mass, vision, tau)
    got, kept = kernels.top_mass_mean(hidden.to(device), mass.to(device), vision.to(device), tau, backend="native")
    assert got.dtype == torch.float32 and got.shape == want.shape and got.device.type == device
    assert kept.dtype == torch.int64 and kept.device.type == device
    assert kept.tolist() == want_kept.tolist()
    torch.testing.assert_close(got.cpu(), want, rtol=0.0, atol=mean_atol(hidden))
    return got.cpu(), kept.cpu()


MEAN_SHAPES = [(1, 1, 8), (2, 1, 3), (3, 30, 16), (6, 200, 64), (16, 90, 40), (4, 700, 1024)]
TAUS = [1e-9, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MEAN_SHAPES)
def test_top_mass_mean_matches_twin(shape, dtype):
    batch, seq, dim = shape
    hidden, mass, vision = mass_batch(seq * 3 + dim, batch, seq, dim, dtype)
    n_vision = vision.sum(dim=1)
    previous = None
    for tau in TAUS:
        got, kept = check_top_mass_mean(hidden, mass, vision, tau)
        assert torch.all((kept >= 1) == (n_vision > 0)) and torch.all(kept <= n_vision)
        assert torch.all(got[n_vision == 0] == 0)
        if previous is not None:
            assert torch.all(kept >= previous)  # a larger tau keeps more
        previous = kept
    if seq >= 30:  # the tau range spans from one token to (nearly) all of them
        assert torch.any(previous > 1)


def test_top_mass_mean_special_samples():
    hidden, mass, vision = mass_batch(3, 6, 40, 12)
    _, kept = check_top_mass_mean(hidden, mass, vision, 0.5)
    run, below = 0.0, 0  # uniform over 40, the running sum lands on 0.5 (up to rounding)
    for _ in range(40):
        run += 1.0 / 40
        below += run <= 0.5
    assert kept[0] == below + 1
    assert kept[2] == 1 and kept[3] == 0
    _, kept_all = check_top_mass_mean(hidden, mass, vision, 1.0)
    assert kept_all[0] == 40 and kept_all[4] == int(vision[4].sum())
    # mass in float64 is used as given (not rounded to float32 first)
    fine = mass.double()
    fine[5] += torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-12
    check_top_mass_mean(hidden, fine, vision, 0.9)


def test_top_mass_mean_selects_the_most_attended_tokens():
    """An independent check of what the kernel keeps: the hidden state of each token is its
    position, so the mean tells which tokens were averaged."""
    seq = 10
    hidden = torch.arange(seq, dtype=torch.float32).repeat(2, 1)[..., None].expand(2, seq, 3).contiguous()
    vision = torch.ones(2, seq, dtype=torch.bool)
    mass = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0], [0.1] * seq])
    got, kept = kernels.top_mass_mean(hidden, mass, vision, 0.65, backend="native")
    assert kept.tolist() == [2, 7]  # 0.5, 0.8 > 0.65; uniform ties: earliest seven
    torch.testing.assert_close(got[0], torch.full((3,), 2.0))  # positions 1 and 3
    torch.testing.assert_close(got[1], torch.full((3,), 3.0))  # positions 0..6


def test_auto_dispatch_uses_the_native_cpu_kernels(monkeypatch):
    assert kernels.native_available(torch.device("cpu"), "attention_mass")
    assert kernels.native_available(torch.device("cpu"), "top_mass_mean")
    q, k, valid, rows, cols = extraction_batch(21, 2, 2, 1, 30, 8)
    hidden, mass, vision = mass_batch(21, 3, 30, 8)
    want_mass = twins.attention_mass(q, k, valid, rows, cols, 0.3)
    want_mean = twins.top_mass_mean(hidden, mass, vision, 0.9)

    def no_twin(*args, **kwargs):
        raise AssertionError("the twin ran although the native kernel is there")

    monkeypatch.setattr(twins, "attention_mass", no_twin)
    monkeypatch.setattr(twins, "top_mass_mean", no_twin)
    torch.testing.assert_close(
        kernels.attention_mass(q, k, valid, rows, cols, 0.3),
        want_mass,
        rtol=attention_mass_rtol(q, k, valid, rows, 0.3),
        atol=0.0,
    )
    got, kept = kernels.top_mass_mean(hidden, mass, vision, 0.9)
    torch.testing.assert_close(got, want_mean[0], rtol=0.0, atol=mean_atol(hidden))
    assert torch.equal(kept, want_mean[1])
    with pytest.raises(AssertionError, match="the twin ran"):
        kernels.attention_mass(q, k, valid, rows, cols, 0.3, backend="torch")


def test_without_the_native_module_auto_uses_the_twin_and_native_refuses(monkeypatch):
    q, k, valid, rows, cols = extraction_batch(22, 2, 2, 2, 20, 8)
    want = twins.attention_mass(q, k, valid, rows, cols, 0.3)
    monkeypatch.setattr(kernels.native, "C", None)
    assert torch.equal(kernels.attention_mass(q, k, valid, rows, cols, 0.3), want)
    with pytest.raises(RuntimeError, match="no native cpu kernel for top_mass_mean"):
        kernels.top_mass_mean(torch.randn(2, 20, 4), torch.rand(2, 20), cols, 0.9, backend="native")


def test_bad_arguments_are_refused_before_the_native_call():
    q, k, valid, rows, cols = extraction_batch(2, 2, 4, 2, 10, 8)
    with pytest.raises(ValueError, match="positive multiple"):
        kernels.attention_mass(q, k[:, :1].expand(2, 3, 10, 8), valid, rows, cols, 0.3, backend="native")
    with pytest.raises(ValueError, match="does not fit"):
        kernels.attention_mass(q, k[..., :4], valid, rows, cols, 0.3, backend="native")
    with pytest.raises(ValueError, match=r"\[B, H, S, hd\]"):
        kernels.attention_mass(q[0], k[0], valid, rows, cols, 0.3, backend="native")
    with pytest.raises(ValueError, match="col_is_vision must have shape"):
        kernels.attention_mass(q, k, valid, rows, cols[:, :9], 0.3, backend="native")
    with pytest.raises(ValueError, match="mass must have shape"):
        kernels.top_mass_mean(torch.randn(2, 10, 4), torch.rand(2, 9), cols, 0.9, backend="native")
    with pytest.raises(ValueError, match="backend"):
        kernels.top_mass_mean(torch.randn(2, 10, 4), torch.rand(2, 10), cols, 0.9, backend="fast")


def _refuse(*args):
    raise RuntimeError("head size too large")


def test_native_or_twin_falls_back_with_one_warning_under_auto_only(monkeypatch):
    """A GPU kernel refusing a shape its self-check never tried: "auto" warns once and uses the
    twin; "native", or a CPU kernel, lets the error through."""
    monkeypatch.setattr(kernels.dispatch, "fallback_warned", set())
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    call = kernels.dispatch.native_or_twin
    message = r"CUDA kernel attention_mass failed on shape \(2, 300\) \(head size too large\)"
    with pytest.warns(RuntimeWarning, match=message):
        assert call("attention_mass", cuda, "auto", (2, 300), _refuse, lambda: "twin") == "twin"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert call("attention_mass", cuda, "auto", (2, 300), _refuse, lambda: "twin") == "twin"
        assert call("top_mass_mean", cuda, "auto", (1,), lambda: "native", _refuse) == "native"
    with pytest.raises(RuntimeError, match="head size too large"):
        call("attention_mass", cuda, "native", (2, 300), _refuse, lambda: "twin")
    with pytest.raises(RuntimeError, match="head size too large"):
        call("attention_mass", cpu, "auto", (2, 300), _refuse, lambda: "twin")


def _fallback_args(name):
    if name == "attention_mass":
        return (*extraction_batch(23, 2, 2, 1, 30, 8), 0.3)
    if name == "top_mass_mean":
        return (*mass_batch(23, 3, 30, 8), 0.9)
    gen = torch.Generator().manual_seed(23)
    x, shift = torch.randn(9, 12, generator=gen), torch.randn(12, generator=gen, dtype=torch.float64)
    w = (torch.randn(12, 5, generator=gen),) if name == "projected_sqnorm" else ()
    return (x, shift, None, True, *w)


@pytest.mark.parametrize("name", ["attention_mass", "top_mass_mean", "gram_prep", "projected_sqnorm"])
def test_public_functions_fall_back_to_the_twin_when_the_gpu_kernel_refuses(monkeypatch, name):
    """The public functions on the CPU, with the helper told their device is a GPU and the
    native call replaced by one that raises: the result is the twin's."""
    real = kernels.dispatch.native_or_twin
    monkeypatch.setattr(kernels.dispatch, "fallback_warned", set())
    monkeypatch.setattr(
        kernels.dispatch,
        "native_or_twin",
        lambda kernel, device, backend, shape, native, twin: real(kernel, torch.device("cuda"), backend, shape, _refuse, twin),
    )
    args = _fallback_args(name)
    with pytest.warns(RuntimeWarning, match=f"CUDA kernel {name} failed on shape"):
        got = getattr(kernels, name)(*args)
    want = getattr(kernels, name)(*args, backend="torch")
    got, want = (o if isinstance(o, tuple) else (o,) for o in (got, want))
    assert len(got) == len(want) and all(torch.equal(g, e) for g, e in zip(got, want))
    with pytest.raises(RuntimeError, match="head size too large"):
        getattr(kernels, name)(*args, backend="native")


# --- the CUDA kernels, against the twins on the CPU (skipped without a GPU) ---


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
# 252: under 48 KiB dynamic, over it with the static part (opt-in needed); 256: opt-in
@pytest.mark.parametrize("shape", MASS_SHAPES + [(2, 4, 4, 40, 252, 1.0), (2, 4, 4, 40, 256, 1.0)])
def test_cuda_attention_mass_matches_twin(shape, dtype):
    batch, heads, kv_heads, seq, hd, sharp = shape
    q, k, valid, rows, cols = extraction_batch(seq + hd, batch, heads, kv_heads, seq, hd, sharp, dtype)
    check_attention_mass(q, k, valid, rows, cols, hd**-0.5, device="cuda")


@pytest.mark.cuda
def test_cuda_attention_mass_degenerate_samples():
    q, k, valid, rows, cols = extraction_batch(5, 5, 4, 2, 40, 16)
    rows[0], cols[1] = False, False
    valid[4], rows[4], cols[4] = False, False, False
    got = check_attention_mass(q, k, valid, rows, cols, 0.25, device="cuda")
    assert torch.all(got[:2] == 0) and torch.all(got[4] == 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MEAN_SHAPES + [(2, 3000, 64)])  # 3,000: several rank chunks
def test_cuda_top_mass_mean_matches_twin(shape, dtype):
    batch, seq, dim = shape
    hidden, mass, vision = mass_batch(seq * 3 + dim, batch, seq, dim, dtype)
    for tau in TAUS:
        check_top_mass_mean(hidden, mass, vision, tau, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["attention_mass", "top_mass_mean"])
def test_cuda_self_check_passes(monkeypatch, name):
    monkeypatch.setattr(kernels.dispatch, "cuda_verdict", {})
    assert kernels.dispatch.cuda_kernel_ok(name, torch.device("cuda"))


@pytest.mark.cuda
def test_cuda_attention_mass_refuses_a_head_size_beyond_shared_memory(monkeypatch):
    """hd 4096 needs ~768 KiB of shared memory per block: a clear error with "native", the
    twin's result (and a warning) with "auto"."""
    q, k, valid, rows, cols = extraction_batch(24, 1, 2, 2, 20, 4096)
    args = [t.to("cuda") for t in (q, k, valid, rows, cols)]
    with pytest.raises(RuntimeError, match="shared memory"):
        kernels.attention_mass(*args, 0.02, backend="native")
    monkeypatch.setattr(kernels.dispatch, "fallback_warned", set())
    with pytest.warns(RuntimeWarning, match="attention_mass failed on shape"):
        got = kernels.attention_mass(*args, 0.02)
    torch.testing.assert_close(
        got.cpu(),
        twins.attention_mass(q, k, valid, rows, cols, 0.02),
        rtol=attention_mass_rtol(q, k, valid, rows, 0.02),
        atol=0.0,
    )


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_the_cpu_kernels_follow_torchs_thread_count_and_agree_with_any(threads):
    """The CPU kernels run on torch.get_num_threads() threads. Each row's projection, each
    sample's top-mass mean and each prepared row are computed by one task whatever the count:
    the same bits. The attention mass splits a sample's rows into more chunks when there are
    more threads, so its sums are reordered: within the rounding of two evaluations."""
    q, k, valid, rows, cols = extraction_batch(threads, 3, 4, 2, 130, 32)
    hidden, mass, vision = mass_batch(threads, 3, 130, 300)
    x = torch.randn(700, 40, generator=torch.Generator().manual_seed(threads))
    w = torch.randn(40, 20, generator=torch.Generator().manual_seed(1))
    shift = x[:10].double().mean(0)

    def run():
        return (
            kernels.attention_mass(q, k, valid, rows, cols, 0.17, backend="native"),
            *kernels.top_mass_mean(hidden, mass, vision, 0.9, backend="native"),
            kernels.projected_sqnorm(x, shift, None, False, w, backend="native"),
            kernels.gram_prep(x, shift, None, False, backend="native")[0],
        )

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = run()
        torch.set_num_threads(threads)
        together = run()
    finally:
        torch.set_num_threads(before)
    rtol = attention_mass_rtol(q, k, valid, rows, 0.17)
    torch.testing.assert_close(together[0], alone[0], rtol=rtol, atol=0.0)
    for a, b in zip(alone[1:], together[1:]):
        assert torch.equal(a, b)
