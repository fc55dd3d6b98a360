"""The record layouts a pool can hold, each named once: where a record keeps its turns, their
roles and texts, and its images.

* LLaVA: ``{"id": ..., "image": ..., "conversations": [{"from": ..., "value": ...}, ...]}``
* ShareGPT (LLaMA-Factory): ``{"messages": [{"role": ..., "content": ...}, ...], "images": [...]}``
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    name: str  # as pools report it: Pool.layout
    turns: str  # the record's list of turns (a JSON key, or a Parquet / Arrow column)
    role: str  # a turn's role key
    text: str  # a turn's text key
    images: str  # the record's image, or list of images
    label: str  # how messages name it

    def other(self) -> "Layout":
        return LAYOUTS["sharegpt" if self.name == "llava" else "llava"]


LAYOUTS = {
    "llava": Layout("llava", "conversations", "from", "value", "image", "LLaVA"),
    "sharegpt": Layout("sharegpt", "messages", "role", "content", "images", "ShareGPT"),
}
