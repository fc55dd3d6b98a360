"""Other ways to pick a subset, to compare ScalSelect with, and per-source budgets.

`select --method`:
- scalselect: the highest importance scores;
- random: a seeded uniform draw;
- length: the longest conversations (characters of all turns);
- cluster: k-means on the vectors (scalselect.vectors), an equal share of the budget per cluster, seeded draws
  inside each.

`--stratify-by` gives each source its share of the eligible samples (or of a share table) and
takes the method's best inside each source. The eligible samples are those of the scores file
(they have vectors) whatever the method, so every method chooses from the same set.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath

import numpy as np

from .data.conversations import image_name, read_turns
from .data.layouts import LAYOUTS
from .errors import InputError

IMAGE_FOLDER = "image-folder"  # --stratify-by value: the first folder of the first image path


def source_of(record: dict, layout: str, by: str) -> str:
    """The source a record belongs to: the value of field `by`, or with IMAGE_FOLDER the first
    folder of its first image path (LLaVA-665K: coco, gqa, ocr_vqa, textvqa, vg)."""
    if by != IMAGE_FOLDER:
        value = record.get(by)
        return "(none)" if value is None else str(value)
    images = record.get(LAYOUTS[layout].images)
    first = (images[0] if images else None) if isinstance(images, list) else images
    if not first:
        return "(no image)"
    name = image_name(first)
    if name is None:
        return "(unnamed image)"  # embedded bytes without a path
    parts = PurePosixPath(name).parts
    return parts[0] if len(parts) > 1 else "(top level)"


def apportion(sizes: dict, budget: int, shares: dict | None = None) -> dict:
    """Quotas per source adding up to `budget`, by largest remainders: source s gets
    floor or ceil of budget x its weight (its share of `sizes`, or of the `shares` table), never
    more than it holds; what a source cannot take is shared out among the others the same way."""
    weights = {s: float((shares or sizes).get(s, 0)) for s in sizes}
    quotas, left, remaining = {s: 0 for s in sizes}, dict(sizes), budget
    while remaining > 0:
        open_ = sorted(s for s in sizes if left[s] > 0 and weights[s] > 0)
        if not open_:
            held = sum(sizes[s] for s in sizes if weights[s] > 0)
            raise InputError(f"the sources with a share hold {held} eligible samples, fewer than the budget of {budget}")
        total = sum(weights[s] for s in open_)
        exact = {s: remaining * weights[s] / total for s in open_}
        take = {s: min(left[s], math.floor(exact[s])) for s in open_}
        spare = remaining - sum(take.values())
        for s in sorted(open_, key=lambda s: (-(exact[s] - math.floor(exact[s])), s)):
            if spare and take[s] < left[s]:
                take[s] += 1
                spare -= 1
        for s in open_:
            quotas[s] += take[s]
            left[s] -= take[s]
        remaining -= sum(take.values())
    return quotas


def choose(ranking: np.ndarray, count: int, groups: list | None = None, quotas: dict | None = None) -> np.ndarray:
    """Indices of the `count` highest-ranked entries (ties: the earlier), or with `groups` the
    quotas[g] highest of each group g."""
    order = np.argsort(-np.asarray(ranking, dtype=np.float64), kind="stable")
    if groups is None:
        return np.sort(order[:count])
    taken = dict.fromkeys(quotas, 0)
    keep = []
    for i in order:
        g = groups[i]
        if taken[g] < quotas[g]:
            taken[g] += 1
            keep.append(i)
    return np.sort(np.asarray(keep, dtype=np.int64))


def random_ranking(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def conversation_length(record: dict, layout: str) -> int:
    """Characters of all turns; 0 for a record whose turns cannot be read."""
    try:
        return sum(len(text) for _, text in read_turns(record, layout))
    except InputError:
        return 0
