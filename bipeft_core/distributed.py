"""Multi-process runs under ``accelerate launch`` or ``torchrun``, through
accelerate.

Under a launcher (``WORLD_SIZE`` > 1, or a process group already running),
:func:`setup` takes the process state from accelerate's ``PartialState``, the
state every ``Accelerator`` shares: it starts the process group (NCCL on
CUDA; gloo on a machine without CUDA, or with ``BIPEFT_DEVICE=cpu``), and
gives the rank, the world size and this process's device, as a user's
``accelerate config`` or launcher flags set them. Every collective below is
one of accelerate's operations (``reduce``, ``broadcast_object_list``,
``wait_for_everyone``). Then:

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

The model is not wrapped by ``Accelerator.prepare`` (DistributedDataParallel):
a search step runs two backward passes on different parameter sets (the
architecture logits, then the weights) and skips the modules sampled off, so
DDP would need ``find_unused_parameters`` and one reduction per backward;
the one flat mean all-reduce of the trainable gradients here is the same
arithmetic. In a single process (no launcher) accelerate is not involved and
every method is a cheap no-op.
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

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, state: Any = None) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.state = state  # accelerate's PartialState under a launcher, else None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This process's device: ``$BIPEFT_DEVICE`` when set (``cpu``,
        ``cuda``, ``cuda:1``), else accelerate's device for this process under
        a launcher, else the CPU when accelerate's config asks for it
        (``ACCELERATE_USE_CPU``), else the GPU when CUDA is available, else
        the CPU."""
        forced = os.environ.get("BIPEFT_DEVICE")
        if forced:
            if forced == "cuda" and self.enabled:
                return torch.device("cuda", self.local_rank)
            return torch.device(forced)
        if self.state is not None:
            return torch.device(self.state.device)
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            return torch.device("cpu")
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
        flat = _reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (detached)."""
        if not self.enabled:
            return value.detach()
        return _reduce(value.detach().float(), "mean")

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
            both = _reduce(torch.tensor([value, -value], dtype=torch.int64), "max")
            if int(both[0]) != -int(both[1]):
                raise DistributedMismatchError(
                    f"ranks disagree on {tag} (digests range from {-int(both[1]):x} to {int(both[0]):x}); "
                    "decisions must come from reduced values"
                )
        return digest

    def barrier(self) -> None:
        if self.enabled:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj if self.is_main else None], from_process=0)[0]


def _reduce(tensor: torch.Tensor, reduction: str) -> torch.Tensor:
    """``tensor`` reduced over every process (a new tensor), by accelerate."""
    from accelerate.utils import reduce

    return reduce(tensor, reduction=reduction)


def setup() -> Dist:
    """This process's :class:`Dist`: from accelerate's ``PartialState`` under
    a launcher (``WORLD_SIZE`` > 1) or when a process group already runs,
    which starts the group if needed; a single-process :class:`Dist`
    otherwise."""
    running = td.is_available() and td.is_initialized()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not running:
        return Dist()
    if not td.is_available():
        raise BipeftError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    from accelerate import PartialState

    # without CUDA, accelerate must be told it runs on CPU: otherwise `accelerate launch --multi_gpu`
    # processes each report a world of one and would search apart (gloo is the CPU backend)
    cpu = not torch.cuda.is_available() or os.environ.get("BIPEFT_DEVICE", "").startswith("cpu")
    state = PartialState(cpu=cpu)
    world = td.get_world_size() if td.is_initialized() else 1
    if state.num_processes != world:
        raise BipeftError(
            f"accelerate reports {state.num_processes} process(es) but the process group has {world}: "
            "start the run with `accelerate launch` or `torchrun`, or initialise torch.distributed from "
            "the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    if not running:
        atexit.register(_close_process_group)  # a group left open can abort the process at exit
    return Dist(state.process_index, state.num_processes, state.local_process_index, state=state)


def _close_process_group() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
