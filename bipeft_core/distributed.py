"""Multi-process runs under ``accelerate launch`` or ``torchrun``.

The launcher sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` starts the process group from them (gloo on
CPU, NCCL on CUDA) or uses one that is already running. Then:

* each rank trains on its own shard of every data split (equal sizes);
* gradients of the PEFT weights, the task head and the architecture logits
  are averaged across ranks after every backward, so every rank holds the
  same weights and logits;
* sensitivities come from those averaged gradients, so the trigger and the
  selectors see the same values on every rank and decide the same; a digest
  of every decision is compared across ranks (:meth:`Dist.check_same`);
* gate samples come from the same seeded generator on every rank;
* only the main process writes checkpoints and run folders, prints and
  shows progress.

In a single process every method is a cheap no-op.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as td

from bipeft_core.errors import BipeftError

__all__ = ["Dist", "DistributedMismatchError", "setup"]


class DistributedMismatchError(BipeftError, RuntimeError):
    """Ranks reached different decisions (they must never)."""


class Dist:
    """The process group as bipeft uses it (see the module docstring)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This process's device: ``$BIPEFT_DEVICE`` when set (``cpu``,
        ``cuda``, ``cuda:1``), else its GPU when CUDA is available (the
        launcher's local rank), else the CPU."""
        forced = os.environ.get("BIPEFT_DEVICE")
        if forced:
            if forced == "cuda" and self.enabled:
                return torch.device("cuda", self.local_rank)
            return torch.device(forced)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def shard(self, examples: Sequence[Any]) -> list[Any]:
        """This rank's equal-sized share (the tail that does not divide evenly is dropped)."""
        if not self.enabled:
            return list(examples)
        per = len(examples) // self.world
        if per == 0:
            raise BipeftError(f"{len(examples)} examples cannot be shared by {self.world} processes; "
                              "use more data or fewer processes")
        return [examples[i] for i in range(self.rank, per * self.world, self.world)]

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` across ranks (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat, op=td.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (detached)."""
        if not self.enabled:
            return value.detach()
        out = value.detach().clone().float()
        td.all_reduce(out, op=td.ReduceOp.SUM)
        return out / self.world

    def check_same(self, tag: str, *tensors: torch.Tensor) -> str:
        """Compare a digest of ``tensors`` across ranks; every rank raises
        :class:`DistributedMismatchError` together if any differs (one small
        all-reduce, so it is cheap enough to call every step)."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        if self.enabled:
            value = int(digest[:15], 16)
            both = torch.tensor([value, -value], dtype=torch.int64)
            td.all_reduce(both, op=td.ReduceOp.MAX)
            if int(both[0]) != -int(both[1]):
                raise DistributedMismatchError(
                    f"ranks disagree on {tag} (digests range from {-int(both[1]):x} to {int(both[0]):x}); "
                    "decisions must come from reduced values"
                )
        return digest

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]


def setup() -> Dist:
    """The current process group, started from the launcher's environment
    if needed; a single-process :class:`Dist` without a launcher."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", td.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not td.is_available():
        raise BipeftError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    td.init_process_group(backend=backend)
    atexit.register(_close_process_group)  # a group left open can abort the process at exit
    return Dist(td.get_rank(), td.get_world_size(), local_rank)


def _close_process_group() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
