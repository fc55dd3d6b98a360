"""Pool -> representation store: the extraction job behind `scalselect extract` and `run`.

DataLoader workers read and process samples (images decoded, chat rendered, token roles) while
the main process runs the model's fast path (up to the probed layer) on length-grouped batches
and commits the vectors to the store part by part. Every sample ends up either as a row or as a skip with its
reason; an interrupted job resumes from the committed parts.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import options
from .data import read_pool
from .data.images import SampleSkip, check_image_root
from .data.samples import LengthBatcher, SampleMaker, collate
from .distributed import Comm
from .errors import InputError, first_line
from .extract import UnsupportedModel, layer_probe, probe_vectors
from .models import check_layer, check_supported, first_softmax_layer, image_token_id
from .models.load import DTYPES, fingerprint, load_checkpoint, pick_dtype, read_config
from .options import resolve_device
from .scoring import sketch
from .stores import (
    MANIFEST,
    SKIPPED,
    Sink,
    StoreWriter,
    check_same_settings,
    damaged_parts,
    read_manifest,
    reopen_store,
    sketch_store,
)


@dataclass
class ExtractOptions:
    tau: float = 0.9
    max_length: int = 2048
    batch_size: int = 8
    workers: int | None = None  # DataLoader workers; None: one per core of this rank but one, at most 8
    device: str = "auto"
    dtype: str = "auto"  # compute dtype of the model
    store_dtype: str = "float16"
    shard_rows: int | None = None  # samples per part; None: 4,096 (no_store: at least 4 D, see _SketchStore.part_rows)
    resume: bool = False
    trust_remote_code: bool = False
    allow_outside_root: bool = False
    progress: bool = True
    kernel_backend: str = "auto"  # "torch": the PyTorch twins (benchmarks compare the two)
    no_store: bool = False  # feed a sketch store instead (`run --no-store`)
    sketch_size: int | None = None  # its size (None: from the pilot)
    sketch_seed: int = 0
    sketch_energy: float = 0.9  # the energy the pilot sizes the sketch for
    sketch_pilot_rows: int = sketch.PILOT_ROWS
    system_prompt: str | None = None  # the system turn of samples that have none (as the trainer adds it)
    chat_template: str | None = None  # a template in place of the checkpoint's (its text)
    layer: int | None = None  # decoder layer probed; None: the first with softmax attention

    def check(self) -> "ExtractOptions":
        options.share(self.tau, "--tau")
        if self.system_prompt is not None:
            options.text(self.system_prompt, "--system-prompt")
        if self.chat_template is not None:
            options.text(self.chat_template, "--chat-template")
        if self.layer is not None:
            options.count(self.layer, "--layer", 0)
        for name in ("max_length", "batch_size", "shard_rows"):
            if getattr(self, name) is not None:
                options.count(getattr(self, name), f"--{name.replace('_', '-')}")
        if self.workers is not None:
            options.count(self.workers, "--workers", 0, options.MAX_WORKERS)
        options.device(self.device)
        options.choice(self.dtype, ("auto", *DTYPES), "--dtype")
        if self.store_dtype == "bfloat16":
            raise InputError("--store-dtype bfloat16 cannot be stored in .npy; use float16 or float32")
        options.choice(self.store_dtype, ("float16", "float32"), "--store-dtype")
        options.choice(self.kernel_backend, options.BACKENDS, "kernel_backend")
        if self.no_store:  # what it plans the sketch with: the same rules as score's
            options.ScoreOptions(
                energy=self.sketch_energy,
                sketch_size=self.sketch_size,
                seed=self.sketch_seed,
                pilot_rows=self.sketch_pilot_rows,
                method="sketch",
            ).check()
        return self


def _skip(sample_id, reason: str, detail: str) -> dict:
    return {"sample_id": sample_id, "reason": reason, "detail": detail}


class PoolSamples(torch.utils.data.IterableDataset):
    """The Prepared samples at pool positions `positions` (or their skip records). Each
    DataLoader worker takes its share of deal(positions, workers, pool.block_rows), in order."""

    def __init__(self, pool, positions: np.ndarray, maker: SampleMaker):
        self.pool, self.positions, self.maker = pool, positions, maker

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        mine = self.positions if worker is None else deal(self.positions, worker.num_workers, self.pool.block_rows)[worker.id]
        return map(self.prepare, mine)

    def prepare(self, pos):
        pos = int(pos)
        sample_id = self.pool.ids[pos]
        try:
            return self.maker(self.pool.record(pos), self.pool.layout, sample_id)
        except SampleSkip as skip:
            return _skip(sample_id, skip.reason, skip.detail)
        except Exception as exc:  # one odd sample must not stop a job of millions
            return _skip(sample_id, "sample error", first_line(exc))


def deal(positions: np.ndarray, parts: int, block: int) -> list[np.ndarray]:
    """`positions` dealt out to `parts` readers (ranks, workers) `block` at a time: reader p
    gets blocks p, p + parts, ... in order. Whole blocks keep a Parquet row group with one reader
    (every reader taking every W-th sample decoded every row group); dealing them in turn
    spreads a pool sorted by source or size evenly. Blocks shrink to len // parts when there is
    less to share, so that every reader gets some. Shares never grow with p."""
    block = max(1, min(block, len(positions) // parts))
    turn = (np.arange(len(positions)) // block) % parts
    return [positions[turn == p] for p in range(parts)]


def _unbatched(item):
    return item


def _die_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader worker_init_fn: the worker is killed when the process that started it ends,
    however it ends (SIGKILL included), so that no worker outlives its job (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _worker_count(requested: int | None) -> int:
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores //= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: the node's ranks share them
    return max(0, min(8, cores - 1))  # the cores this rank may use, one left to the forward


def _versions() -> dict:
    import transformers

    from . import __version__

    return {"scalselect": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def extract_store(
    model_dir: str | os.PathLike,
    pool_path: str | os.PathLike,
    image_root: str | os.PathLike | None,
    out: str | os.PathLike,
    options: ExtractOptions | None = None,
    comm: Comm | None = None,
) -> dict:
    """Extract every sample of the pool into the store `out`; returns the store's summary.

    Everything cheap is checked before the model is loaded: options, pool, image root, the
    checkpoint's config, and the output (or, with resume, that it was made the same way).
    Under torchrun (`comm`), the samples still to do are dealt out to the W ranks in blocks
    (see deal); each rank runs on its own GPU.
    With options.no_store the vectors are not stored: `out` becomes a sketch store (see
    scalselect.scoring.sketch), which `leverage_scores` scores."""
    opts = options or ExtractOptions()
    comm = comm or Comm()
    opts.check()
    root = check_image_root(image_root)
    pool = read_pool(pool_path)
    device = resolve_device(opts.device)
    if comm.active and device.type == "cuda":
        device = comm.gpu()
    dtype = pick_dtype(opts.dtype, device)
    config = read_config(model_dir, opts.trust_remote_code)
    check_supported(config)
    layer = first_softmax_layer(config) if opts.layer is None else opts.layer
    check_layer(config, layer)
    out = Path(out)
    settings = {
        "model": str(Path(model_dir).resolve()),
        "model_fingerprint": fingerprint(model_dir),
        "architecture": (config.architectures or [config.model_type])[0],
        "pool": str(Path(pool_path).resolve()),
        "pool_sha256": pool.digest(),
        "pool_samples": len(pool),
        "image_root": str(root.resolve()),
        "tau": opts.tau,
        "max_length": opts.max_length,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "allow_outside_root": opts.allow_outside_root,
        "system_prompt": opts.system_prompt,
        "layer": layer,
        # the template's digest: a --resume with another one says so in one short line
        "chat_template_sha256": None
        if opts.chat_template is None
        else hashlib.sha256(opts.chat_template.encode("utf-8")).hexdigest(),
    }
    dim = int(config.get_text_config().hidden_size)
    output = (_SketchStore if opts.no_store else _VectorStore)(out, dim, opts, settings, comm)
    if opts.resume and (output.rows_dir / MANIFEST).exists():
        complete = _complete_store(output.rows_dir, output.made_with())
        # every byte by one process; under torchrun rank 0 checks the sizes (a full read could
        # outlast the group's timeout), and scoring checks every byte as it reads
        damaged = comm.on_rank0(lambda: damaged_parts(output.rows_dir, full=not comm.active))
        if not damaged:
            return {**complete, "store": str(out)}
        output.reopen(damaged)
    guard = output.claim()
    writer = output.writer()
    job = None
    try:
        loaded = load_checkpoint(
            model_dir,
            config,
            device,
            dtype,
            opts.trust_remote_code,
            opts.progress and comm.is_main,
            layer,
            check_processor=lambda p: _sample_maker(p, config, root, opts).check_template(),
        )
        extraction = _Extraction(loaded, pool, root, opts, device, dtype, comm, output.part_rows(), layer)
        t0 = time.perf_counter()
        writer, sink, replay, replay_positions = output.open(extraction)
        done = writer.done_ids | {pool.ids[p] for p in replay_positions}
        todo = np.fromiter((p for p, sid in enumerate(pool.ids) if sid not in done), np.int64)
        for part in replay:  # the pilot's vectors, extracted before the plan existed
            sink.add(*part)
        job = extraction.run(todo, sink, "extract")
        seconds = time.perf_counter() - t0
        processed = len(todo) + len(replay_positions)
        processor, model, adapter = loaded
        meta = {
            **settings,
            "chat_template": opts.chat_template,
            "family": adapter.family,
            "model_class": type(model).__name__,
            "versions": _versions(),
            "batch_size": opts.batch_size,
            "extract_seconds_last_run": seconds,
            "world_size_last_run": comm.world,
            "samples_per_second_last_run": processed / seconds if seconds > 0 else None,
            "mean_kept_vision_tokens_last_run": job.kept_tokens / max(1, job.rows_made),
        }
        writer.close(meta, expected=len(pool))
    except BaseException as exc:
        if writer is not None:
            writer.abandon()
        if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
            raise InputError(
                f"an image-loading worker died ({first_line(exc)}); in a container, give "
                "it more shared memory (docker --shm-size) or pass --workers 0; "
                "then --resume"
            ) from None
        raise
    finally:
        if guard is not None:
            guard.close()
    manifest = read_manifest(output.rows_dir)  # every rank's parts, for every rank
    summary = {
        "store": str(out),
        "rows": manifest["num_rows"],
        "skipped": manifest["num_skipped"],
        "skipped_by_reason": manifest["skipped_by_reason"],
        "processed_this_run": processed,
        "seconds": seconds,
        "device": str(device),
        "dtype": settings["compute_dtype"],
        "skipped_file": str(output.rows_dir / SKIPPED),
    }
    return summary


class _VectorStore:
    """Extraction's output by default: a store of the vectors themselves (scalselect.store)."""

    def __init__(self, out: Path, dim: int, opts: ExtractOptions, settings: dict, comm: Comm):
        self.out, self.rows_dir, self.dim, self.opts, self.settings, self.comm = out, out, dim, opts, settings, comm

    def made_with(self) -> dict:
        """What a complete store must have been made with, for --resume."""
        return {"dim": self.dim, "dtype": self.opts.store_dtype, **self.settings}

    def reopen(self, damaged: list) -> None:
        """A complete store with damaged parts: made unfinished again, so they are redone."""
        self.comm.on_rank0(lambda: reopen_store(self.rows_dir, self.dim, self.opts.store_dtype, self.settings))

    def claim(self):
        return None  # the writer locks the store

    def writer(self) -> StoreWriter:
        """Made (and the store locked and checked) before the model loads."""
        self.made = StoreWriter(
            self.out, self.dim, self.opts.store_dtype, settings=self.settings, resume=self.opts.resume, comm=self.comm
        )
        return self.made

    def part_rows(self) -> int:
        return self.opts.shard_rows or 4096

    def open(self, extraction: "_Extraction"):
        """(writer, sink, parts to replay, their pool positions): the writer is the sink."""
        return self.made, self.made, [], []


