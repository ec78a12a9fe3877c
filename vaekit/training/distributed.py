"""Device choice and torch.distributed set-up for runs launched by torchrun.

One process per device; NCCL on GPUs, gloo on CPUs. A plain `vaekit train` is a world of one.
"""

from __future__ import annotations

import atexit

import os
from dataclasses import dataclass

import torch
from vaekit.errors import BadInput
from vaekit.training.launch import launch_env


def pick_device(name: str) -> torch.device:
    """The torch device for --device `name`, for training and the torch engine alike:
    "auto" is CUDA when torch sees a GPU, else the CPU; "cuda" without one is BadInput. Under
    torchrun a CUDA device is this process's own GPU (LOCAL_RANK)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda, but torch sees no CUDA device (a CPU-only build, or no GPU); "
                       "use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", launch_env()[2])
    return torch.device(name)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # rank within this machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1).

    NCCL between GPUs, gloo between CPU processes; torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...) says where the others are. Calling it again returns the same group.
    """
    _, world, local_rank = launch_env()
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)  # a group left to the interpreter's teardown: "terminate called without an
        # active exception", SIGABRT after a finished run, once in a loaded test run (2026-12-08)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """`t` summed over every process of the group, in place (unchanged in a world of one)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    """Wait until every process of the group gets here (returns at once in a world of one)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()




def agree(d: Dist, error: Exception | None) -> None:
    """Every process says whether its part failed; if any did, every one raises: the failing
    process its own exception, the others the first failure's VaekitError (the same one line
    and exit code), so under torchrun no rank is left waiting on one that has given up (rank 0
    alone takes the run's lock and reads the images). In a world of one, `error` is raised."""
    if d.world <= 1:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    from vaekit.errors import VaekitError

    said = [None] * d.world
    mine = None if error is None else (error if isinstance(error, VaekitError) else f"{type(error).__name__}: {error}")
    dist.all_gather_object(said, mine)
    if error is not None:
        raise error
    rank, first = next(((r, e) for r, e in enumerate(said) if e is not None), (None, None))
    if isinstance(first, VaekitError):
        raise first
    if first is not None:  # a bug on that rank: its traceback is there, not here
        raise RuntimeError(f"rank {rank} failed: {first}")
