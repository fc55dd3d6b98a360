"""The extraction twins (attention mass, top-mass mean) against naive full-attention versions."""

import pytest
import torch

from scalselect.kernels import twins
import layer_masks
from tolerances import attention_mass_rtol, mean_atol


def eager_attention_mass(q, k, key_valid, row_instr, col_vision, scale, mask=None, softcap=None):
    """What the reference does: full eager attention, every map kept, heads averaged.
    mask: [B, S, S] bool, the layer's (layer_masks.dense_mask); None: causal and padding."""
    group = q.shape[1] // k.shape[1]
    k_full = k.repeat_interleave(group, dim=1)  # transformers' repeat_kv
    scores = (q.double() @ k_full.double().transpose(-1, -2)) * scale  # [B, H, S, S]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        mask = layer_masks.dense_mask("causal", key_valid)
    probs = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    attn = probs.mean(dim=1)  # [B, S, S]
    out = torch.zeros(q.shape[0], q.shape[2], dtype=torch.float64)
    for b in range(q.shape[0]):
        rows = row_instr[b] & key_valid[b]
        if rows.any() and col_vision[b].any():
            out[b, col_vision[b]] = attn[b][rows][:, col_vision[b]].mean(dim=0)
    return out


def random_batch(seed, batch=3, heads=4, kv_heads=2, seq=23, hd=8, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq, hd, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, seq, hd, generator=gen).to(dtype)
    key_valid = torch.ones(batch, seq, dtype=torch.bool)
    key_valid[0, :5] = False  # left padding
    key_valid[-1, -7:] = False  # right padding
    col_vision = (torch.rand(batch, seq, generator=gen) < 0.4) & key_valid
    row_instr = ~col_vision & key_valid & (torch.rand(batch, seq, generator=gen) < 0.7)
    return q, k, key_valid, row_instr, col_vision


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_attention_mass_equals_eager_attention(seed, heads, kv_heads):
    q, k, valid, rows, cols = random_batch(seed, heads=heads, kv_heads=kv_heads)
    scale = q.shape[-1] ** -0.5
    got = twins.attention_mass(q, k, valid, rows, cols, scale, row_chunk=3)
    want = eager_attention_mass(q, k, valid, rows, cols, scale)
    torch.testing.assert_close(got.double(), want, rtol=attention_mass_rtol(q, k, valid, rows, scale), atol=0.0)
    assert torch.all(got[~cols] == 0)


@pytest.mark.parametrize("kind", layer_masks.KINDS)
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_attention_mass_follows_the_layer_mask(kind, softcap):
    """Per-row key ranges give what eager attention under the layer's full mask gives: sliding
    windows and chunks cut rows off from keys (some instruction rows see no vision token),
    prefixes and image blocks let rows see later keys; with soft-capped logits too."""
    q, k, valid, rows, cols = random_batch(3, batch=4, seq=40, hd=8)
    q = q * 3  # sharp enough that the cap changes the probabilities
    if kind == "image_blocks":  # instruction rows stay outside the blocks, as in Gemma 3
        rows &= ~cols
    mask = layer_masks.dense_mask(kind, valid, blocks=layer_masks.image_blocks(cols))
    ranges = layer_masks.key_ranges(kind, valid)
    scale = q.shape[-1] ** -0.5
    got = twins.attention_mass(q, k, valid, rows, cols, scale, ranges, softcap, row_chunk=5)
    want = eager_attention_mass(q, k, valid, rows, cols, scale, mask, softcap)
    rtol = attention_mass_rtol(q, k, valid, rows, scale, softcap)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=0.0)
    causal = twins.attention_mass(q, k, valid, rows, cols, scale, None, softcap)
    assert (kind in ("causal", "image_blocks")) == torch.allclose(got, causal, rtol=rtol, atol=0.0)
    if softcap is not None:
        assert not torch.allclose(got, twins.attention_mass(q, k, valid, rows, cols, scale, ranges), rtol=rtol, atol=0.0)


def test_attention_mass_half_precision_and_empty_samples():
    q, k, valid, rows, cols = random_batch(7, dtype=torch.bfloat16)
    rows[1] = False  # no instruction rows
    cols[2] = False  # no vision tokens
    got = twins.attention_mass(q, k, valid, rows, cols, 0.3)
    want = eager_attention_mass(q.float(), k.float(), valid, rows, cols, 0.3)
    torch.testing.assert_close(got.double(), want, rtol=attention_mass_rtol(q, k, valid, rows, 0.3), atol=0.0)
    assert torch.all(got[1] == 0) and torch.all(got[2] == 0)


def test_attention_mass_of_a_sample_does_not_depend_on_its_batch_mates():
    q, k, valid, rows, cols = random_batch(11)
    together = twins.attention_mass(q, k, valid, rows, cols, 0.35)
    alone = twins.attention_mass(q[1:2], k[1:2], valid[1:2], rows[1:2], cols[1:2], 0.35)
    torch.testing.assert_close(together[1:2], alone)


