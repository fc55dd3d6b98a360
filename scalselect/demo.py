"""An offline demo: a synthetic pool and its representations, scored and subset end to end.

Until extraction from a real checkpoint lands, the representations are generated: most samples
repeat a few common "topics" (clusters in a low-dimensional subspace) and a few carry rare
directions. ScalSelect should keep the rare ones; the demo prints how many it kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ._atomic import atomic_open
from .errors import InputError
from .store import read_manifest, write_store

TOPICS = ("coco", "gqa", "ocr_vqa", "textvqa", "vg")


def make_demo_pool(out: Path, n: int = 4000, dim: int = 256, rare_share: float = 0.05,
                   seed: int = 0) -> tuple[Path, Path, set]:
    """Write DIR/pool.json (LLaVA layout) and DIR/store; return their paths and the rare ids."""
    rng = np.random.default_rng(seed)
    common_basis = np.linalg.qr(rng.standard_normal((dim, 16)))[0]
    centres = rng.standard_normal((len(TOPICS), 16)) * 4
    topic = rng.integers(0, len(TOPICS), n)
    x = (centres[topic] + rng.standard_normal((n, 16))) @ common_basis.T
    rare = rng.random(n) < rare_share
    rare_dirs = np.linalg.qr(rng.standard_normal((dim, 64)))[0]
    x[rare] += rng.standard_normal((int(rare.sum()), 64)) @ rare_dirs.T * 6
    x += rng.standard_normal((n, dim)) * 0.3 + 1.5  # noise and an offset the centring removes
    ids = [f"{TOPICS[t]}-{i:06d}" for i, t in enumerate(topic)]
    records = [{"id": sid, "image": f"{TOPICS[t]}/{i:06d}.jpg",
                "conversations": [{"from": "human", "value": f"<image>\nDescribe image {i}."},
                                  {"from": "gpt", "value": f"A {TOPICS[t]} picture."}]}
               for i, (sid, t) in enumerate(zip(ids, topic))]
    out.mkdir(parents=True, exist_ok=True)
    pool = out / "pool.json"
    with atomic_open(pool) as f:
        json.dump(records, f, indent=1)
    store = out / "store"
    if store.exists():  # a previous demo run: replace it, but never anything else
        if not read_manifest(store).get("meta", {}).get("demo"):
            raise InputError(f"{store} exists and is not a demo store; choose another --out")
        shutil.rmtree(store)
    write_store(store, x.astype(np.float32), ids, dtype="float16", shard_rows=1000,
                meta={"demo": True, "seed": seed})
    return pool, store, {sid for sid, r in zip(ids, rare) if r}