class _SketchStore:
    """`--no-store`: a sketch store (scalselect.scoring.sketch): a plan made from a pilot sample,
    then l numbers per sample and their sums, part by part."""

    def __init__(self, out: Path, dim: int, opts: ExtractOptions, settings: dict, comm: Comm):
        self.out, self.rows_dir, self.dim, self.opts, self.comm = out, out / sketch_store.SKETCH_ROWS, dim, opts, comm
        self.asked = {
            "sketch_size_asked": opts.sketch_size,
            "sketch_seed": opts.sketch_seed,
            "sketch_pilot_rows": opts.sketch_pilot_rows,
            "sketch_energy": opts.sketch_energy,
        }
        settings |= self.asked  # what the plan is made from: a resume must ask for the same
        self.settings = settings

    def made_with(self) -> dict:
        return self.settings

    def reopen(self, damaged: list) -> None:
        raise InputError(f"{self.rows_dir}: part {damaged[0]}; the sketch cannot be redone in place: extract into a new folder")

    def claim(self):
        """Rank 0: check the output and lock it (the lock file stays open while this job writes)."""
        return self.comm.together(lambda: sketch_store.claim(self.out, self.opts.resume), main_only=True)

    def writer(self):
        return None  # made with the plan, in open()

    def part_rows(self) -> int:
        """A sketch part's sidecar holds l x D float64 sums beside its l-wide rows, so its parts
        hold at least 4 D samples: the sums then add at most half of the rows' bytes."""
        return self.opts.shard_rows or max(4096, 4 * self.dim)

    def open(self, extraction: "_Extraction"):
        """(writer, sink, parts to replay, their pool positions): the plan read back (made with
        the same settings), or made from a pilot sample extracted now. Rank 0 plans from every
        rank's pilot rows; each rank replays its own pilot parts into the sink, so the pilot's
        positions are all done. The plan's digest goes into the settings, hence the manifest:
        scoring checks the plan against it."""
        opts, comm, pool, out, dim = self.opts, self.comm, extraction.pool, self.out, self.dim
        pilot = sketch.sample_rows(len(pool), opts.sketch_pilot_rows, opts.sketch_seed)
        replay, replay_positions = [], []
        if comm.broadcast_object(not (out / sketch_store.SKETCH_INFO).exists() if comm.is_main else None):
            collect = _Collect(dim)
            extraction.run(pilot, collect, "pilot")
            replay, replay_positions = collect.parts, pilot
            vectors = [part[0] for part in replay if len(part[0])]
            every = comm.gather_objects(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))

            def plan():
                rows = torch.from_numpy(np.concatenate(every).astype(np.float32))
                omega, shift, planned = sketch.plan_test_matrix(
                    rows,
                    energy=opts.sketch_energy,
                    standardize=False,
                    sketch_size=opts.sketch_size,
                    max_size=min(dim, len(pool)),
                    seed=opts.sketch_seed,
                    every_row=len(pool) <= opts.sketch_pilot_rows,
                )
                sketch_store.write_plan(out, omega, shift, {"plan": planned, "settings": self.asked})

            comm.together(plan, main_only=True)
        omega, shift, info = comm.on_rank0(lambda: self._own_plan())
        self.settings["sketch_plan"] = sketch_store.plan_digest(omega, shift)
        writer = StoreWriter(self.rows_dir, int(omega.shape[1]), "float32", settings=self.settings, resume=opts.resume, comm=comm)
        holdout = sketch.holdout_rows(len(pool), opts.sketch_pilot_rows, opts.sketch_seed)
        sink = sketch.SketchSink(
            writer,
            omega,
            shift,
            sketch_store.plan_scale(info),
            extraction.device,
            {pool.ids[p] for p in holdout},
            opts.kernel_backend,
        )
        return writer, sink, replay, replay_positions

    def _own_plan(self):
        """The plan in `out`, if it was made with the settings asked for now."""
        omega, shift, info = sketch_store.read_plan(self.out)
        check_same_settings(self.out, info.get("settings", {}), self.asked)
        return omega, shift, info


