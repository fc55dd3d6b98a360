"""The extraction kernels at a LLaVA-1.5-7B-like size on the CPU: native vs PyTorch twin, and for
the attention mass also the materialised way (the full eager [B, H, S, S] map, then a slice).

    pytest benchmarks/test_bench_extraction_kernels.py -s

Batch of 4 conversations padded to S = 700 tokens: a 35-token system prompt and "USER:", 576
image tokens, then user turns and assistant replies; 32 heads cut to 8 for this 2-core machine
(the work is linear in H), head size 128 -> 64 likewise; bfloat16 q/k/hidden as the model runs.
"""

import pytest
import torch

from scalselect import kernels
from scalselect.bench import llava_like_batch
from scalselect.kernels import twins

B, H, S, HD = 4, 8, 700, 64  # as llava_like_batch makes them


@pytest.fixture(scope="module")
def batch():
    return llava_like_batch()  # the inputs `scalselect bench` times too


def materialised_attention_mass(q, k, valid, instruction, vision, scale):
    """What the reference does: the full eager attention map [B, H, S, S] in float32, heads
    averaged, then the instruction rows x vision columns block."""
    k_full = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ k_full.float().transpose(-1, -2)) * scale
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    mask = causal[None, None] & valid[:, None, None, :]
    attn = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0).mean(dim=1)
    out = torch.zeros(q.shape[0], S)
    for b in range(q.shape[0]):
        rows = instruction[b] & valid[b]
        out[b, vision[b]] = attn[b][rows][:, vision[b]].mean(dim=0)
    return out


@pytest.mark.parametrize("impl", ["native", "twin", "materialised"])
def test_attention_mass(record, batch, impl):
    q, k, _, valid, instruction, vision = batch
    scale = HD**-0.5
    fn = {
        "native": lambda: kernels.attention_mass(q, k, valid, instruction, vision, scale, backend="native"),
        "twin": lambda: twins.attention_mass(q, k, valid, instruction, vision, scale),
        "materialised": lambda: materialised_attention_mass(q, k, valid, instruction, vision, scale),
    }[impl]
    got = record(f"mass_{impl}", fn, rounds=5)
    want = twins.attention_mass(q, k, valid, instruction, vision, scale)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-8)
    if impl == "materialised":
        print(
            f"\nmaterialised map: {B * H * S * S * 4 / 2**20:.0f} MiB of float32 probabilities; "
            f"{int((instruction & valid).sum())} instruction rows x {int(vision.sum())} vision columns kept"
        )


@pytest.mark.parametrize("impl", ["native", "twin"])
def test_top_mass_mean(record, batch, impl):
    q, k, hidden, valid, instruction, vision = batch
    mass = twins.attention_mass(q, k, valid, instruction, vision, HD**-0.5)
    fn = {
        "native": lambda: kernels.top_mass_mean(hidden, mass, vision, 0.9, backend="native"),
        "twin": lambda: twins.top_mass_mean(hidden, mass, vision, 0.9),
    }[impl]
    got, kept = record(f"top_mean_{impl}", fn, rounds=5)
    want, want_kept = twins.top_mass_mean(hidden, mass, vision, 0.9)
    assert torch.equal(kept, want_kept)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
