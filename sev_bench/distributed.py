"""Multi-process runs under `torchrun` or `accelerate launch`.

Both launchers start N copies of the command and tell each its place through environment variables
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, plus `MASTER_ADDR`/`MASTER_PORT` for the rendezvous). A run launched
that way becomes shard RANK of WORLD_SIZE (the same split as `--shard I/N`: by skeleton, each rank
appending to its own samples file, so resume works per rank), waits at a barrier once its shard is done,
and rank 0 alone merges the shards into `results.json`.

The barrier goes through a gloo process group: it only carries one tiny message, works on CPU-only
machines and across nodes, and needs no NCCL. Its timeout is long because ranks finish their shards at
different times (shards differ in size by one skeleton or so, and a resumed rank has less to do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from .errors import UserError

BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_launch(environ: dict | None = None) -> Launch | None:
    """The launch this process is part of, or None for a plain single-process run (WORLD_SIZE unset or 1)."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun or accelerate)") from None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


def rank_device(device: str, launch: Launch) -> str:
    """`--device auto` under a multi-GPU launch means this rank's own GPU (cuda:LOCAL_RANK)."""
    import torch

    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{launch.local_rank % torch.cuda.device_count()}"
    return device


def init_process_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)


def wait_for_all_ranks() -> None:
    """Block until every rank has reached this point (no-op outside a multi-process launch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
