"""The `scalselect` command: extract, score, select, run, compare, report, info, demo.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import options
from .atomic import is_stream, write_json
from .errors import InputError, first_line
from .options import ScoreOptions


def _summary_path(out: Path, kind: str = "summary") -> Path | None:
    """scores.jsonl -> scores.summary.json (beside the output); None for a stream."""
    return None if is_stream(out) else out.with_name(f"{out.stem}.{kind}.json")


def _refuse_overwrite(outputs: list[Path | None], inputs: list[Path]) -> None:
    """An output must never replace one of the inputs it is computed from."""
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for out in outputs:
        if out is None or is_stream(out):
            continue
        target = out.resolve()
        if target in resolved or any(r.is_dir() and r in target.parents for r in resolved):
            raise InputError(f"output {out} would overwrite an input; choose another --out")


def _messages_for(out) -> contextlib.AbstractContextManager:
    """Where the command's messages go: stderr when its output is a stream (`-`, /dev/stdout),
    so that they do not mix into it."""
    return contextlib.redirect_stdout(sys.stderr) if out is not None and is_stream(out) else contextlib.nullcontext()


def _on_rank0(comm, out, work):
    """work() by rank 0 alone under torchrun (every rank gets its result), its messages kept
    out of `out` where that is a stream."""
    with _messages_for(out):
        return comm.on_rank0(work)


def _write_json(path: Path | None, obj) -> None:
    if path is not None:
        write_json(path, obj)


def _score_options(args) -> ScoreOptions:
    return ScoreOptions(
        energy=args.energy,
        device=args.device,
        standardize=getattr(args, "standardize", False),
        l2_normalize=getattr(args, "l2_normalize", False),
        chunk_rows=getattr(args, "chunk_rows", None),
        method=args.method,
        sketch_size=args.sketch_size,
        seed=args.seed,
        pilot_rows=args.pilot_rows,
    ).check()


def _score(args) -> dict:
    out = options.output_file(args.out)
    return score_command(args.input, out, _score_options(args), args.comm, quiet=args.quiet)


def score_command(source: Path, out: Path, opts: ScoreOptions, comm, quiet: bool = False) -> dict:
    """Under torchrun every rank scores its share of the store's shards; rank 0 writes."""
    from .scoring import gather_result, leverage_scores

    _refuse_overwrite([out, _summary_path(out)], [source])
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # said below, on one line, from the summary
        warnings.filterwarnings("ignore", message="scalselect: the sketch")
        result = leverage_scores(source, **dataclasses.asdict(opts), progress=not quiet, comm=comm)
    result = gather_result(result, comm)
    return _on_rank0(comm, out, lambda: _write_scores(source, out, result, t0))


def _write_scores(source: Path, out: Path, result, t0: float) -> dict:
    from .select import write_scores

    write_scores(out, result.sample_ids, result.scores)
    summary = {"input": str(source), "scores": str(out), **result.summary()}
    summary["timings_s"]["total"] = time.perf_counter() - t0
    summary_path = _summary_path(out)
    _write_json(summary_path, summary)
    sv = result.singular_values
    lead = ", ".join(f"{v:.4g}" for v in sv[:5]) + (", ..." if len(sv) > 5 else "")
    print(
        f"scored {len(result.scores)} samples of dim {result.dim}: k={result.k} "
        f"(captured energy {result.captured_energy:.4f}), sigma = [{lead}]"
    )
    if result.method == "sketch":
        sk = result.sketch
        said = (
            f"estimated score error {sk['score_error_estimate']:.2%}"
            if sk.get("score_error_estimate") is not None
            else f"no holdout; energy outside the sketch {sk['residual_energy']:.1e}"
        )
        print(
            f"method: sketch of size {sk['sketch_size']}, {said} "
            f"({'certified' if sk['certified'] else 'not certified'}; the bound is {sk['certify_error']:.0%})"
        )
    elif "auto_choice" in result.sketch:
        print(f"method: {result.sketch['auto_choice']}")
    for text in result.warnings():
        print(f"warning: {text}", file=sys.stderr)
    if result.excluded:
        shown = ", ".join(repr(i) for i in result.excluded[:5]) + (", ..." if len(result.excluded) > 5 else "")
        where = f"; their ids are in {summary_path}" if summary_path else ""
        print(f"note: left out {len(result.excluded)} rows holding NaN or inf ({shown}){where}")
    written = f"{out} and {summary_path}" if summary_path else str(out)
    print(f"wrote {written} in {summary['timings_s']['total']:.2f} s")
    return summary


