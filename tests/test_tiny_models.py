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
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "A cat on a sofa."}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many dogs?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
         {"role": "user", "content": [{"type": "text", "text": "And cats?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "There are 3 cats."}]}],
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
