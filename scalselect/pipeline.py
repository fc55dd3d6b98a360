"""Pool -> representation store: the extraction job behind `scalselect extract` and `run`.

DataLoader workers read and process samples (images decoded, chat rendered, token roles) while
the main process runs the model's layer-0 fast path on length-grouped batches and commits the
vectors to the store part by part. Every sample ends up either as a row or as a skip with its
reason; an interrupted job resumes from the committed parts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import read_pool
from .data.images import SampleSkip, check_image_root
from .data.samples import LengthBatcher, SampleMaker, collate
from .errors import InputError
from .extract import first_layer_vectors
from .models.load import load_checkpoint, pick_device, pick_dtype
from .store import StoreWriter


@dataclass
class ExtractOptions:
    tau: float = 0.9
    max_length: int = 2048
    batch_size: int = 8
    workers: int | None = None     # DataLoader workers; None: one per core but one, at most 8
    device: str = "auto"
    dtype: str = "auto"            # compute dtype of the model
    store_dtype: str = "float16"
    shard_rows: int = 4096
    resume: bool = False
    trust_remote_code: bool = False
    allow_outside_root: bool = False
    progress: bool = True
    kernel_backend: str = "auto"   # "torch": the PyTorch twins (benchmarks compare the two)

    def check(self) -> None:
        if not 0 < self.tau <= 1:
            raise InputError(f"--tau must be in (0, 1], got {self.tau}")
        for name in ("max_length", "batch_size", "shard_rows"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise InputError("--workers must be 0 or more")


class _PoolSamples(torch.utils.data.Dataset):
    """Item i: the Prepared sample at pool position positions[i], or its SampleSkip."""

    def __init__(self, pool, positions: list[int], maker: SampleMaker):
        self.pool, self.positions, self.maker = pool, positions, maker

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        sample_id = self.pool.ids[pos]
        try:
            return self.maker(self.pool.records[pos], self.pool.layout, sample_id)
        except SampleSkip as skip:
            return {"sample_id": sample_id, "reason": skip.reason, "detail": skip.detail}


def _unbatched(item):
    return item


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers run in parallel already; more threads only oversubscribe


def _worker_count(requested: int | None) -> int:
    if requested is not None:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1))  # leave a core to the forward


def _versions() -> dict:
    import transformers

    from . import __version__
    return {"scalselect": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def extract_store(model_dir: str | os.PathLike, pool_path: str | os.PathLike,
                  image_root: str | os.PathLike | None, out: str | os.PathLike,
                  options: ExtractOptions | None = None) -> dict:
    """Extract every sample of the pool into the store `out`; returns the store's summary."""
    opts = options or ExtractOptions()
    opts.check()
    root = check_image_root(image_root)
    pool = read_pool(pool_path)
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    processor, model, adapter = load_checkpoint(model_dir, device, dtype, opts.trust_remote_code,
                                                opts.progress)
    dim = int(model.config.get_text_config().hidden_size)
    settings = {"model": str(Path(model_dir).resolve()), "model_class": type(model).__name__,
                "pool": str(Path(pool_path).resolve()), "pool_samples": len(pool),
                "image_root": str(root.resolve()), "tau": opts.tau, "max_length": opts.max_length,
                "compute_dtype": str(dtype).removeprefix("torch."),
                "allow_outside_root": opts.allow_outside_root}
    writer = StoreWriter(out, dim, opts.store_dtype, settings=settings, resume=opts.resume)
    todo = [pos for pos, sid in enumerate(pool.ids) if sid not in writer.done_ids]
    maker = SampleMaker(processor, adapter.image_token_id(model), root, opts.max_length,
                        opts.allow_outside_root)
    workers = _worker_count(opts.workers)
    loader = torch.utils.data.DataLoader(
        _PoolSamples(pool, todo, maker), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=_unbatched, prefetch_factor=4 if workers else None, worker_init_fn=_one_thread)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (processor.tokenizer.eos_token_id or 0)

    part = _Part()
    batcher = LengthBatcher(opts.batch_size)
    t0 = time.perf_counter()
    kept_tokens = 0
    bar = tqdm(total=len(todo), unit="sample", disable=not opts.progress, desc="extract",
               dynamic_ncols=True, smoothing=0.1)

    def run_batches(batches: list) -> None:
        nonlocal kept_tokens
        for samples in batches:
            inputs, instruction = collate(samples, pad_id)
            inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                      for k, v in inputs.items()}
            vectors, kept = first_layer_vectors(model, inputs, instruction.to(device), opts.tau,
                                                opts.kernel_backend)
            stored = vectors.cpu().numpy().astype(opts.store_dtype)
            finite = np.isfinite(stored).all(axis=1)
            for row, sample in enumerate(samples):
                if finite[row]:
                    part.add_row(sample.sample_id, stored[row])
                    kept_tokens += int(kept[row])
                else:
                    part.skips.append({"sample_id": sample.sample_id, "reason": "non-finite vector",
                                       "detail": f"NaN or inf as {opts.store_dtype}"})
            bar.update(len(samples))
            bar.set_postfix(skipped=part.skipped_so_far + len(part.skips), refresh=False)
            if len(part.ids) >= opts.shard_rows:
                part.commit(writer, dim, opts.store_dtype)

    for item in loader:
        if isinstance(item, dict):
            part.skips.append(item)
            bar.update(1)
        else:
            run_batches(batcher.push(item))
    run_batches(batcher.flush())
    part.commit(writer, dim, opts.store_dtype)
    bar.close()
    seconds = time.perf_counter() - t0
    meta = {**settings, "family": adapter.family, "versions": _versions(),
            "batch_size": opts.batch_size, "extract_seconds_last_run": seconds,
            "samples_per_second_last_run": len(todo) / seconds if seconds > 0 else None,
            "mean_kept_vision_tokens_last_run": kept_tokens / max(1, part.rows_total)}
    writer.close(meta)
    summary = {"store": str(out), "rows": sum(s["rows"] for s in writer.shards),
               "skipped": sum(writer.skip_counts.values()),
               "skipped_by_reason": dict(sorted(writer.skip_counts.items())),
               "processed_this_run": len(todo), "seconds": seconds, "device": str(device),
               "dtype": settings["compute_dtype"]}
    if summary["rows"] == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in summary["skipped_by_reason"].items())
        raise InputError(f"no sample of {pool_path} could be used ({reasons}); "
                         f"see {Path(out) / 'skipped.jsonl'}")
    return summary


class _Part:
    """Rows and skips waiting to be committed to the store as one part."""

    def __init__(self):
        self.ids: list = []
        self.rows: list = []
        self.skips: list[dict] = []
        self.skipped_so_far = 0
        self.rows_total = 0

    def add_row(self, sample_id, vector) -> None:
        self.ids.append(sample_id)
        self.rows.append(vector)
        self.rows_total += 1

    def commit(self, writer: StoreWriter, dim: int, dtype: str) -> None:
        if not self.ids and not self.skips:
            return
        vectors = np.stack(self.rows) if self.rows else np.zeros((0, dim), dtype=dtype)
        writer.add(vectors, self.ids, self.skips)
        self.skipped_so_far += len(self.skips)
        self.ids, self.rows, self.skips = [], [], []
