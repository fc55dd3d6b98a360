"""Helpers the test files share: writing pool files the way users have them."""

import json


def write_pool(path, records, container):
    """records as a JSON array ("json") or one object per line ("jsonl")."""
    with open(path, "w", encoding="utf-8") as f:
        if container == "json":
            json.dump(records, f, ensure_ascii=False, indent=2)
        else:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
