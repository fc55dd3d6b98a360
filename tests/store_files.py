"""Helpers the test files share: stores edited by hand, the way a user might repair or break one."""

import json
from pathlib import Path

import numpy as np

from scalselect.atomic import file_check


def reseal(store) -> Path:
    """Record the current size and CRC-32 of every file of a complete store's parts in its
    manifest, as if the store had been written so: for tests of what readers do with contents
    that no writer makes (NaN rows, ids repeated over parts)."""
    store = Path(store)
    manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["shards"]:
        entry["check"] = {name: file_check(store / name) for name in entry["check"]}
    (store / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return store


def assert_whole_files(store) -> None:
    """Every file under a final name is complete: temporaries are dot-files, .npy files load,
    JSON and JSONL files parse."""
    for f in Path(store).iterdir():
        if f.name.startswith("."):
            continue
        if f.suffix == ".npy":
            np.load(f, allow_pickle=False)
        elif f.name.endswith(".json"):
            json.loads(f.read_text(encoding="utf-8"))
        elif f.suffix == ".jsonl":
            [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