def _sample_maker(processor, config, root, opts: ExtractOptions) -> SampleMaker:
    return SampleMaker(
        processor, image_token_id(config), root, opts.max_length, opts.allow_outside_root, opts.system_prompt, opts.chat_template
    )


class _Extraction:
    """The loaded model and what it needs to turn pool positions into vectors for a sink."""

    def __init__(self, loaded, pool, root, opts: ExtractOptions, device, dtype, comm: Comm, part_rows: int, layer: int):
        processor, self.model, _ = loaded
        self.layer = layer
        self.part_rows = part_rows
        self.pool, self.opts, self.device, self.dtype, self.comm = pool, opts, device, dtype, comm
        self.maker = _sample_maker(processor, self.model.config, root, opts)
        pad_id = processor.tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else (processor.tokenizer.eos_token_id or 0)

    def run(self, positions: np.ndarray, sink: Sink, what: str) -> "BatchJob":
        """This rank's share of `positions` through the model into `sink`. On Ctrl-C the
        finished rows are committed first (kept for --resume)."""
        mine = deal(positions, self.comm.world, self.pool.block_rows)[self.comm.rank]  # same list on every rank
        workers = _worker_count(self.opts.workers)
        loader = torch.utils.data.DataLoader(
            PoolSamples(self.pool, mine, self.maker),
            batch_size=None,
            num_workers=workers,
            collate_fn=_unbatched,
            prefetch_factor=4 if workers else None,
            worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if workers else None,
        )
        batcher = LengthBatcher(self.opts.batch_size)
        desc = f"{what} (rank 0 of {self.comm.world})" if self.comm.active else what
        with (
            layer_probe(self.model, self.layer) as probe,
            tqdm(
                total=len(mine),
                unit="sample",
                disable=not (self.opts.progress and self.comm.is_main),
                desc=desc,
                dynamic_ncols=True,
                smoothing=0.1,
            ) as bar,
        ):
            job = BatchJob(self.model, probe, sink, self.opts, self.device, self.dtype, self.pad_id, bar, self.part_rows)
            try:
                for item in loader:
                    if isinstance(item, dict):
                        job.skip(item)
                        continue
                    for samples in batcher.push(item):
                        job.run(samples)
                for samples in batcher.flush():
                    job.run(samples)
            except KeyboardInterrupt:
                job.commit()
                raise
            job.commit()
        return job


