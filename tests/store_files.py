"""Helpers the test files share: stores edited by hand, the way a user might repair or break one."""

import json
from pathlib import Path

from scalselect._atomic import file_check


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
