"""Running under torchrun: which process this is, and the few collectives the jobs need.

torchrun (or srun + torchrun) sets RANK, WORLD_SIZE and LOCAL_RANK; `context()` then joins the
process group (NCCL when this rank has a GPU, gloo otherwise) with a timeout, so that a rank
that dies makes the others fail instead of waiting forever. Without torchrun it is a world of
one, and every collective is a no-op. A failure on one rank of a step that every rank runs
together (`on_rank0`) is sent to all of them, so they all stop with the same message.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .errors import InputError, first_line

DEFAULT_TIMEOUT_MINUTES = 30.0


class RankFailure(RuntimeError):
    """Another rank died or did not answer in time; this rank stops too."""


@contextlib.contextmanager
def _collective(what: str, timeout_minutes: float):
    try:
        yield
    except RuntimeError as exc:  # gloo / NCCL report a dead or silent peer as RuntimeError
        raise RankFailure(f"{what}: another rank failed or did not answer within "
                          f"{timeout_minutes:g} min (--dist-timeout) [{first_line(exc)}]; "
                          "the parts already written are kept: rerun with --resume") from None


@dataclass
class Comm:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # where collectives' tensors live (NCCL: this GPU)
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            with _collective("barrier", self.timeout_minutes):
                torch.distributed.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over ranks, on every rank (t's device and dtype)."""
        if not self.active:
            return t
        buf = t.to(self.device)
        with _collective("all_reduce", self.timeout_minutes):
            torch.distributed.all_reduce(buf)
        return buf.to(t.device)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's `t` on every rank (same shape and dtype on all ranks)."""
        if not self.active:
            return t
        buf = t.to(self.device).contiguous()
        with _collective("broadcast", self.timeout_minutes):
            torch.distributed.broadcast(buf, src=0)
        return buf.to(t.device)

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        with _collective("broadcast", self.timeout_minutes):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.is_main else None
        with _collective("gather", self.timeout_minutes):
            torch.distributed.gather_object(obj, out, dst=0)
        return out

    def on_rank0(self, fn: Callable):
        """Run fn() on rank 0 only; its result, or its InputError, reaches every rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except InputError as exc:
                error = str(exc)
        result, error = self.broadcast_object((result, error)) if self.active else (result, error)
        if error is not None:
            raise InputError(error)
        return result


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def context(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Iterator[Comm]:
    """The Comm of this process; joins and leaves the process group under torchrun."""
    if not launched_by_torchrun():
        yield Comm()
        return
    if timeout_minutes <= 0:
        raise InputError(f"--dist-timeout must be positive, got {timeout_minutes}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpu = torch.cuda.is_available()
    if gpu and torch.cuda.device_count() < local_world:  # all ranks of a group need one backend
        raise InputError(f"{local_world} ranks on this node but {torch.cuda.device_count()} GPUs: "
                         "start one rank per GPU (--nproc-per-node)")
    if gpu:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    with _collective("joining the process group", timeout_minutes):
        torch.distributed.init_process_group(
            backend="nccl" if gpu else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        yield Comm(rank, world, local_rank, device, timeout_minutes)
    finally:
        torch.distributed.destroy_process_group()
