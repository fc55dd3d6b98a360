"""PaliGemma and PaliGemma 2: a prefix LM. Its processor marks a suffix (token_type_ids 1, causal)
only when given one, as fine-tuning passes the answer; without one the whole sample would be
the bidirectional prefix, replies included. As its fine-tuning renders a sample: the prefix
(images and prompt, bidirectional) is everything before the first reply, the suffix from the
first reply on."""

from __future__ import annotations

from .adapters import register_inputs


def _prefix_and_suffix(inputs: dict, vision, instruction) -> dict:
    import torch

    reply = ~vision & ~instruction
    first = int(reply.int().argmax()) if bool(reply.any()) else reply.numel()
    types = (torch.arange(reply.numel()) >= first).to(inputs["input_ids"].dtype)[None]
    return {**{k: v for k, v in inputs.items() if k != "labels"}, "token_type_ids": types}


register_inputs("PaliGemmaProcessor", _prefix_and_suffix)
