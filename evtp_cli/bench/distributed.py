"""Sharding an evaluation over processes started by torchrun (one per GPU, on one or several nodes).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Each rank evaluates the sample indices with
`index % WORLD_SIZE == RANK` and writes its records to samples.rank{RANK}.jsonl; rank 0 waits for the
others at a barrier after each dataset, rebuilds the rows from every rank's records in dataset order
and writes the usual results. The process group only coordinates (barriers, one flag), so it is always
gloo: it works on CPUs and beside any GPU backend, and no tensors of the models travel through it.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

from evtp_cli.errors import EvtpError

TIMEOUT_ENV = "EVTP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600  # ranks wait for the slowest one at each dataset's end


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise EvtpError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


@dataclass
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _owns_group: bool = False

    @classmethod
    def from_env(cls) -> "Shard":
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise EvtpError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a torchrun group")
        return cls(rank=rank, world=world, local_rank=_env_int("LOCAL_RANK", rank))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def indices(self, n: int) -> range:
        """This rank's sample indices out of n: every world-th, starting at the rank."""
        return range(self.rank, n, self.world)

    def device(self, device: str) -> str:
        """`cuda` means this rank's own GPU in a sharded run: cuda:LOCAL_RANK, wrapped around the GPUs the
        node has (so that 2 processes may share one GPU)."""
        if not (self.sharded and device == "cuda"):
            return device
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return f"cuda:{self.local_rank % count if count else self.local_rank}"

    def start(self) -> None:
        if not self.sharded:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            return
        timeout = _dt.timedelta(seconds=_env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world, timeout=timeout)
        self._owns_group = True

    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if not self.sharded:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False
