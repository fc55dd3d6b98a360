"""The device a mode runs on, and time and memory measured there. CUDA kernels run
asynchronously: every timing synchronises the device before it starts (earlier work is not
counted) and before it stops (the block's queued kernels are)."""

from __future__ import annotations

import time

import torch

from scalselect.bench import timed

from .sizes import SIZES


def device(mode: str) -> torch.device:
    dev = torch.device(SIZES[mode]["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no usable CUDA GPU (torch.cuda.is_available() is False); use --cpu-dry-run on a machine without one")
    return dev


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Stopwatch:
    """`with Stopwatch(dev) as watch:` ...; then watch.seconds, the device's work included."""

    def __init__(self, dev):
        self.dev = dev
        self.seconds = None

    def __enter__(self):
        sync(self.dev)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:  # after a failure, its error and not one from synchronising
            sync(self.dev)
        self.seconds = time.perf_counter() - self._t0
        return False


def time_fn(fn, dev, reps: int, warmup: int = 1):
    """(best seconds, median seconds, last result) of fn() over `reps` runs after `warmup`:
    the timer of `scalselect bench`, so that both measure alike."""
    stats, out = timed(fn, dev, max(1, reps), warmup)
    return stats["best_s"], stats["median_s"], out


def time_over(items, fn, dev) -> float:
    """Seconds of fn(item) for every item in turn, after one untimed fn(items[0]) (warm-up)."""
    fn(items[0])
    with Stopwatch(dev) as watch:
        for item in items:
            fn(item)
    return watch.seconds


def reset_peak_memory(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory(dev) -> dict:
    """{"peak_gpu_bytes": ...} since the last reset on a GPU; nothing on the CPU."""
    return {"peak_gpu_bytes": torch.cuda.max_memory_allocated(dev)} if dev.type == "cuda" else {}
