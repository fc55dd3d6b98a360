"""The LLaVA families. LLaVA-1.5 (LlavaForConditionalGeneration: CLIP vision tower, projector,
Llama decoder) goes through the generic adapter; LLaVA-NeXT and LLaVA-OneVision put a learned
image_newline vector at the end of each row of an image's high-resolution grid, in positions of
the image placeholder token: those carry no image features, so they are markers, not vision
tokens."""

from .adapters import Adapter, register

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

for _class, _family in [
    ("LlavaNextForConditionalGeneration", "llava_next"),
    ("LlavaOnevisionForConditionalGeneration", "llava_onevision"),
]:
    register(_class, Adapter(family=_family, image_newline=lambda model: model.model.image_newline))
