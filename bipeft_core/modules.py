"""The runtime form of a PEFT module, and what the supernet sets on it.

A :class:`PeftModule` holds its own weights and attaches to the backbone
through forward hooks on the modules named by its :class:`ModuleSpec`; the
backbone's own modules and state dict are never changed. The same class
serves both forms: the *supernet* form is built at the largest candidate rank
and a controller sets, before each forward,

* ``enabled``: ``False`` skips the module entirely (no compute, no memory),
  as for a pruned module or one whose gate sample is 0 in a weight step;
* ``gate``: a scalar tensor (a hard Gumbel sample with a straight-through
  gradient) that multiplies the module's whole output, or ``None``;
* ``rank``: how many leading rank units to compute (weight entanglement);
* ``rank_mask``: a ``(rank,)`` tensor applied inside the low-rank product,
  mixing the candidate ranks in one computation;
* ``detach_weights``: compute with the weights detached (a module sampled off
  in an architecture step: its weights' gradients are zero there anyway);
  the base class's hook also detaches the module's input and the target's
  output it reads, since a zero gate passes them no gradient either;

and the *discrete* form is built at one rank, with these left at their
defaults (on, no gate, full rank).

A type whose ``delta`` can apply the gate to a small tensor (the rank vector
inside a low-rank product, a bias vector, a scalar) sets ``folds_gate`` and
uses :meth:`PeftModule.inner_scale` and :meth:`PeftModule.gated`; the result
is the same as multiplying the whole output by the gate, without a
full-size multiplication forward and backward for every module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
from torch import nn

from bipeft_core.types import ModuleSpec

__all__ = ["PeftModule", "get_submodule", "input_of", "require_peft_module"]


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        from bipeft_core.errors import StructureError

        raise StructureError(
            f"the model has no module {name!r}; the structure or space was built for another "
            "architecture (check the model and the target map)"
        ) from None


def require_peft_module(module: Any, type_name: str, form: str) -> PeftModule:
    """``module`` as a :class:`PeftModule`, or a :class:`StructureError`
    naming the module type and the form (``supernet`` or ``discrete``) that
    returned something else."""
    if not isinstance(module, PeftModule):
        from bipeft_core.errors import StructureError

        raise StructureError(
            f"module type {type_name!r}: {form}() returned a {type(module).__name__}, not a "
            f"bipeft_core.modules.PeftModule; build the {'searchable' if form == 'supernet' else 'plain'} "
            "form on PeftModule")
    return module


def keyword_forward(owner: nn.Module, model: nn.Module) -> Callable[..., Any]:
    """A ``forward`` for ``owner`` (a wrapper that calls ``model``) that
    carries ``model.forward``'s signature, so that tools that read it (the
    column removal of ``transformers.Trainer``) see ``input_ids``,
    ``attention_mask``, ``labels``, ... . A partial of the owner's class
    function: a deep copy of the owner gets its own."""
    import functools
    import inspect

    fwd: Any = functools.partial(type(owner).forward, owner)
    try:
        fwd.__signature__ = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a forward without a readable signature keeps (*args, **kwargs)
        pass
    return cast(Callable[..., Any], fwd)


def input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The first tensor a module was called with."""
    if args:
        return args[0]
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    raise RuntimeError("hooked module was called without a tensor input")


class PeftModule(nn.Module):
    """Base class of every PEFT module's runtime form (see module docstring).

    Single-site types implement :meth:`delta`; the base attaches a forward
    hook on the ``target`` site that adds ``gate · delta(x, output)`` to the
    output. Multi-site types override :meth:`_register`.
    """

    folds_gate: ClassVar[bool] = False
    """``True`` when :meth:`delta` applies ``gate`` itself (through
    :meth:`inner_scale` or :meth:`gated`), so the hook does not multiply."""

    def __init__(self, spec: ModuleSpec, ranks: tuple[int, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.ranks = tuple(ranks)
        self.max_rank: int | None = self.ranks[-1] if self.ranks else None
        self.enabled = True
        self.gate: torch.Tensor | None = None
        self.rank: int | None = self.max_rank
        self.rank_mask: torch.Tensor | None = None
        self.detach_weights = False
        self.calls = 0
        """How many times this module was computed (tests count it)."""
        self._handles: list[Any] = []

    # -- what the controller and subclasses use ---------------------------------------
    def w(self, p: torch.Tensor) -> torch.Tensor:
        return p.detach() if self.detach_weights else p

    def reset_controls(self) -> None:
        """Back to the discrete behaviour: on, no gate, full rank."""
        self.enabled = True
        self.gate = None
        self.rank = self.max_rank
        self.rank_mask = None
        self.detach_weights = False

    def inner_scale(self, r: int) -> torch.Tensor | None:
        """The ``(r,)`` factor for the rank units of a low-rank product: the
        rank mask times the gate (either may be absent; ``None`` if both are)."""
        scale = self.rank_mask[:r] if self.rank_mask is not None else None
        if self.gate is not None:
            scale = self.gate.reshape(1) if scale is None else scale * self.gate
        return scale

    def gated(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` times the gate, if there is one (for a small tensor: a bias, a scalar)."""
        return t if self.gate is None else t * self.gate

    def _apply_gate(self, delta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.gate is not None and not self.folds_gate:
            delta = delta * self.gate
        return delta.to(like.dtype)

    # -- attaching -------------------------------------------------------------------
    def attach(self, model: nn.Module) -> PeftModule:
        """Register this module's hooks on ``model`` (idempotent per model)."""
        self.detach()
        self._register(model)
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, model: nn.Module, name: str, fn: Callable[..., Any], *, pre: bool = False) -> None:
        target = get_submodule(model, name)
        if pre:
            self._handles.append(target.register_forward_pre_hook(fn, with_kwargs=True))
        else:
            self._handles.append(target.register_forward_hook(fn, with_kwargs=True))

    def _register(self, model: nn.Module) -> None:
        def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None
            self.calls += 1
            x, inner = input_of(args, kwargs), output
            if self.detach_weights:
                # sampled off in an architecture step: its gate is 0, so no gradient reaches the input
                # or the output through it; only the gate's own gradient is needed, and detaching them
                # spares the backward through the module (the gradients are unchanged)
                x, inner = x.detach(), output.detach()
            return self.add_delta(x, inner, output)

        self._hook(model, self.spec.site("target"), hook)

    def add_delta(self, x: torch.Tensor, inner: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The target's new output: ``output + gate·delta(x, inner)`` (``inner``
        is ``output``, detached when the module is sampled off). A type may
        override it to fuse the addition into its last operation (LoRA adds
        its product with one ``addmm``), saving a full-size addition and its
        buffer in every forward; the value must be the same."""
        return output + self._apply_gate(self.delta(x, inner), output)

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """What this module adds to the target's output (before the gate)."""
        raise NotImplementedError(f"{type(self).__name__} must implement delta() or _register()")

    def extra_repr(self) -> str:
        return f"{self.spec.id}, ranks={list(self.ranks)}"
