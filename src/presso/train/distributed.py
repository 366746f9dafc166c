"""Data-parallel fine-tuning under PyTorch's own engine (torchrun + DistributedDataParallel).

The caller starts the processes and the process group (``torchrun --nproc_per_node N
script.py`` then :func:`init_from_env`); :func:`presso.train.fit` sees an initialised group
and trains data-parallel on its own. The rest of this module is what ``fit`` needs to keep
every rank in step: which rows of a global mini-batch a rank takes, sums over ranks, and
decisions made once (by rank 0) that every rank must share, since a rank that stops while
the others wait in a collective hangs them all.

Examples
--------
>>> from presso.train import distributed
>>> started = distributed.init_from_env()  # False in a plain, single process
>>> distributed.rank(), distributed.world_size(), distributed.is_main()
(0, 1, True)
>>> distributed.shutdown()  # nothing to do without a process group
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from presso.errors import PressoError


def active() -> bool:
    """True when a process group is initialised: :func:`presso.train.fit` then trains data-parallel."""
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> bool:
    """Join the process group that torchrun describes in the environment (gloo, CPU).

    Returns True when this call initialised it (the caller then calls :func:`shutdown`),
    False for a single process (``WORLD_SIZE`` unset or 1) or a group already initialised.
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise PressoError(
            f"The WORLD_SIZE environment variable must be an int. Got {raw!r} instead; "
            "start the processes with torchrun, which sets it."
        ) from None
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise PressoError(
            f"WORLD_SIZE is {size} but this PyTorch build has no torch.distributed; "
            "install a build with it or run a single process."
        )
    dist.init_process_group("gloo")
    return True


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes files and logs."""
    return rank() == 0


def shutdown() -> None:
    """Leave the process group, if there is one.

    Gloo's worker threads drop a finished collective, and with it the last reference to its
    tensors (which takes the GIL), *after* the caller's wait has returned, and
    ``destroy_process_group`` does not join them. A process that exits at once can reach
    interpreter shutdown while such a thread still waits for the GIL: CPython then ends the
    thread with pthread_exit inside ``~AsyncWork`` (noexcept) and the process dies with
    SIGABRT, "terminate called without an active exception" (seen in a core dump; the
    mechanism is pybind/pybind11#2215, python/cpython#87135). Sleeping hands the GIL to them
    first: tests/train/distributed_fit_script.py under torchrun failed 2 runs in 30 without it, none
    in 90 with it, on 2 cores. No barrier: ranks other than 0 leave while rank 0 still exports
    and measures, which can outlast gloo's 30-minute collective timeout.
    """
    if active():
        time.sleep(0.05)
        dist.destroy_process_group()


# --- what fit needs ---------------------------------------------------------------------------


def shard(rows: int, rank: int, world: int) -> tuple[int, int]:
    """(start, stop) of rank ``rank``'s contiguous part of a global batch of ``rows`` rows.

    Sizes differ by at most one, the larger ones first; with fewer rows than ranks the last
    ranks get none (they still join the gradient average with a zero gradient).
    """
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _comm_device() -> torch.device:
    # gloo reduces CPU tensors; nccl (not tested here) only CUDA ones.
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over all ranks, in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank: one decision for all of them."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Each rank's last training forward updated them from its own shard; validating with
    different statistics would give different scores, and different early-stopping
    decisions would leave ranks waiting on each other.
    """
    device = _comm_device()
    for b in module.buffers():
        t: Tensor = b if b.device == device else b.to(device)
        dist.broadcast(t, src=0)
        if t is not b:
            b.copy_(t)


class WorkerDone(Exception):  # noqa: N818 - a signal, not an error
    """Raised on ranks other than 0 once data-parallel training is over: rank 0 alone exports,
    measures and writes the result, and the other processes end quietly (``presso distill``
    returns 0 on them)."""
