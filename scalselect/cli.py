"""The `scalselect` command: score, select, info, demo.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import InputError


def _summary_path(out: Path, kind: str = "summary") -> Path:
    """scores.jsonl -> scores.summary.json (beside the output)."""
    return out.with_name(f"{out.stem}.{kind}.json")


def _refuse_overwrite(outputs: list[Path], inputs: list[Path]) -> None:
    """An output must never replace one of the inputs it is computed from."""
    resolved = {Path(p).resolve() for p in inputs}
    for out in outputs:
        target = out.resolve()
        if target in resolved or any(r.is_dir() and r in target.parents for r in resolved):
            raise InputError(f"output {out} would overwrite an input; choose another --out")


def _write_json(path: Path, obj) -> None:
    from ._atomic import atomic_open

    with atomic_open(path) as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _score(args) -> dict:
    from .scoring import leverage_scores
    from .select import write_scores

    out = Path(args.out)
    _refuse_overwrite([out, _summary_path(out)], [args.input])
    t0 = time.perf_counter()
    result = leverage_scores(args.input, energy=args.energy, device=args.device,
                             standardize=args.standardize, l2_normalize=args.l2_normalize,
                             chunk_rows=args.chunk_rows, progress=not args.quiet)
    write_scores(out, result.sample_ids, result.scores)
    summary = {"input": str(args.input), "scores": str(out), **result.summary()}
    summary["timings_s"]["total"] = time.perf_counter() - t0
    _write_json(_summary_path(out), summary)
    sv = result.singular_values
    lead = ", ".join(f"{v:.4g}" for v in sv[:5]) + (", ..." if len(sv) > 5 else "")
    print(f"scored {result.num_rows} samples of dim {result.dim}: k={result.k} "
          f"(captured energy {result.captured_energy:.4f}), sigma = [{lead}]")
    print(f"wrote {out} and {_summary_path(out)} in {summary['timings_s']['total']:.2f} s")
    return summary


def _select(args) -> dict:
    from .data import read_pool
    from .select import read_scores, select_subset

    out = Path(args.out)
    _refuse_overwrite([out, _summary_path(out, "selection")], [args.data, args.scores])
    pool = read_pool(args.data)
    ids, scores = read_scores(args.scores)
    summary = select_subset(pool, ids, scores, args.budget, out)
    _write_json(_summary_path(out, "selection"), summary)
    print(f"selected {summary['selected']} of {summary['scored']} scored samples "
          f"({summary['format']}) -> {out}")
    if summary["unscored_in_pool"]:
        print(f"note: {summary['unscored_in_pool']} pool samples had no score and were not eligible")
    return summary


def _info(args) -> dict:
    from . import info

    facts = info()
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        for key, value in facts.items():
            print(f"{key}: {value}")
    return facts


def _demo(args) -> dict:
    from .data import read_pool
    from .demo import make_demo_pool
    from .select import read_scores

    out = Path(args.out)
    if args.n < 100 or args.dim < 64:
        raise InputError("the demo needs --n >= 100 and --dim >= 64")
    pool_path, store, rare = make_demo_pool(out, n=args.n, dim=args.dim)
    print(f"demo pool: {pool_path} ({args.n} samples, {len(rare)} with rare content), store: {store}")
    scores_path = out / "scores.jsonl"
    _score(argparse.Namespace(input=store, out=scores_path, energy=0.9, device=args.device,
                              standardize=False, l2_normalize=False, chunk_rows=None, quiet=True))
    subset = out / "subset.json"
    _select(argparse.Namespace(data=pool_path, scores=scores_path, budget=args.budget, out=subset))
    kept = {r["id"] for r in read_pool(subset).records}
    ids, _ = read_scores(scores_path)
    print(f"rare samples kept: {len(kept & rare)} of {len(rare)} "
          f"(a random subset of this size would keep about {len(rare) * len(kept) / len(ids):.0f})")
    return {"subset": str(subset), "rare_kept": len(kept & rare), "rare": len(rare)}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="scalselect", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"scalselect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="importance scores of every sample of a representation matrix")
    p.add_argument("input", type=Path, help="store directory, .npy, or all_representations.npz")
    p.add_argument("--out", type=Path, required=True, help="scores JSONL to write (highest first)")
    p.add_argument("--energy", type=float, default=0.9, help="share of energy the kept subspace holds (default 0.9)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--standardize", action="store_true", help="divide centred columns by their std")
    p.add_argument("--l2-normalize", action="store_true", help="scale rows to unit length first")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per streamed chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_score)

    p = sub.add_parser("select", help="write the top-scored samples of a pool in its own format")
    p.add_argument("--scores", type=Path, required=True, help="scores JSONL from `scalselect score`")
    p.add_argument("--data", type=Path, required=True, help="the pool: LLaVA or ShareGPT, JSON or JSONL")
    p.add_argument("--budget", required=True, help="how many to keep: a count (100000) or a share (16%%)")
    p.add_argument("--out", type=Path, required=True, help="subset file to write")
    p.set_defaults(run=_select)

    p = sub.add_parser("info", help="version, compiled backends, CUDA architectures, GPU")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser("demo", help="offline demo on a generated pool: score + select")
    p.add_argument("--out", type=Path, default=Path("scalselect-demo"), help="folder for its files")
    p.add_argument("--n", type=int, default=4000, help="samples in the generated pool")
    p.add_argument("--dim", type=int, default=256, help="representation width")
    p.add_argument("--budget", default="16%", help="how many to keep (default 16%%)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except InputError as exc:
        print(f"scalselect {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RecursionError) as exc:  # unreadable / unwritable paths, absurd nesting
        print(f"scalselect {args.command}: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scalselect {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
