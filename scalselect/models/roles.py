"""Token roles of one rendered conversation: vision, assistant reply, or instruction.

Reply spans are found exactly, from character offsets in the text the checkpoint's own chat
template renders, never by searching for a reply's standalone token ids (a reply tokenises
differently in context, and that search silently fails). For each assistant turn the template
renders the conversation up to it with the generation prompt; the full rendering must continue
that prefix, and the reply's text must follow it (after whitespace at most). A token whose
character span overlaps a reply is a reply token; every other real, non-vision token
(system prompt, user text, template markup) is an instruction token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError


@dataclass
class Roles:
    input_ids: torch.Tensor    # [S] as the processor produces them (images expanded)
    vision: torch.Tensor       # [S] bool: image placeholder tokens
    instruction: torch.Tensor  # [S] bool: real tokens outside replies, not vision


def _reply_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def reply_char_spans(render: Callable[[list, bool], str], messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character span of every assistant reply.

    render(messages, add_generation_prompt) -> str is the checkpoint's chat template."""
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(messages[:i], True)
        content = _reply_text(message)
        if not full.startswith(prefix):
            raise InputError(f"the chat template does not render turn {i} as a continuation of the "
                             "turns before it; reply tokens cannot be located")
        start = full.find(content, len(prefix))
        if start < 0 or full[len(prefix):start].strip():
            raise InputError(f"reply {i} is not where the chat template puts it (was it rewritten?)")
        spans.append((start, start + len(content)))
    return full, spans


def token_roles(tokenizer, text: str, spans: list[tuple[int, int]], image_token_id: int,
                processor_ids: torch.Tensor) -> Roles:
    """Roles of `processor_ids`, the processor's ids for `text` with its image tokens expanded.

    `text` is tokenised again with offsets; each run of m >= 1 consecutive image tokens there
    (m > 1 when the template puts image tags side by side) stands for one run of R >= m image
    tokens in `processor_ids` (the images' expansions, which then touch), and everything else
    must match one to one."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    in_reply = [any(s < hi and lo < e for lo, hi in spans) for s, e in offsets]
    proc = processor_ids.tolist()
    reply: list[bool] = []
    consumed = 0
    while consumed < len(ids):
        token, j = ids[consumed], len(reply)
        if token == image_token_id:
            m = run = 0
            while consumed + m < len(ids) and ids[consumed + m] == image_token_id:
                m += 1
            while j + run < len(proc) and proc[j + run] == image_token_id:
                run += 1
            if run < m:  # fewer image tokens than image tags
                break
            reply.extend([False] * run)
            consumed += m
        elif j < len(proc) and proc[j] == token:
            reply.append(in_reply[consumed])
            consumed += 1
        else:
            break
    if consumed != len(ids) or len(reply) != len(proc):
        raise InputError("the processor's tokens do not match the rendered chat text "
                         "(unsupported processor or template)")
    vision = processor_ids == image_token_id
    return Roles(processor_ids, vision, ~vision & ~torch.tensor(reply, dtype=torch.bool))