def _select(args) -> dict:
    opts = options.SelectOptions(
        method=args.method,
        seed=args.seed,
        stratify_by=args.stratify_by,
        shares=_read_shares(args.shares),
        store=args.store if args.method == "cluster" else None,
        clusters=args.clusters,
    ).check()
    out = options.output_file(args.out, folder=True)  # the subset of a save_to_disk pool is a folder
    return select_command(args.data, args.scores, args.budget, out, args.comm, opts)


def select_command(data: Path, scores: Path, budget, out: Path, comm, opts: options.SelectOptions) -> dict:
    """Rank 0 writes the subset that `opts` picks."""
    return _on_rank0(comm, out, lambda: _write_subset(data, scores, budget, out, dict(vars(opts))))


def _write_subset(data: Path, scores: Path, budget, out: Path, method: dict) -> dict:
    from .data import read_pool
    from .select import read_scores, select_subset

    _refuse_overwrite([out, _summary_path(out, "selection")], [data, scores])
    pool = read_pool(data)
    ids, values = read_scores(scores)
    summary = select_subset(pool, ids, values, budget, out, **method)
    _write_json(_summary_path(out, "selection"), summary)
    print(
        f"selected {summary['selected']} of {summary['scored']} scored samples by {summary['method']} "
        f"({summary['format']}) -> {out}"
    )
    if "strata" in summary:
        print(f"{summary['strata']['by']:<16}eligible  target  subset")
        for name, row in summary["strata"]["groups"].items():
            print(f"{name:<16}{row['eligible']:>8}{row['target']:>8.1f}{row['subset']:>8}")
    if summary["unscored_in_pool"]:
        print(f"note: {summary['unscored_in_pool']} pool samples had no score and were not eligible")
    return summary


def _read_shares(path) -> dict | None:
    """A share table {"source": share, ...} (any numbers >= 0; they are normalised)."""
    if path is None:
        return None
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"--shares {path}: not a readable JSON object ({exc})") from None
    return options.share_table(table, f"--shares {path}")


def _extract_options(args, **sketch):
    from .pipeline import ExtractOptions

    return ExtractOptions(
        tau=args.tau,
        max_length=args.max_length,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        shard_rows=args.shard_rows,
        resume=args.resume,
        trust_remote_code=args.trust_remote_code,
        allow_outside_root=args.allow_outside_root,
        progress=not args.quiet,
        system_prompt=args.system_prompt,
        layer=args.layer,
        chat_template=None if args.chat_template is None else options.chat_template(args.chat_template),
        **sketch,
    ).check()


def _extract(args) -> dict:
    return extract_command(
        args.model, args.data, args.image_root, options.output_dir(args.out), _extract_options(args), args.comm
    )


def extract_command(model: Path, data: Path, image_root, out: Path, opts, comm) -> dict:
    from .pipeline import extract_store

    _refuse_overwrite([out], [data, model])
    summary = extract_store(model, data, image_root, out, opts, comm)
    reasons = ", ".join(f"{n} {r}" for r, n in summary["skipped_by_reason"].items())
    counts = f"{summary['rows']} vectors, {summary['skipped']} skipped{f' ({reasons})' if reasons else ''}"
    if summary.get("already_complete"):
        print(f"{out} is already complete ({counts}); nothing to extract")
        return summary
    print(
        f"extracted {counts} -> {out}  [{summary['processed_this_run']} samples in "
        f"{summary['seconds']:.1f} s on {summary['device']}, {summary['dtype']}]"
    )
    if summary["skipped"]:
        print(f"skipped samples and their reasons: {summary['skipped_file']}")
    return summary