class _Collect:
    """A sink that keeps the parts in memory (the sketch's pilot, before its plan exists)."""

    def __init__(self, dim: int):
        self.dim, self.parts = dim, []

    def add(self, vectors, ids, skipped=()) -> None:
        self.parts.append((vectors, list(ids), list(skipped)))


def _complete_store(out: Path, settings: dict) -> dict:
    """--resume on a finished store: nothing to do, if it was made the same way."""
    manifest = read_manifest(out)
    top, meta = {"dim": manifest.get("dim"), "dtype": manifest.get("dtype")}, manifest.get("meta", {})
    made = {k: top[k] if k in top else meta[k] for k in settings if k in top or k in meta}
    check_same_settings(out, made, settings)
    return {
        "store": str(out),
        "rows": manifest["num_rows"],
        "skipped": manifest.get("num_skipped", 0),
        "skipped_by_reason": manifest.get("skipped_by_reason", {}),
        "processed_this_run": 0,
        "seconds": 0.0,
        "already_complete": True,
        "skipped_file": str(out / SKIPPED),
    }


# Reasons that, when they hit every one of the first samples, mean the setup is wrong
# (image root, model, processor), not the data: stop early instead of skipping the whole pool.
_SETUP_REASONS = ("unreadable image", "sample error", "processor error", "forward error", "template mismatch")
_FAIL_FAST_AFTER = 100


