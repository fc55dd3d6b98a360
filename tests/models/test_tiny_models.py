"""Tiny random checkpoints of real architectures load like a user's checkpoint does."""

import numpy as np
import pytest
import torch

from PIL import Image

from scalselect.models.tiny import save_tiny_llava


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), image_size=28)


def test_tiny_llava_loads_through_auto_classes_and_runs(tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, local_files_only=True).eval()
    assert type(model).__name__ == "LlavaForConditionalGeneration"

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(40, 50), (90, 31)]]
    conversations = [
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat on a sofa."}]},
        ],
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many dogs?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
            {"role": "user", "content": [{"type": "text", "text": "And cats?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "There are 3 cats."}]},
        ],
    ]
    texts = [processor.apply_chat_template(c, tokenize=False) for c in conversations]
    assert texts[0] == "USER: <image>\nWhat is shown? ASSISTANT: A cat on a sofa.</s>"
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    image_id = model.config.image_token_id
    per_image = (28 // 14) ** 2  # patches; the CLS feature is dropped ("default" strategy)
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [per_image, per_image]
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    seq = batch["input_ids"].shape[1]
    assert out.hidden_states[1].shape == (2, seq, model.config.text_config.hidden_size)
    assert torch.isfinite(out.hidden_states[1]).all()
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads


def _render(processor):
    return lambda msgs, gen: processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _image(seed):
    return Image.fromarray((np.random.default_rng(seed).random((33, 47, 3)) * 255).astype("uint8"))


def test_token_roles_find_replies_by_character_offsets(tiny_llava):
    from transformers import AutoProcessor

    from scalselect.models.roles import reply_char_spans, token_roles

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Say yes. Is it a cat?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},  # also in the question
        {"role": "user", "content": [{"type": "text", "text": "How many dogs?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "There are 12 dogs."}]},
    ]
    text, spans = reply_char_spans(_render(processor), messages)
    assert [text[a:b] for a, b in spans] == ["yes", "There are 12 dogs."]
    assert text.index("yes") < spans[0][0]  # the earlier "yes" of the question is not taken
    ids = processor(images=[_image(1)], text=[text], return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    roles = token_roles(processor.tokenizer, text, spans, image_id, ids)
    assert int(roles.vision.sum()) == 4
    reply_ids = ids[~roles.vision & ~roles.instruction]
    decoded = processor.tokenizer.decode(reply_ids)
    assert "yes" in decoded and "12 dogs" in decoded and "USER" not in decoded and "How many" not in decoded
    instruction = processor.tokenizer.decode(ids[roles.instruction])
    assert "Be brief." in instruction and "How many dogs?" in instruction and "</s>" in instruction
    # the reply's standalone tokens are not a sub-sequence of the conversation's: searching them fails
    alone = processor.tokenizer("There are 12 dogs.", add_special_tokens=False)["input_ids"]
    seq = ids.tolist()
    assert not any(seq[i : i + len(alone)] == alone for i in range(len(seq)))


def test_token_roles_refuse_a_mismatched_processor_sequence(tiny_llava):
    from transformers import AutoProcessor

    from scalselect import InputError
    from scalselect.models.roles import reply_char_spans, token_roles

    processor = AutoProcessor.from_pretrained(tiny_llava, local_files_only=True)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
    ]
    text, spans = reply_char_spans(_render(processor), messages)
    ids = processor(images=[_image(2)], text=[text], return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    roles = token_roles(processor.tokenizer, text, spans, image_id, ids)
    last_reply = int((~roles.vision & ~roles.instruction).nonzero().max())
    with pytest.raises(InputError, match="do not match"):  # the processor lost a reply token
        token_roles(processor.tokenizer, text, spans, image_id, torch.cat([ids[:last_reply], ids[last_reply + 1 :]]))
    rewritten = lambda msgs, gen: _render(processor)(msgs, gen).replace("A dog.", "A DOG.")  # noqa: E731
    with pytest.raises(InputError, match="not where the chat template puts it"):
        reply_char_spans(rewritten, messages)
