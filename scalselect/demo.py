"""The offline demo: a generated pool and a tiny random LLaVA checkpoint, through `scalselect run`.

Nothing is downloaded. The pool mimics LLaVA-665K's shape: images from a few sources (coco,
gqa, ocr_vqa, textvqa, vg), each with its own look, multi-turn conversations, some samples with
two images, one without an image and one with a missing file (both skipped, with reasons). The
checkpoint's weights are random, so the scores only reflect what the inputs look like: the demo
shows the whole path and its outputs, not which data is worth training on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .atomic import write_json
from .errors import InputError

SOURCES = ("coco", "gqa", "ocr_vqa", "textvqa", "vg")
MARKER = ".scalselect-demo"
_QUESTIONS = {
    "coco": ["What is shown in the image?", "Describe the picture in detail.", "What colour is the sky?"],
    "gqa": ["Is the cat on the left of the sofa?", "How many dogs are there?", "What is next to the window?"],
    "ocr_vqa": ["Who wrote this book?", "What is the title of this book?", "Is this a cook book?"],
    "textvqa": ["Read the text on the sign.", "What number is on the bus?", "What does the sign say?"],
    "vg": ["What is the man holding?", "Where is the red car?", "What is on the table?"],
}
_ANSWERS = [
    "Yes.",
    "No, it is not.",
    "There are 3 apples and 12 oranges.",
    "A cat sits on a red sofa.",
    "The answer is 7.",
    "Two dogs next to a window.",
]


def _image(source: str, rng: np.random.Generator):
    """A small RGB image whose look depends on its source."""
    from PIL import Image

    h, w = rng.integers(48, 96, size=2)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    if source == "coco":  # smooth colour gradients
        c = rng.random(3)
        img = np.stack([c[0] * x, c[1] * y, c[2] * (1 - x)], axis=-1)
    elif source == "gqa":  # a few colour blocks
        img = np.repeat(np.repeat(rng.random((3, 3, 3)), -(-h // 3), 0), -(-w // 3), 1)[:h, :w]
    elif source == "ocr_vqa":  # dark lines of "text" on a light page
        img = np.ones((h, w, 3)) * 0.9
        img[(np.arange(h) // 4) % 3 == 0] *= 0.2
    elif source == "textvqa":  # a sign: a bright rectangle on a darker scene
        img = np.ones((h, w, 3)) * rng.random(3) * 0.4
        img[h // 4 : h // 2, w // 4 : 3 * w // 4] = 1.0
    else:  # vg: stripes
        img = np.stack([np.sin(x * rng.integers(3, 9) * np.pi) ** 2] * 3, axis=-1) * rng.random(3)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8"))


def _conversation(source: str, rng: np.random.Generator, n_images: int) -> list[dict]:
    turns = []
    for t in range(int(rng.integers(1, 4))):
        question = str(rng.choice(_QUESTIONS[source]))
        if t == 0:
            question = "<image>\n" * n_images + question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": str(rng.choice(_ANSWERS))}]
    return turns


def prepare_demo(out: Path, n: int = 600, seed: int = 0) -> dict:
    """Write DIR/model (tiny LLaVA), DIR/images and DIR/pool.json; return their paths."""
    from .models.tiny import save_tiny_llava

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(f"{out} exists and is not a demo folder; choose another --out")
    for old in ("model", "images", "run"):  # a previous demo run's files
        shutil.rmtree(out / old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        source = SOURCES[int(rng.integers(len(SOURCES)))]
        sample_id = f"{source}-{i:05d}"
        n_images = 2 if rng.random() < 0.1 else 1
        names = [f"{source}/{i:05d}-{j}.png" for j in range(n_images)]
        for name in names:
            (out / "images" / source).mkdir(parents=True, exist_ok=True)
            _image(source, rng).save(out / "images" / name)
        record = {
            "id": sample_id,
            "image": names[0] if n_images == 1 else names,
            "conversations": _conversation(source, rng, n_images),
        }
        records.append(record)
    # what real pools hold too: a text-only sample and a missing image; both are skipped
    records.append(
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hello."}]}
    )
    records.append(
        {
            "id": "missing-image",
            "image": "coco/absent.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}],
        }
    )
    pool = out / "pool.json"
    write_json(pool, records)
    model = save_tiny_llava(out / "model", image_size=56, seed=seed)
    return {"pool": pool, "images": out / "images", "model": model, "run": out / "run"}
