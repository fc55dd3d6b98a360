"""Pure-PyTorch twins of the compiled kernels: same signatures, same results within rounding.

They define what the kernels compute, serve as the fallback when the native module or the GPU
is missing, and are what the tests compare the kernels against.
"""

from __future__ import annotations

import torch


def centre_rows(x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None, l2_normalize: bool) -> torch.Tensor:
    """float64 rows r_i = (x_i - shift) * inv_scale, then c_i = r_i / ||r_i|| if l2_normalize
    (a row of norm 0 stays 0)."""
    c = x.to(torch.float64) - shift
    if inv_scale is not None:
        c = c * inv_scale
    if l2_normalize:
        norms = torch.linalg.vector_norm(c, dim=1, keepdim=True)
        c = c * torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    return c


def gram_prep(
    x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None, l2_normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred rows as float32 (n x d) and their float64 column sums (d)."""
    c = centre_rows(x, shift, inv_scale, l2_normalize)
    return c.to(torch.float32), c.sum(dim=0)


def sketch_prep(
    x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None, l2_normalize: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gram_prep's centred rows and column sums, and the float64 column sums of c_ij^2."""
    c = centre_rows(x, shift, inv_scale, l2_normalize)
    return c.to(torch.float32), c.sum(dim=0), (c * c).sum(dim=0)


def projected_sqnorm(
    x: torch.Tensor, shift: torch.Tensor, inv_scale: torch.Tensor | None, l2_normalize: bool, w: torch.Tensor
) -> torch.Tensor:
    """float64 ||c_i W||^2 per row, with W (d x k) float32."""
    c = centre_rows(x, shift, inv_scale, l2_normalize).to(torch.float32)
    y = (c @ w).to(torch.float64)
    return (y * y).sum(dim=1)


# --- Representation extraction: the twins come first and define the semantics. ---


def causal_key_ranges(key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i of a causal layer attends to keys [0, i + 1): (lo, hi), int32 [B, S] each."""
    b_size, seq = key_valid.shape
    hi = torch.arange(1, seq + 1, dtype=torch.int32, device=key_valid.device).expand(b_size, seq)
    return torch.zeros_like(hi), hi.contiguous()


def attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    key_valid: torch.Tensor,
    row_is_instruction: torch.Tensor,
    col_is_vision: torch.Tensor,
    scale: float,
    key_ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    softcap: float | None = None,
    row_chunk: int = 512,
) -> torch.Tensor:
    """Mean attention each vision token receives from the instruction tokens in one layer.

    q: [B, H, S, hd] rotary-embedded queries; k: [B, Hkv, S, hd] keys, H a multiple of Hkv
    (query head h reads key head h // (H / Hkv), as transformers' repeat_kv does).
    key_valid: [B, S] bool, False at padding. row_is_instruction, col_is_vision: [B, S] bool.
    key_ranges: (lo, hi), int [B, S]: row i attends to the valid keys lo[i] <= j < hi[i] (the
    layer's mask: causal, sliding window, chunked, bidirectional prefix); None is causal, j <= i.
    Logits are scale * q.k, then softcap * tanh(logit / softcap) when softcap is set, softmax over
    the row's keys in float32. Returns [B, S] float32: a_j = mean over heads and instruction rows
    of P[i, j] at vision columns, 0 elsewhere (all 0 for a sample without instruction rows).
    Memory: one [row_chunk, S] block at a time, never [B, H, S, S].
    """
    b_size, heads, seq, _ = q.shape
    group = heads // k.shape[1]
    lo, hi = key_ranges if key_ranges is not None else causal_key_ranges(key_valid)
    out = torch.zeros(b_size, seq, dtype=torch.float32, device=q.device)
    positions = torch.arange(seq, device=q.device)
    for b in range(b_size):
        rows = torch.nonzero(row_is_instruction[b] & key_valid[b]).flatten()  # real tokens only
        cols = torch.nonzero(col_is_vision[b]).flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        total = torch.zeros(cols.numel(), dtype=torch.float32, device=q.device)
        for start in range(0, rows.numel(), row_chunk):
            r = rows[start : start + row_chunk]
            allowed = (
                key_valid[b][None, :] & (positions[None, :] >= lo[b, r, None]) & (positions[None, :] < hi[b, r, None])
            )  # [r, S]
            for h in range(heads):
                logits = (q[b, h, r].float() @ k[b, h // group].float().T) * scale
                if softcap is not None:
                    logits = torch.tanh(logits / softcap) * softcap
                probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
                total += probs[:, cols].sum(dim=0)
        out[b, cols] = total / (heads * rows.numel())
    return out


def top_mass_mean(
    hidden: torch.Tensor, mass: torch.Tensor, col_is_vision: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One vector per sample: the mean hidden state of its most-attended vision tokens.

    hidden: [B, S, D] the probed layer's outputs; mass: [B, S] from attention_mass; col_is_vision [B, S].
    Per sample: p = mass / sum(mass) over vision tokens (uniform when the sum is 0); sort p
    descending (ties: earlier position first); keep the prefix up to and including the first
    token where the running sum exceeds tau (at least one, at most all). Returns the float32
    mean of the kept tokens' hidden states [B, D] and the kept counts [B] (0 when a sample has
    no vision token; its vector is then 0 and the caller skips it).
    """
    b_size, _, dim = hidden.shape
    vectors = torch.zeros(b_size, dim, dtype=torch.float32, device=hidden.device)
    kept = torch.zeros(b_size, dtype=torch.int64, device=hidden.device)
    for b in range(b_size):
        cols = torch.nonzero(col_is_vision[b]).flatten()
        if cols.numel() == 0:
            continue
        a = mass[b, cols].double()
        p = a / a.sum() if float(a.sum()) > 0 else torch.full_like(a, 1.0 / a.numel())
        p_sorted, order = torch.sort(p, descending=True, stable=True)
        n_keep = min(int((torch.cumsum(p_sorted, 0) <= tau).sum()) + 1, cols.numel())
        chosen = cols[order[:n_keep]]
        vectors[b] = hidden[b, chosen].float().mean(dim=0)
        kept[b] = n_keep
    return vectors, kept