def _run(args) -> dict:
    """extract + score + select into one folder. Every option is checked before the extraction."""
    from .data import subset_name
    from .select import parse_budget

    out_dir = options.output_dir(args.out_dir, "--out-dir")
    store, scores = out_dir / ("sketch" if args.no_store else "store"), out_dir / "scores.jsonl"
    if args.no_store and args.method == "exact":
        raise InputError("--no-store keeps no vectors for the exact engine; use --method sketch or auto")
    scoring = _score_options(args)
    extraction = _extract_options(
        args,
        no_store=args.no_store,
        sketch_size=args.sketch_size,
        sketch_seed=args.seed,
        sketch_energy=args.energy,
        sketch_pilot_rows=args.pilot_rows,
    )
    subset = out_dir / subset_name(args.data)
    _refuse_overwrite([out_dir], [args.data, args.model])
    parse_budget(args.budget, 1 << 62)  # its form, now: not after hours of extraction
    extracted = extract_command(args.model, args.data, args.image_root, store, extraction, args.comm)
    scored = score_command(store, scores, scoring, args.comm, quiet=args.quiet)
    selected = select_command(args.data, scores, args.budget, subset, args.comm, options.SelectOptions())
    return {
        "store": str(store),
        "scores": str(scores),
        "subset": str(subset),
        "extract": extracted,
        "score": scored,
        "select": selected,
    }


def _compare(args) -> dict:
    return _on_rank0(args.comm, args.out, lambda: _write_comparison(args))


def _write_comparison(args) -> dict:
    from .compare import COVERAGE_SAMPLE, compare_methods, table
    from .data import read_pool
    from .select import read_scores

    methods = options.method_list(args.methods)
    out = None if args.out is None else options.output_file(args.out)
    _refuse_overwrite([out], [args.data, args.scores, args.store])
    pool = read_pool(args.data)
    ids, scores = read_scores(args.scores)
    report = compare_methods(
        pool,
        ids,
        scores,
        args.store,
        args.budget,
        methods,
        seed=args.seed,
        energy=args.energy,
        source_by=args.source_by,
        clusters=args.clusters,
    )
    report |= {"store": str(args.store), "scores": str(args.scores), "pool": str(args.data), "budget": args.budget}
    print(
        f"budget {args.budget} of {report['eligible']} scored samples; k = {report['k']} at energy "
        f"{args.energy}; coverage over {min(report['eligible'], COVERAGE_SAMPLE)} pool vectors; sources by {args.source_by}"
    )
    print(table(report))
    if out is not None:
        write_json(out, report)
        print(f"wrote {out}")
    return report


def _report(args) -> dict:
    return _on_rank0(args.comm, None, lambda: _write_report(args))


def _write_report(args) -> dict:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError('the report needs matplotlib: pip install "scalselect[report]"') from None
    from .report import build_report

    out = options.output_dir(args.out)
    _refuse_overwrite([out], [args.store, args.scores])
    done = build_report(
        args.store,
        args.scores,
        out,
        subset=args.subset,
        data=args.data,
        image_root=args.image_root,
        source_field=args.source_field,
        seed=options.seed(args.seed),
        compare=args.compare,
    )
    print(f"wrote {', '.join(done['files'])} in {done['out']} (open report.html in a browser; it works offline)")
    return done


def _assemble_llava(args) -> dict:
    from .models.assemble import assemble_llava

    out = options.output_dir(args.out)
    _refuse_overwrite([out], [args.llm, args.vision, args.projector])
    assemble_llava(args.llm, args.vision, args.projector, out, vision_feature_layer=args.vision_feature_layer)
    print(f"assembled a LLaVA checkpoint -> {out} (extract and run take it as --model)")
    return {"out": str(out)}


def _info(args) -> dict:
    from . import info

    facts = info()
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        for key, value in facts.items():
            print(f"{key}: {value}")
    return facts


class CheckFailed(Exception):
    """The command ran, and what it checks did not hold (exit code 1)."""


