"""token_roles with image tags side by side: one processor run of image tokens for several tags."""

import numpy as np
import pytest
import torch

from PIL import Image

from scalselect import InputError
from scalselect.models.roles import reply_char_spans, token_roles
from scalselect.models.tiny import LLAVA_CHAT_TEMPLATE, save_tiny_llava

# LLaVA's template with each image rendered as a bare <image>: two images give <image><image>.
ADJACENT_TEMPLATE = LLAVA_CHAT_TEMPLATE.replace("<image>\n", "<image>")
MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many dogs?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "There are 12 dogs."}]},
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(processor, text, spans, image token id, processor ids) for MESSAGES and two images."""
    from transformers import AutoProcessor

    path = save_tiny_llava(tmp_path_factory.mktemp("tiny-llava-adjacent"), image_size=28)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    processor.chat_template = ADJACENT_TEMPLATE
    render = lambda msgs, gen: processor.apply_chat_template(  # noqa: E731
        msgs, tokenize=False, add_generation_prompt=gen
    )
    text, spans = reply_char_spans(render, MESSAGES)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((33, 47, 3)) * 255).astype("uint8")) for _ in range(2)]
    ids = processor(images=images, text=[text], return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    return processor, text, spans, image_id, ids


def test_the_template_renders_adjacent_tags_that_tokenise_to_adjacent_image_tokens(case):
    processor, text, _, image_id, ids = case
    assert "<image><image>How many dogs?" in text
    text_ids = processor.tokenizer(text)["input_ids"]
    at = text_ids.index(image_id)
    assert text_ids[at : at + 3] == [image_id, image_id, text_ids[at + 2]] and text_ids[at + 2] != image_id
    # the processor expands both into one run of 2 x 4 image tokens
    where = (ids == image_id).nonzero().flatten()
    assert len(where) == 8 and bool((where.diff() == 1).all())


def test_token_roles_match_adjacent_image_tags_to_one_run(case):
    processor, text, spans, image_id, ids = case
    roles = token_roles(processor.tokenizer, text, spans, image_id, ids)
    assert torch.equal(roles.input_ids, ids)
    assert torch.equal(roles.vision, ids == image_id)
    reply = ~roles.vision & ~roles.instruction
    # " There" is one byte-level token: its leading space comes along with the reply
    assert processor.tokenizer.decode(ids[reply]).strip() == "There are 12 dogs."
    instruction = processor.tokenizer.decode(ids[roles.instruction])
    assert "How many dogs?" in instruction and "USER" in instruction and "dogs." not in instruction


@pytest.mark.parametrize("keep", [0, 1])
def test_token_roles_take_the_image_tokens_the_processor_made(case, keep):
    """Whatever run of image tokens the processor made (here 0 or 1 for two tags): those are the
    vision tokens, and every other token keeps its role."""
    processor, text, spans, image_id, ids = case
    full = token_roles(processor.tokenizer, text, spans, image_id, ids)
    where = (ids == image_id).nonzero().flatten()
    drop = torch.zeros_like(ids, dtype=torch.bool)
    drop[where[keep:]] = True
    roles = token_roles(processor.tokenizer, text, spans, image_id, ids[~drop])
    assert int(roles.vision.sum()) == keep
    assert torch.equal(roles.instruction, full.instruction[~drop])


def test_token_roles_refuse_a_processor_that_loses_a_reply_token(case):
    processor, text, spans, image_id, ids = case
    full = token_roles(processor.tokenizer, text, spans, image_id, ids)
    reply = (~full.vision & ~full.instruction).nonzero().flatten()
    for at in (int(reply[0]), int(reply[-1])):
        with pytest.raises(InputError, match="do not match"):
            token_roles(processor.tokenizer, text, spans, image_id, torch.cat([ids[:at], ids[at + 1 :]]))
    # a marker the processor inserts (a BOS, a row break) is an instruction token
    bos = torch.tensor([processor.tokenizer.bos_token_id])
    inserted = token_roles(processor.tokenizer, text, spans, image_id, torch.cat([bos, ids]))
    assert bool(inserted.instruction[0]) and torch.equal(inserted.instruction[1:], full.instruction)
