"""The attention masks of decoder layers, written from their definitions (transformers'
masking_utils): a dense [B, S, S] bool map for the slow eager path, and the per-row key ranges
[lo, hi) that the extraction kernels take, from formulas of their own. The twin tests check the
two against each other.

Kinds: causal; sliding (key j with i - window < j <= i); chunked (the row's chunk, counted from
the first real token, up to the row); prefix (PaliGemma: the prefix's rows see the whole prefix,
the rest is causal); image_blocks (Gemma 3: a block's rows see the whole block; other rows
causal). Padding keys are never seen.
"""

from __future__ import annotations

import torch

KINDS = ("causal", "sliding", "chunked", "prefix", "image_blocks")


def _first_real(valid: torch.Tensor) -> torch.Tensor:
    """[B] index of each sample's first real token (its left padding)."""
    return valid.int().argmax(dim=1)


def dense_mask(
    kind: str, valid: torch.Tensor, *, window: int = 7, chunk: int = 6, prefix: int = 9, blocks: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, S, S] bool: row i attends to key j. blocks: [B, S] int, a block id > 0 at the tokens of
    each bidirectional block (image_blocks only)."""
    b_size, seq = valid.shape
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    mask = (j <= i)[None].expand(b_size, seq, seq).clone()
    pad = _first_real(valid)[:, None, None]
    if kind == "sliding":
        mask &= (j > i - window)[None]
    elif kind == "chunked":
        mask &= (j[None] - pad) // chunk == (i[None] - pad) // chunk
    elif kind == "prefix":
        mask |= (i[None] - pad < prefix) & (j[None] - pad < prefix)
    elif kind == "image_blocks":
        same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)
        mask |= same
    elif kind != "causal":
        raise ValueError(kind)
    return mask & valid[:, None, :]


def key_ranges(
    kind: str, valid: torch.Tensor, *, window: int = 7, chunk: int = 6, prefix: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) int32 [B, S] for the rows that are not in a bidirectional image block (the only
    rows the kernels compute); the same keys as dense_mask on the real ones."""
    b_size, seq = valid.shape
    i = torch.arange(seq)[None].expand(b_size, seq)
    pad = _first_real(valid)[:, None]
    lo, hi = torch.zeros_like(i), i + 1
    if kind == "sliding":
        lo = (i - window + 1).clamp(min=0)
    elif kind == "chunked":
        lo = torch.where(i >= pad, pad + (i - pad) // chunk * chunk, i)
    elif kind == "prefix":
        in_prefix = (i >= pad) & (i - pad < prefix)
        hi = torch.where(in_prefix, torch.maximum(hi, pad + prefix), hi).clamp(max=seq)
    return lo.to(torch.int32), hi.to(torch.int32)


def image_blocks(vision: torch.Tensor) -> torch.Tensor:
    """[B, S] int: runs of consecutive vision tokens numbered 1, 2, ... (0 elsewhere)."""
    starts = vision & ~torch.nn.functional.pad(vision, (1, 0))[:, :-1]
    return torch.where(vision, starts.int().cumsum(dim=1), 0)