def _bench(args) -> dict:
    from .bench import disagreeing, run_bench, table

    out = options.output_file(args.json, "--json") if args.json is not None else None
    device = options.resolve_device(args.device)
    with _messages_for(out):
        try:
            report = run_bench(device, args.quick, lambda step: print(f"bench: {step} ...", file=sys.stderr))
        except RuntimeError as exc:  # a kernel that failed on this machine (a launch, its memory)
            raise CheckFailed(f"{exc.__class__.__name__}: {first_line(exc)}") from None
        print(table(report))
        if out is not None:
            _write_json(out, report)
            print(f"wrote {out}")
    bad = disagreeing(report)
    if bad:
        raise CheckFailed(f"{len(bad)} result(s) beyond their bounds: {'; '.join(bad)}")
    return report


def _demo(args) -> dict:
    from collections import Counter

    from .data import read_pool
    from .demo import SOURCES, prepare_demo
    from .select import read_scores

    options.count(args.n, "--n", 50)
    demo = prepare_demo(options.output_dir(args.out), n=args.n)
    print(f"demo pool: {demo['pool']} ({args.n} samples + 2 unusable ones); tiny random LLaVA checkpoint: {demo['model']}")
    run_args = build_parser().parse_args(
        [
            "run",
            "--model",
            str(demo["model"]),
            "--data",
            str(demo["pool"]),
            "--image-root",
            str(demo["images"]),
            "--budget",
            args.budget,
            "--out-dir",
            str(demo["run"]),
            "--device",
            args.device,
            *(["--quiet"] if args.quiet else []),
        ]
    )
    run_args.comm = args.comm
    result = _run(run_args)
    source = lambda sample_id: str(sample_id).split("-")[0]  # noqa: E731  ids are "<source>-<n>"
    ids, scores = read_scores(result["scores"])
    pool = Counter(source(i) for i in ids)
    subset = Counter(source(i) for i in read_pool(result["subset"]).ids)
    print("source     pool  subset")
    for name in SOURCES:
        print(f"{name:<9}{pool[name]:>6}{subset[name]:>8}")
    print("highest scores: " + ", ".join(f"{i} ({s:.3g})" for i, s in zip(ids[:3], scores[:3])))
    print(f"subset: {result['subset']}\nscores: {result['scores']}\nstore:  {result['store']}")
    return result


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_path, required=True, help="checkpoint directory (Hugging Face format)")
    p.add_argument("--data", type=_path, required=True, help="the pool: LLaVA or ShareGPT, JSON or JSONL")
    p.add_argument(
        "--image-root",
        type=_path,
        default=None,
        help="folder the pool's image paths are relative to (default: the current folder)",
    )
    p.add_argument("--tau", type=float, default=0.9, help="share of attention mass whose vision tokens are kept (default 0.9)")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per sample, as in training (default 2048)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward (default 8)")
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers decoding images (default: one per core but one, at most 8)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="auto, bfloat16, float16 or float32 (default: bfloat16 on a GPU that has it, else float32)",
    )
    p.add_argument("--store-dtype", default="float16", help="float16 or float32 (default float16)")
    p.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help="samples per store part (default 4096; with --no-store at least 4 x the model's width)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted extraction")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run Python code shipped with the checkpoint (off by default)"
    )
    p.add_argument("--allow-outside-root", action="store_true", help="allow absolute image paths and paths leaving --image-root")
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system turn for samples without one, as your trainer adds it (e.g. its template's default)",
    )
    p.add_argument(
        "--chat-template",
        type=_path,
        default=None,
        help="Jinja chat template file (or a JSON file with a chat_template string) in place of "
        "the checkpoint's: the one your trainer renders with",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="decoder layer whose attention and output make the vectors (default: the first "
        "with softmax attention, 0 for most models)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_dist_timeout(p)


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=options.SCORE_METHODS,
        default="auto",
        help="exact: two passes over the vectors, O(N D^2); sketch: one pass, O(N D l), with an "
        "error estimate; auto (default): the sketch where it is 2x cheaper and certifies its "
        "accuracy, else exact",
    )
    p.add_argument(
        "--sketch-size", type=int, default=None, help="columns l of the sketch (default: chosen from a pilot sample's spectrum)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sketch's pilot sample and test matrix (default 0)")
    p.add_argument(
        "--pilot-rows",
        type=int,
        default=options.PILOT_ROWS,
        help=f"rows sampled to plan the sketch: its directions and size (default {options.PILOT_ROWS})",
    )


