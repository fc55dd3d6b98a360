"""The paper's scoring script's way as a process: numpy only, everything in memory.

    python benchmarks/official_way.py all_representations.npz scores.jsonl [--standardize] [--l2-normalize]

Loads the npz (`representations`, `sample_ids`), takes the script's steps in the npz's dtype
(tests/official.py restates them: preprocessing, the thin SVD twice) and writes one
{sample_id, importance} line per sample, highest first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official import preprocess, scores  # noqa: E402  (the restatement the tests hold scalselect to)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz")
    parser.add_argument("out")
    parser.add_argument("--standardize", action="store_true")
    parser.add_argument("--l2-normalize", action="store_true")
    parser.add_argument("--energy", type=float, default=0.9)
    args = parser.parse_args()
    with np.load(args.npz) as data:
        matrix, ids = data["representations"], data["sample_ids"]
    importance, k = scores(preprocess(matrix, args.standardize, args.l2_normalize), args.energy)
    with open(args.out, "w", encoding="utf-8") as f:
        for i in np.argsort(importance)[::-1]:
            f.write(json.dumps({"sample_id": str(ids[i]), "importance": float(importance[i])}) + "\n")
    print(json.dumps({"k": k}))


if __name__ == "__main__":
    main()