def naive_top_mass_mean(hidden, mass, cols, tau):
    vectors, kept = [], []
    for b in range(hidden.shape[0]):
        idx = [j for j in range(hidden.shape[1]) if cols[b, j]]
        if not idx:
            vectors.append(torch.zeros(hidden.shape[2], dtype=torch.float64))
            kept.append(0)
            continue
        a = [float(mass[b, j]) for j in idx]
        total = sum(a)
        p = [x / total for x in a] if total > 0 else [1.0 / len(a)] * len(a)
        order = sorted(range(len(idx)), key=lambda t: (-p[t], idx[t]))
        run, chosen = 0.0, []
        for t in order:
            chosen.append(idx[t])
            run += p[t]
            if run > tau:
                break
        vectors.append(hidden[b, chosen].double().mean(dim=0))
        kept.append(len(chosen))
    return torch.stack(vectors), torch.tensor(kept)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.0, 0.5, 0.9, 1.0])
def test_top_mass_mean_equals_naive(seed, tau):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 30, 16, generator=gen)
    cols = torch.rand(4, 30, generator=gen) < 0.5
    cols[3] = False
    cols[2] = False
    cols[2, 17] = True  # one vision token
    mass = torch.rand(4, 30, generator=gen) ** 3
    mass[1] = 0.0  # no attention at all: uniform
    mass[0, :10] = 0.25  # ties: earlier position first
    got, kept = twins.top_mass_mean(hidden, mass, cols, tau)
    want, want_kept = naive_top_mass_mean(hidden, mass, cols, tau)
    assert kept.tolist() == want_kept.tolist()
    torch.testing.assert_close(got.double(), want, rtol=0.0, atol=mean_atol(hidden))
    assert kept[2] == 1 and kept[3] == 0 and torch.all(got[3] == 0)
    if tau >= 1.0:
        assert kept[1] == int(cols[1].sum())  # uniform mass never exceeds 1: all kept


@pytest.mark.parametrize("kind", layer_masks.KINDS)
def test_key_ranges_read_from_the_mask_transformers_builds(kind):
    """The probe reads each row's keys from the layer's 4-D mask (bool, or additive float), as
    the definitions' ranges give them, and says where a row's keys are not one range."""
    from scalselect.extract import key_ranges_from_mask

    _, _, valid, rows, cols = random_batch(5, batch=4, seq=40)
    blocks = layer_masks.image_blocks(cols)
    mask = layer_masks.dense_mask(kind, valid, blocks=blocks)[:, None]
    want_lo, want_hi = layer_masks.key_ranges(kind, valid)
    outside = valid & (blocks == 0)  # the rows the definitions' ranges are for
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    for given in (mask, additive, mask.expand(-1, 3, -1, -1)):
        lo, hi, contiguous = key_ranges_from_mask(given, 4, 40, causal=True)
        assert bool(contiguous[outside].all())
        # a range may reach into padding (the kernels skip padded keys): compare the keys seen
        at = torch.arange(40)
        seen = valid[:, None, :] & (at >= lo[..., None]) & (at < hi[..., None])
        want = valid[:, None, :] & (at >= want_lo[..., None]) & (at < want_hi[..., None])
        assert torch.equal(seen[outside], want[outside])
        assert torch.equal(seen[outside], mask[:, 0][outside])


def test_key_ranges_without_a_mask_and_of_rows_with_holes():
    from scalselect.errors import InputError
    from scalselect.extract import key_ranges_from_mask

    lo, hi, contiguous = key_ranges_from_mask(None, 2, 5, causal=True)
    assert lo.tolist() == [[0] * 5] * 2 and hi.tolist() == [[1, 2, 3, 4, 5]] * 2 and bool(contiguous.all())
    lo, hi, _ = key_ranges_from_mask(None, 2, 5, causal=False)
    assert hi.tolist() == [[5] * 5] * 2
    holes = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    holes[0, 0, 4, 2] = False  # row 4 sees keys 0, 1, 3, 4
    lo, hi, contiguous = key_ranges_from_mask(holes, 1, 5, causal=True)
    assert contiguous.tolist() == [[True, True, True, True, False]]
    bias = torch.zeros(1, 1, 5, 5)
    bias[0, 0, 3, 1] = 0.5  # a bias, not a mask: refused
    with pytest.raises(InputError, match="adds a bias"):
        key_ranges_from_mask(bias, 1, 5, causal=True)
    with pytest.raises(InputError, match="neither bool nor an additive float mask"):
        key_ranges_from_mask(holes.long(), 1, 5, causal=True)
    # one mask for the whole batch (equal lengths), read once and spread over the samples
    lo, hi, contiguous = key_ranges_from_mask(holes[:, :, :4, :4], 3, 4, causal=True)
    assert hi.tolist() == [[1, 2, 3, 4]] * 3 and bool(contiguous.all())
