"""Running under torchrun: which process this is, and the few collectives the jobs need.

torchrun (or srun + torchrun) sets RANK, WORLD_SIZE and LOCAL_RANK; `context()` then joins the
process group with a timeout, so that a rank that hangs makes the others fail instead of
waiting forever (a rank whose process dies is caught by torchrun itself, at once). Without
torchrun it is a world of one, and every collective is a no-op.

The group is gloo, also on GPU machines: the collectives here are few and small (the largest is
one D x D float64 Gram matrix, 134 MB at D = 4,096), and gloo reports a silent peer as an error
that can be turned into a clear message, where NCCL's watchdog aborts the process. Each rank
still computes on its own GPU (cuda:LOCAL_RANK).

A step that every rank runs (`together`), or rank 0 alone (`on_rank0`), ends the same way on
every rank: if it failed anywhere, every rank raises, so no rank is left waiting in the next
collective.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import InputError, first_line
from .options import DEFAULT_TIMEOUT_MINUTES

if TYPE_CHECKING:
    import torch


def _torch(module: str = "torch"):
    """torch (or one of its modules), imported when first needed: only a job under torchrun
    reaches a collective, so a single process's Comm never imports it, and the commands that
    need no tensors start without it."""
    return importlib.import_module(module)


class RankFailure(RuntimeError):
    """Another rank failed, died, or did not answer in time; this rank stops too."""


@contextlib.contextmanager
def _collective(what: str, timeout_minutes: float):
    try:
        yield
    except RuntimeError as exc:  # gloo reports a dead or silent peer as RuntimeError
        raise RankFailure(
            f"{what}: another rank failed or did not answer within "
            f"{timeout_minutes:g} min (--dist-timeout) [{first_line(exc)}]; "
            "the parts already written are kept: rerun with --resume"
        ) from None


@dataclass
class Comm:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gpu(self) -> torch.device:
        """This rank's GPU (ranks share GPUs round-robin when a node has fewer than ranks)."""
        torch = _torch()
        return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))

    def barrier(self) -> None:
        if self.active:
            with _collective("barrier", self.timeout_minutes):
                _torch("torch.distributed").barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over ranks, on every rank (t's device and dtype)."""
        if not self.active:
            return t
        buf = t.cpu().contiguous()
        with _collective("all_reduce", self.timeout_minutes):
            _torch("torch.distributed").all_reduce(buf)
        return buf.to(t.device)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        with _collective("broadcast", self.timeout_minutes):
            _torch("torch.distributed").broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_objects(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        with _collective("all_gather", self.timeout_minutes):
            _torch("torch.distributed").all_gather_object(out, obj)
        return out

    def gather_objects(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.is_main else None
        with _collective("gather", self.timeout_minutes):
            _torch("torch.distributed").gather_object(obj, out, dst=0)
        return out

    def together(self, fn: Callable, main_only: bool = False):
        """fn() on every rank (on rank 0 only with main_only), then agree on how it ended.

        If it raised anywhere, it raises everywhere: the rank that met the error raises it, the
        others InputError (for bad input) or RankFailure "rank R: <message>" of the lowest
        failing rank R. Returns fn()'s result (None on the other ranks with main_only)."""
        result, error = None, None
        if self.is_main or not main_only:
            try:
                result = fn()
            except Exception as exc:  # held until every rank knows
                if not self.active:
                    raise
                error = exc
        if not self.active:
            return result
        told = self.all_gather_objects(None if error is None else (isinstance(error, InputError), str(error)))
        failed = [r for r, t in enumerate(told) if t is not None]
        if not failed:
            return result
        if error is not None:
            raise error
        is_input, message = told[failed[0]]
        raise (InputError if is_input else RankFailure)(f"rank {failed[0]}: {message}")

    def on_rank0(self, fn: Callable):
        """fn() on rank 0 only; its result, or its error, reaches every rank."""
        return self.broadcast_object(self.together(fn, main_only=True))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def context(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Iterator[Comm]:
    """The Comm of this process; joins and leaves the process group under torchrun."""
    if not launched_by_torchrun():
        yield Comm()
        return
    comm = Comm(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")), timeout_minutes)
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.set_device(comm.gpu())
    # Imported after the group exists, torch.distributed.nn.functional keeps it in default
    # arguments (group=group.WORLD): destroy_process_group then cannot free it, its gloo threads
    # live on into the interpreter's exit, and one that still drops a finished broadcast's
    # tensors there aborts the process (SIGABRT after all the work is done). transformers
    # imports it while loading a checkpoint, so import it first.
    _torch("torch.distributed.nn.functional")
    with _collective("joining the process group", timeout_minutes):
        torch.distributed.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        yield comm
    finally:
        torch.distributed.destroy_process_group()