def _add_dist_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=options.DEFAULT_TIMEOUT_MINUTES,
        help=f"under torchrun: minutes a rank waits for the others before failing (default {options.DEFAULT_TIMEOUT_MINUTES:g})",
    )


def _path(text: str) -> Path:
    """A path argument; an empty one is an error (Path("") would be the current folder)."""
    if text == "":
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="scalselect", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"scalselect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="importance scores of every sample of a representation matrix")
    p.add_argument("input", type=_path, help="store directory, .npy, or all_representations.npz")
    p.add_argument("--out", type=_path, required=True, help="scores JSONL to write (highest first)")
    p.add_argument("--energy", type=float, default=0.9, help="share of energy the kept subspace holds (default 0.9)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--standardize", action="store_true", help="divide centred columns by their std (ddof 0)")
    p.add_argument(
        "--l2-normalize", action="store_true", help="then scale each row to unit length, decomposed as it is (exact engine)"
    )
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per streamed chunk")
    _add_method_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_dist_timeout(p)
    p.set_defaults(run=_score)

    p = sub.add_parser("select", help="write the top-scored samples of a pool in its own format")
    p.add_argument("--scores", type=_path, required=True, help="scores JSONL from `scalselect score`")
    p.add_argument("--data", type=_path, required=True, help="the pool: LLaVA or ShareGPT, JSON or JSONL")
    p.add_argument("--budget", required=True, help="how many to keep: a count (100000) or a share (16%%)")
    p.add_argument("--out", type=_path, required=True, help="subset file to write")
    p.add_argument(
        "--method",
        choices=options.SELECT_METHODS,
        default="scalselect",
        help="scalselect (default): the highest scores; baselines to compare with: random "
        "(seeded), length (longest conversations), cluster (k-means on the vectors of "
        "--store, an equal share per cluster)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random and cluster (default 0)")
    p.add_argument(
        "--stratify-by",
        default=None,
        help="keep each source's share: a record field, or image-folder (the first folder "
        "of the image path, as coco/ in LLaVA-665K)",
    )
    p.add_argument(
        "--shares",
        type=_path,
        default=None,
        help='with --stratify-by: a JSON share table {"coco": 0.4, ...} instead of the pool\'s shares',
    )
    p.add_argument("--store", type=_path, default=None, help="the store the scores came from (--method cluster)")
    p.add_argument("--clusters", type=int, default=100, help="k of --method cluster (default 100)")
    p.set_defaults(run=_select)

    p = sub.add_parser("compare", help="training-free quality figures of several selection methods' subsets")
    p.add_argument("--store", type=_path, required=True, help="the store the scores came from")
    p.add_argument("--scores", type=_path, required=True, help="scores JSONL from `scalselect score`")
    p.add_argument("--data", type=_path, required=True, help="the pool")
    p.add_argument("--budget", required=True, help="a count (100000) or a share (16%%)")
    p.add_argument(
        "--methods", default="scalselect,random,length,cluster", help="comma-separated (default scalselect,random,length,cluster)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random, cluster and the coverage sample")
    p.add_argument("--energy", type=float, default=0.9, help="the energy that sets k (default 0.9)")
    p.add_argument(
        "--source-by",
        default="image-folder",
        help="a record field, or image-folder (default): the sources of the balance figures",
    )
    p.add_argument("--clusters", type=int, default=100, help="k of the cluster method (default 100)")
    p.add_argument("--out", type=_path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=_compare)

    p = sub.add_parser("report", help="PNG plots and a self-contained HTML page of a selection")
    p.add_argument("--store", type=_path, required=True, help="the store the scores came from")
    p.add_argument("--scores", type=_path, required=True, help="scores JSONL from `scalselect score`")
    p.add_argument("--subset", type=_path, default=None, help="the subset `select` wrote (marks the cut)")
    p.add_argument("--data", type=_path, default=None, help="the pool (default: the one in the store's manifest)")
    p.add_argument("--image-root", type=_path, default=None, help="for the thumbnails (default: the one in the store's manifest)")
    p.add_argument(
        "--source-field", default=None, help="record field naming each sample's source (default: the image's first folder)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the spectrum's row sample on large stores")
    p.add_argument("--compare", type=_path, default=None, help="JSON of `scalselect compare --out`, shown as a table")
    p.add_argument("--out", type=_path, required=True, help="folder for the PNGs and report.html")
    p.set_defaults(run=_report)

    p = sub.add_parser("extract", help="one vector per pool sample from the model's first softmax-attention decoder layer")
    _add_extract_args(p)
    p.add_argument("--out", type=_path, required=True, help="store directory to write")
    p.set_defaults(run=_extract)

    p = sub.add_parser("run", help="extract + score + select: the subset of a pool for a model")
    _add_extract_args(p)
    p.add_argument("--budget", required=True, help="how many to keep: a count (100000) or a share (16%%)")
    p.add_argument("--out-dir", type=_path, required=True, help="folder for store/, scores.jsonl and the subset")
    p.add_argument("--energy", type=float, default=0.9, help="share of energy the kept subspace holds (default 0.9)")
    _add_method_args(p)
    p.add_argument(
        "--no-store",
        action="store_true",
        help="do not store the N x D vectors: extraction feeds a sketch (l numbers per sample "
        "and its sums, checkpointed with every part; --resume works) that is then scored",
    )
    p.set_defaults(run=_run)

    p = sub.add_parser(
        "assemble-llava",
        help="one LLaVA-1.5 checkpoint from a base LLM, a CLIP tower and a "
        "stage-1 projector: the model before instruction tuning",
    )
    p.add_argument("--llm", type=_path, required=True, help="the base LLM (a Hugging Face causal LM, e.g. Vicuna)")
    p.add_argument("--vision", type=_path, required=True, help="the CLIP vision tower (Hugging Face CLIP checkpoint)")
    p.add_argument(
        "--projector", type=_path, required=True, help="stage-1 projector: mm_projector.bin (tensors only) or .safetensors"
    )
    p.add_argument("--out", type=_path, required=True, help="new folder for the checkpoint")
    p.add_argument(
        "--vision-feature-layer", type=int, default=-2, help="CLIP layer whose features the projector takes (LLaVA-1.5: -2)"
    )
    p.set_defaults(run=_assemble_llava)

    p = sub.add_parser("info", help="version, compiled backends, CUDA architectures, GPU")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser(
        "bench", help="each native kernel vs its PyTorch twin, scoring vs the reference method, extraction vs the reference way"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU when one is usable), cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="a narrower scoring matrix and fewer samples (about a minute on a CPU)")
    p.add_argument("--json", type=_path, default=None, help="also write the report as JSON to this file")
    p.set_defaults(run=_bench)

    p = sub.add_parser("demo", help="offline demo: a generated pool and a tiny random LLaVA, through `run`")
    p.add_argument(
        "--out-dir",
        "--out",
        dest="out",
        type=_path,
        default=Path("scalselect-demo"),
        help="folder for its files, as run's --out-dir (--out: the same)",
    )
    p.add_argument("--n", type=int, default=600, help="samples in the generated pool (default 600)")
    p.add_argument("--budget", default="16%", help="how many to keep (default 16%%)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_demo)
    return parser


def _say_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on one line of stderr, without the code location."""
    print(f"warning: {str(message).removeprefix('scalselect: ')}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    """The message on one line, whatever the paths and values in it hold."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    from .distributed import RankFailure, context

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a malformed command line (said on one line)
        return exc.code if isinstance(exc.code, int) else 2
    name = f"scalselect {args.command}"
    for stream in (sys.stdout, sys.stderr):  # paths and ids that are not valid UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        timeout = options.minutes(getattr(args, "dist_timeout", options.DEFAULT_TIMEOUT_MINUTES))
        with warnings.catch_warnings(), context(timeout) as comm:
            args.comm = comm
            warnings.showwarning = _say_warning
            if comm.active:
                name += f" [rank {comm.rank} of {comm.world}]"
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull if not comm.is_main else sys.stdout):
                args.run(args)  # under torchrun, rank 0 speaks for all
    except InputError as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, RecursionError) as exc:  # unreadable / unwritable paths, absurd nesting
        print(f"{name}: error: {exc.__class__.__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (RankFailure, CheckFailed) as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
