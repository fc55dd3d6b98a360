"""Token roles of one rendered conversation: vision, assistant reply, or instruction.

Reply spans are found exactly, from character offsets in the text the checkpoint's own chat
template renders, never by searching for a reply's standalone token ids (a reply tokenises
differently in context, and that search silently fails): each reply is rendered once more as a
sentinel, and the rendering must differ from the real one exactly there. A token whose
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
    input_ids: torch.Tensor  # [S] as the processor produces them (images expanded)
    vision: torch.Tensor  # [S] bool: image placeholder tokens
    instruction: torch.Tensor  # [S] bool: real tokens outside replies, not vision


def _reply_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


# Stands in for one reply while the conversation is rendered: no template writes it.
_SENTINEL = "\u2063scalselect-reply\u2063"


def _with_text(message: dict, text: str) -> dict:
    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": text}
    parts, done = [], False
    for part in content:
        if part.get("type") == "text":
            if done:
                continue
            part, done = {**part, "text": text}, True
        parts.append(part)
    return {**message, "content": parts}


def reply_char_spans(render: Callable[[list, bool], str], messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character span of every assistant reply.

    render(messages, add_generation_prompt) -> str is the checkpoint's chat template. Reply i is
    where the template puts a sentinel in its place: the rendering with the sentinel, A + sentinel
    + B, must give the rendering itself as A + M + B with M the reply (the template may trim
    whitespace around it), so a template that rewrites a reply, hoists or reorders text around
    it, or renders past turns unlike the generation prompt is handled or refused, never guessed."""
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        marked = render([*messages[:i], _with_text(message, _SENTINEL), *messages[i + 1 :]], False)
        if marked.count(_SENTINEL) != 1:
            raise InputError(f"the chat template does not render reply {i} once, as it is; reply tokens cannot be located")
        before, after = marked.split(_SENTINEL)
        text = _reply_text(message).strip()
        middle = full[len(before) : len(full) - len(after)]
        if not (
            full.startswith(before) and full.endswith(after) and len(full) >= len(before) + len(after) and middle.strip() == text
        ):
            raise InputError(f"reply {i} is not where the chat template puts it (was it rewritten?)")
        start = len(before) + middle.find(text) if text else len(before)
        spans.append((start, start + len(text)))
    return full, spans


def token_roles(tokenizer, text: str, spans: list[tuple[int, int]], image_token_id: int, processor_ids: torch.Tensor) -> Roles:
    """Roles of `processor_ids`, the processor's ids for `text` with its images expanded.

    `text` is tokenised again with offsets and aligned with `processor_ids` (the longest common
    runs of ids, in order): a processor inserts tokens the text lacks (image placeholder runs,
    begin/end-of-image markers, row separators, a BOS) and drops the image tags it expands;
    those are never inside a reply. Every token of a reply must be found, in order, else the
    processor and the template disagree and the sample cannot be split into roles."""
    from difflib import SequenceMatcher

    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    in_reply = [any(s < hi and lo < e for lo, hi in spans) for s, e in offsets]
    proc = processor_ids.tolist()
    reply = [False] * len(proc)
    where = [-1] * len(ids)  # each text token's processor position, where it has one
    for a, b, size in SequenceMatcher(None, ids, proc, autojunk=False).get_matching_blocks():
        reply[b : b + size] = in_reply[a : a + size]
        where[a : a + size] = range(b, b + size)
    for lo, hi in spans:  # every token of a reply found, side by side as in the text
        at = [where[t] for t, (s, e) in enumerate(offsets) if s < hi and lo < e]
        if any(p < 0 for p in at) or any(q != p + 1 for p, q in zip(at, at[1:])):
            raise InputError("the processor's tokens do not match the rendered chat text (unsupported processor or template)")
    vision = processor_ids == image_token_id
    return Roles(processor_ids, vision, ~vision & ~torch.tensor(reply, dtype=torch.bool))
