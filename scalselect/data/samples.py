"""Pool samples -> model inputs with token roles, and batches of them.

`SampleMaker` turns one pool record into what the model needs: the conversation rendered with
the checkpoint's chat template, images decoded and run through its processor (in DataLoader
workers), and which tokens are instructions. A sample that cannot be used raises SampleSkip
with its reason; `LengthBatcher` groups prepared samples of similar length into padded batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import torch

from ..errors import InputError
from ..models import training_inputs
from ..models.roles import reply_char_spans, token_roles
from .conversations import to_messages
from .images import SampleSkip, open_image


@dataclass
class Prepared:
    sample_id: object
    inputs: dict  # the processor's tensors for this one sample (batch dim 1)
    instruction: torch.Tensor  # [S] bool

    @property
    def length(self) -> int:
        return int(self.instruction.shape[0])


def _per_token(key: str, value, seq: int) -> bool:
    """Tensors laid out [1, S] along the tokens (ids, masks), as opposed to image tensors."""
    return (
        isinstance(value, torch.Tensor)
        and value.dim() == 2
        and tuple(value.shape) == (1, seq)
        and not key.startswith(("pixel", "image"))
    )


class SampleMaker:
    """Callable record -> Prepared; picklable, so DataLoader workers can run it."""

    def __init__(
        self,
        processor,
        image_token_id: int,
        image_root: Path,
        max_length: int,
        allow_outside_root: bool = False,
        system_prompt: str | None = None,
        chat_template: str | None = None,
    ):
        self.processor, self.image_token_id = processor, int(image_token_id)
        self.image_root, self.max_length = image_root, int(max_length)
        self.allow_outside_root = allow_outside_root
        self.system_prompt, self.chat_template = system_prompt, chat_template

    def _render(self, messages: list, add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt
        )

    def messages(self, record: dict, layout: str) -> tuple[list, list]:
        """The record's chat messages and images; the system prompt first where it has no
        system turn of its own (a record's own system turn wins, as in trainers)."""
        messages, refs = to_messages(record, layout)
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}, *messages]
        return messages, refs

    def check_template(self) -> None:
        """Render one conversation (the system prompt if any, a user turn with an image, a
        reply) before any work: a template that cannot is one line, not a skip for every sample."""
        probe = self.messages(
            {
                "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}],
                "image": "x.png",
            },
            "llava",
        )[0]
        what = "--chat-template" if self.chat_template is not None else "the checkpoint's chat template"
        try:
            reply_char_spans(self._render, probe)
        except InputError as exc:
            raise InputError(f"{what} does not render the replies where they can be told from the instruction ({exc})") from None
        except Exception as exc:  # jinja2 raises its own kinds, and templates raise on purpose
            raise InputError(
                f"{what} cannot render a conversation ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None

    def __call__(self, record: dict, layout: str, sample_id) -> Prepared:
        try:
            messages, refs = self.messages(record, layout)
        except InputError as exc:
            raise SampleSkip("bad record", str(exc)) from None
        if not refs:
            raise SampleSkip("no image", "the sample has no image, so no vision tokens")
        images = [open_image(ref, self.image_root, self.allow_outside_root) for ref in refs]
        try:
            text, spans = reply_char_spans(self._render, messages)
        except InputError as exc:
            raise SampleSkip("template mismatch", str(exc)) from None
        try:
            inputs = dict(self.processor(images=images, text=[text], return_tensors="pt"))
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            raise SampleSkip("processor error", f"{exc.__class__.__name__}: {exc}") from None
        ids = inputs["input_ids"][0]
        try:
            roles = token_roles(self.processor.tokenizer, text, spans, self.image_token_id, ids)
        except InputError as exc:
            raise SampleSkip("template mismatch", str(exc)) from None
        seq = int(ids.shape[0])
        if not roles.vision.any():
            raise SampleSkip("no vision tokens", "the processor expanded no image token")
        if seq > self.max_length:
            last_vision = int(torch.nonzero(roles.vision).max())
            if last_vision >= self.max_length:
                raise SampleSkip(
                    "vision tokens cut by --max-length",
                    f"{seq} tokens, the last vision token at {last_vision}; --max-length is {self.max_length}",
                )
            inputs = {k: v[:, : self.max_length] if _per_token(k, v, seq) else v for k, v in inputs.items()}
        inputs = training_inputs(self.processor, inputs, roles.vision[: self.max_length], roles.instruction[: self.max_length])
        instruction = roles.instruction[: self.max_length]
        if not instruction.any():
            raise SampleSkip("no instruction tokens", "every real token is a vision or reply token")
        return Prepared(sample_id, inputs, instruction)


def _stack_images(values: list[torch.Tensor]) -> torch.Tensor:
    """Image tensors of several samples along dim 0. Where their other dims differ (a sample's
    number of tiles or images: LLaVA-NeXT, LLaVA-OneVision, Idefics3), each is zero-padded to the
    largest, as the processor pads a batch; those models drop the padding (from image_sizes, or
    all-zero images)."""
    if any(v.dim() != values[0].dim() for v in values) or values[0].dim() == 0:
        raise ValueError("image tensors of different ranks cannot be batched")
    widest = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for v in values:
        pad = [p for d in reversed(range(1, v.dim())) for p in (0, widest[d - 1] - v.shape[d])]
        padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
    return torch.cat(padded, dim=0)


def collate(samples: list[Prepared], pad_token_id: int, padding_side: str = "right") -> tuple[dict, torch.Tensor]:
    """Pad per-token tensors to the longest sample (on the right, or the left); stack image
    tensors."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    seq = max(s.length for s in samples)
    place = [slice(0, s.length) if padding_side == "right" else slice(seq - s.length, seq) for s in samples]
    batch: dict = {}
    for key, first in samples[0].inputs.items():
        values = [s.inputs[key] for s in samples]
        if _per_token(key, first, samples[0].length):
            fill = pad_token_id if key == "input_ids" else 0
            padded = torch.full((len(samples), seq), fill, dtype=first.dtype)
            for row, v in enumerate(values):
                padded[row, place[row]] = v[0]
            batch[key] = padded
        elif isinstance(first, torch.Tensor):
            batch[key] = _stack_images(values)
    instruction = torch.zeros(len(samples), seq, dtype=torch.bool)
    for row, s in enumerate(samples):
        instruction[row, place[row]] = s.instruction
    return batch, instruction


class LengthBatcher:
    """Groups prepared samples into batches of similar length, to cut padding.

    Samples are held until `window_batches` batches' worth have arrived; then the window is
    sorted by length and cut into batches. `flush()` cuts what is left at the end."""

    def __init__(self, batch_size: int, window_batches: int = 8):
        self.batch_size, self.window = batch_size, batch_size * window_batches
        self.held: list[Prepared] = []

    def push(self, sample: Prepared) -> list[list[Prepared]]:
        self.held.append(sample)
        return self.flush() if len(self.held) >= self.window else []

    def flush(self) -> list[list[Prepared]]:
        held, self.held = sorted(self.held, key=lambda s: s.length), []
        return [held[lo : lo + self.batch_size] for lo in range(0, len(held), self.batch_size)]
