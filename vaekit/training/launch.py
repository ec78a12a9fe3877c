"""Which process of how many this one is: torchrun's environment, read in one place.

torchrun (and other launchers of torch.distributed, such as Kubeflow's PyTorchJob) sets RANK,
WORLD_SIZE and LOCAL_RANK together with MASTER_ADDR, the address where the processes meet. The
first three without MASTER_ADDR were not set by a launcher: left over in a shell from an earlier
job (`export RANK=1 WORLD_SIZE=2`). A plain `vaekit train` that took them failed with torch's
rendezvous traceback (exit 3), and a streaming job scored one share of the files, exited 0 and
wrote no -o file. Now they are refused, one line. No torch here: the CPU runtime reads it too.
"""

from __future__ import annotations

import os
import re

from vaekit.errors import BadInput

ALONE = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # what a process on its own would have


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank): (0, 1, 0) for a process on its own. BadInput for a value
    that is no whole number, a rank not below the world size, or a world of more than one (or a
    rank other than 0) that no launcher set (no MASTER_ADDR)."""
    text = {k: os.environ.get(k, v) for k, v in ALONE.items()}
    if not all(re.fullmatch(r"\s*[0-9]+\s*", t) for t in text.values()):  # no "1_0", no "-3"
        raise BadInput("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers, got "
                       + " ".join(f"{k}={v!r:.20}" for k, v in text.items() if k in os.environ))
    rank, world, local = (int(text[k]) for k in ALONE)
    if world < 1:
        raise BadInput(f"WORLD_SIZE {world} is no number of processes (1 or more)")
    if not 0 <= rank < world:
        raise BadInput(f"RANK {rank} is not below WORLD_SIZE {world}")
    given = {k: os.environ[k] for k in ALONE if k in os.environ}
    if any(int(v) != int(ALONE[k]) for k, v in given.items()) and not os.environ.get("MASTER_ADDR", "").strip():
        names = " ".join(f"{k}={v.strip()}" for k, v in given.items())
        raise BadInput(f"{names}: set, but not by torchrun (there is no MASTER_ADDR), so left over in this shell? "
                       f"Unset {' '.join(given)} to run one process, or start it with torchrun")
    return rank, world, local
