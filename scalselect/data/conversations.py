"""Pool records -> chat messages with image parts, placed as docs/design.md section 1a says.

Images become image parts before the text of the user turn that carries their `<image>` tags
(one part per tag, in order); when no turn has a tag, all images go to the first user turn.
In such a turn the tags are removed and the text is stripped of surrounding whitespace, as
LLaVA's own training code does. Problems with one record raise InputError with the reason, which
the extractor records as that sample's skip.
"""

from __future__ import annotations

from ..errors import InputError
from .layouts import LAYOUTS

IMAGE_TAG = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_turns(record: dict, layout: str) -> list[tuple[str, str]]:
    keys = LAYOUTS[layout]
    turns = []
    for i, turn in enumerate(record.get(keys.turns) or []):
        role = _ROLES.get(turn.get(keys.role)) if isinstance(turn, dict) else None
        if role is None:
            raise InputError(f"turn {i} has no known role (expected human/gpt or user/assistant/system)")
        text = turn.get(keys.text)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"turn {i} has empty or non-text content")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: legal as a JSON escape, no tokenizer takes it
                raise InputError(
                    f"turn {i} holds text that is not valid Unicode ({exc.reason} at character {exc.start})"
                ) from None
        turns.append((role, text))
    return turns


def image_refs(record: dict, layout: str) -> list:
    """The record's images, in order: each a path (str), encoded bytes, or a dict with "bytes"
    and/or "path" (a Hugging Face Image value; its bytes win when both are set)."""
    images = record.get(LAYOUTS[layout].images)
    if images is None:
        return []
    images = images if isinstance(images, list) else [images]
    if not all(_is_image_ref(ref) for ref in images):
        raise InputError(
            "images must be paths (non-empty strings), encoded bytes, or "
            '{"bytes": ..., "path": ...} values, one or a list of them'
        )
    return images


def _is_image_ref(ref) -> bool:
    if isinstance(ref, dict):
        data, path = ref.get("bytes"), ref.get("path")
        return (isinstance(data, bytes) and bool(data)) or (data is None and isinstance(path, str) and bool(path))
    return isinstance(ref, (str, bytes)) and bool(ref)


def image_name(ref) -> str | None:
    """The path an image was named by, or None for bare bytes."""
    if isinstance(ref, dict):
        return ref.get("path") or None
    return ref if isinstance(ref, str) else None


def to_messages(record: dict, layout: str) -> tuple[list[dict], list[str]]:
    """Chat messages (content as typed parts) and the record's images (see image_refs), in part
    order."""
    turns = read_turns(record, layout)
    images = image_refs(record, layout)
    if not any(role == "user" for role, _ in turns):
        raise InputError("no user turn")
    if not any(role == "assistant" for role, _ in turns):
        raise InputError("no assistant turn")
    first = next(i for i, (role, _) in enumerate(turns) if role != "system")
    if turns[first][0] == "assistant":
        raise InputError(
            f"turn {first} is a reply before any user turn; a conversation starts with a user turn (after any system turns)"
        )
    tags = sum(text.count(IMAGE_TAG) for role, text in turns if role == "user")
    if tags and tags != len(images):
        raise InputError(f"{tags} {IMAGE_TAG} tags for {len(images)} images")
    first_user = next(i for i, (role, _) in enumerate(turns) if role == "user")
    messages = []
    for i, (role, text) in enumerate(turns):
        if role != "user":
            messages.append({"role": role, "content": [{"type": "text", "text": text}]})
            continue
        n_images = text.count(IMAGE_TAG) if tags else (len(images) if i == first_user else 0)
        if n_images:
            text = text.replace(IMAGE_TAG, "").strip()
        parts = [{"type": "image"} for _ in range(n_images)]
        if text:
            parts = parts + [{"type": "text", "text": text}]
        messages.append({"role": "user", "content": parts})
    return messages, images