class BatchJob:
    """The main process's side of an extraction: forwards batches, commits rows and skips."""

    def __init__(self, model, run, sink: Sink, opts: ExtractOptions, device, dtype, pad_id: int, bar, part_rows: int):
        self.model, self.run_probe, self.sink, self.opts = model, run, sink, opts
        self.device, self.dtype, self.pad_id, self.bar = device, dtype, pad_id, bar
        self.part_rows = part_rows
        self.ids: list = []
        self.rows: list = []
        self.skips: list[dict] = []
        self.rows_made = self.kept_tokens = self.setup_failures = self.skipped = 0

    def skip(self, record: dict) -> None:
        self.skips.append(record)
        self.skipped += 1
        self.bar.update(1)
        self.bar.set_postfix(skipped=self.skipped, refresh=False)
        if self.rows_made == 0 and record["reason"] in _SETUP_REASONS:
            self.setup_failures += 1
            if self.setup_failures >= _FAIL_FAST_AFTER:
                raise InputError(
                    f"the first {self.setup_failures} samples all failed "
                    f"(last: {record['reason']}: {record['detail']}); "
                    "check --image-root, the model and the pool"
                )

    def forward(self, samples: list):
        inputs, instruction = collate(samples, self.pad_id)
        inputs = {k: v.to(device=self.device, dtype=self.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        vectors, kept = probe_vectors(
            self.model, self.run_probe, inputs, instruction.to(self.device), self.opts.tau, self.opts.kernel_backend
        )
        return vectors.cpu().numpy().astype(self.opts.store_dtype), kept.cpu().tolist()

    def run(self, samples: list) -> None:
        try:
            stored, kept = self.forward(samples)
        except UnsupportedModel:  # the model, not a sample: no sample would do better
            raise
        except Exception as exc:  # out of memory, or one sample the model rejects
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(samples) > 1:  # find the culprit: every sample alone
                for sample in samples:
                    self.run([sample])
                return
            reason = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else "forward error"
            self.skip(_skip(samples[0].sample_id, reason, first_line(exc)))
            return
        finite = np.isfinite(stored).all(axis=1)
        for row, sample in enumerate(samples):
            if kept[row] == 0:
                self.skip(_skip(sample.sample_id, "no vision tokens", "the processor made none"))
            elif not finite[row]:
                self.skip(_skip(sample.sample_id, "non-finite vector", f"NaN or inf as {self.opts.store_dtype}"))
            else:
                self.ids.append(sample.sample_id)
                self.rows.append(stored[row])
                self.rows_made += 1
                self.kept_tokens += kept[row]
                self.bar.update(1)
        if len(self.ids) >= self.part_rows:
            self.commit()

    def commit(self) -> None:
        """Write the rows and skips gathered so far as one part of the store."""
        if not self.ids and not self.skips:
            return
        vectors = np.stack(self.rows) if self.rows else np.zeros((0, self.sink.dim), self.opts.store_dtype)
        self.sink.add(vectors, self.ids, self.skips)
        self.ids, self.rows, self.skips = [], [], []
