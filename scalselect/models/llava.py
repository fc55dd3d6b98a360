"""LLaVA-1.5 (LlavaForConditionalGeneration): CLIP vision tower, projector, Llama decoder."""

from . import Adapter, register

# LLaVA-1.5's conversation format (USER/ASSISTANT turns, images before the user text).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

register("LlavaForConditionalGeneration", Adapter(
    family="llava",
    decoder_layers=lambda model: model.model.language_model.layers,
    image_token_id=lambda model: model.config.image_token_id,
))
