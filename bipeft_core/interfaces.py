"""The small interfaces that every strategy and module type implements.

A search is composed of one object per interface:

* :class:`SearchSpace` says which PEFT modules may go where (built from
  declarative data, see ``spaces/``).
* :class:`PeftModuleType` is one kind of PEFT module (LoRA, BitFit, ...): its
  exact parameter count and the two forms of it the search needs.
* :class:`SensitivityEstimator` scores every module after each weight step.
* :class:`Trigger` decides after each weight step whether to select now.
* :class:`ModuleSelector` prunes modules when the trigger fires.
* :class:`DimensionSelector` fixes ranks when the trigger fires.
* :class:`Optimizer` drives the whole search loop and calls the others.
* :class:`ExportFormat` writes a trained structure to a folder in one format
  (peft's, bipeft's own, ...) and maps such a folder's weights back.

Every method's docstring says when it is called and what it may change.
Stateful components implement ``state_dict`` / ``load_state_dict`` so a search
can be checkpointed and resumed bit for bit; the defaults here store nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from bipeft_core.state import SearchContext, SearchResult, SearchState
    from bipeft_core.structure import PeftModel
    from bipeft_core.targets import TargetMap
    from bipeft_core.types import ExportFiles, ModuleSpec, PeftExport, Shape, Site

__all__ = [
    "DimensionSelector",
    "ExportFormat",
    "ModuleSelector",
    "Optimizer",
    "PeftModuleType",
    "SearchSpace",
    "SensitivityEstimator",
    "Stateful",
    "Trigger",
]


class Stateful:
    """Mixin: components whose state must survive a checkpoint. The search
    loop (:mod:`bipeft_core.loop`) saves the state of every component it
    drives, and of the optimizer, in each checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain data only); called
        when a checkpoint is written. Default: nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; called on resume, after
        :meth:`reset`."""


class PeftModuleType(ABC):
    """One kind of PEFT module: LoRA, Adapter-LR, BitFit, ...

    A module type is stateless: one instance serves every position. It is
    registered by name through ``bipeft_register_peft_modules`` and named by
    search spaces.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["matrix", "vector"]]
    """``matrix`` types have a searchable rank (β logits); ``vector`` types
    (BitFit, LNFit) have only the on/off gate α."""
    roles: ClassVar[tuple[str, ...]] = ("target",)
    """The sites one module needs, by role: most need one backbone module
    (``target``); a parallel adapter needs ``ffn_in`` and ``ffn_out``; prefix
    tuning needs ``attn_q`` and ``attn_o``."""
    site_kind: ClassVar[Literal["linear", "norm", "any"]] = "linear"
    """What the ``target`` site must be: a linear layer, a normalisation
    layer, or anything with a tensor output."""

    @abstractmethod
    def shape(self, sites: Mapping[str, Site], **options: Any) -> Shape:
        """The shape facts the parameter count needs, read from the sites.

        Called once per position when a space is applied to a model.
        """

    @abstractmethod
    def param_count(self, shape: Shape, rank: int | None, **options: Any) -> int:
        """Exact number of trainable parameters at ``rank`` (``None`` for
        vector types). Pure: shape and rank in, integer out; it must equal
        ``sum(p.numel())`` of :meth:`discrete` at that rank."""

    @abstractmethod
    def supernet(self, spec: ModuleSpec, model: nn.Module) -> nn.Module:
        """The searchable form: weights at the largest candidate rank, shared
        by every candidate (rank ``d`` uses the leading slice), zero output at
        initialisation. Called once per position when a supernet is built.
        The returned module is a :class:`bipeft_core.modules.PeftModule`."""

    @abstractmethod
    def discrete(self, spec: ModuleSpec, model: nn.Module, rank: int | None) -> nn.Module:
        """The plain form at one rank, without gates, for re-training and
        export. Called once per kept module when a structure is built."""

    def peft_export(self, spec: ModuleSpec, rank: int | None, module: nn.Module,
                    model: nn.Module) -> PeftExport | None:
        """How the kept ``module`` is written in Hugging Face peft's own
        adapter format, or ``None`` (the default): peft has no native form of
        this type, so a structure that keeps such a module exports in bipeft's
        own format only (``bipeft export`` says which module types stopped it).

        ``module`` is what :meth:`discrete` built from ``spec`` at ``rank``,
        attached to ``model`` (the backbone, for facts about the target layer
        such as its class). Called once per kept module when a structure is
        exported, when its export format is chosen, and when a peft-format
        export is loaded back. Pure: it reads the module and the model and
        changes neither. The record must be exact: peft, loading it, must
        compute what ``module`` computes (see
        :class:`~bipeft_core.types.PeftExport` for what each field holds).
        """
        return None

    def merged_weights(self, spec: ModuleSpec, rank: int | None, module: nn.Module,
                       model: nn.Module) -> Mapping[str, torch.Tensor] | None:
        """What folding the kept ``module`` into the backbone adds to its own
        parameters: full parameter names of ``model`` (e.g.
        ``bert.encoder.layer.0.attention.self.query.weight``) to a tensor of
        that parameter's shape, so that the backbone with these added and
        the module removed computes what the two compute together. ``None``
        (the default): the module is not a linear change of the backbone's
        weights (a nonlinear adapter, a prefix) and cannot be folded. Raise
        :class:`~bipeft_core.errors.StructureError` with the reason when this
        module cannot be folded where another of its type could (a bias
        vector on a layer that has no bias). Pure: it changes neither the
        module nor the model. Used by ``bipeft export --format merged``.
        """
        return None


class SearchSpace(ABC):
    """Which module types may go at which positions, at which ranks."""

    name: str

    @abstractmethod
    def modules(self, model: nn.Module, target_map: TargetMap, registry: Any) -> list[ModuleSpec]:
        """Every searchable module of this space in ``model``, in a fixed order.

        Called once when a search (or a structure build) starts; the order is
        the module index used by every other component.
        """


class SensitivityEstimator(Stateful, ABC):
    """Scores each module's importance from its weight-gradient products."""

    name: ClassVar[str]

    @abstractmethod
    def reset(self, modules: Sequence[ModuleSpec]) -> None:
        """Called once before the first step: allocate the per-module state."""

    @abstractmethod
    def observe(
        self,
        *,
        train: Sequence[Sequence[torch.Tensor] | None],
        val: Sequence[Sequence[torch.Tensor] | None],
        active: torch.Tensor,
        sizes: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Called after every weight step with, per module, the products
        ``θ ⊙ ∂L/∂θ`` of each of its tensors from the weight step (``train``)
        and the preceding architecture step (``val``); ``None`` where the
        module was not computed; ``val`` is all ``None`` after a step without
        an architecture step. ``active`` (bool, per module) marks the modules
        whose score is updated (pruned modules are not). ``sizes`` maps
        ``max``, ``expected`` and ``live`` to per-module parameter counts
        (``Supernet.effective_counts``), for estimators that normalise by
        what a module effectively carries; the search loop always passes
        them, ``None`` (the default) is for callers that have none."""

    @property
    @abstractmethod
    def scores(self) -> torch.Tensor:
        """Current smoothed score per module (float tensor, one per module)."""


class Trigger(Stateful, ABC):
    """Decides when the selectors run."""

    name: ClassVar[str]
    warmup_epochs: float | None = None
    """Epochs of warm-up before the first trigger may fire (``None``: none).
    A spec whose warm-up is not below its search epochs is rejected, since
    no trigger could fire."""

    @abstractmethod
    def reset(self, state: SearchState) -> None:
        """Called once before the first step (``state.step`` 0,
        ``state.total_steps`` and ``state.steps_per_epoch`` set). Sets ``K``,
        how many times the trigger may fire in this search, with
        ``state.plan_triggers(K)``; ``state.triggers_left`` is read-only, and
        only the loop lowers it, once per firing."""

    @abstractmethod
    def should_fire(self, state: SearchState) -> bool:
        """Called after every weight step (and sensitivity update). Returns
        whether the module and dimension selectors run now; must return
        ``False`` once ``state.triggers_left`` is 0. May record history; must
        not change the structure or the state."""

    def warmed_up(self, state: SearchState) -> bool:
        """Whether the warm-up is over at ``state.step`` (default: there is
        none). The optimizer takes the dimension selector's snapshots only
        after it."""
        return True


class ModuleSelector(Stateful, ABC):
    """Prunes modules when the trigger fires."""

    name: ClassVar[str]

    def reset(self, state: SearchState) -> None:
        """Called once before the first step (default: nothing to set up)."""

    @abstractmethod
    def select(self, state: SearchState) -> list[int]:
        """Called when the trigger fires, before the dimension selector, with
        ``state.triggers_left`` not yet decremented. Returns the indices of
        the modules to prune now (the loop applies them). The selector owns
        ``state.expected_sizes``, ``state.last_expected`` and
        ``state.last_delta`` and may update them here (the trigger event
        reports the last two)."""


class DimensionSelector(Stateful, ABC):
    """Fixes the ranks of matrix modules when the trigger fires."""

    name: ClassVar[str]

    def reset(self, state: SearchState) -> None:
        """Called once before the first step (default: nothing to set up)."""

    def observe(self, state: SearchState) -> None:
        """Called after every weight step once the trigger is warmed up (a β
        snapshot); default: nothing is recorded."""

    @abstractmethod
    def select(self, state: SearchState) -> dict[int, int]:
        """Called when the trigger fires, after pruning and after
        ``state.triggers_left`` was decremented. Returns ``{module index:
        rank}`` for the modules to fix now (the loop applies them)."""


class Optimizer(Stateful, ABC):
    """Drives a search and returns its result. A strategy that trains the
    supernet subclasses :class:`bipeft_core.loop.LoopOptimizer`, whose
    ``search`` is the one search loop (data, steps, checkpoints, the calls to
    the other components) and which declares the hooks that loop calls
    (BIPEFT's ``iterative``, ``s3delta``, ``prunepeft``, ``apet``); a
    strategy that searches otherwise (``autopeft``, ``manual``, ``full``)
    implements :meth:`search` itself."""

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]] = ()
    """Which of ``sensitivity``, ``trigger``, ``module_selector`` and
    ``dimension_selector`` this optimizer uses; a spec that sets another is
    rejected at load time."""
    default_components: ClassVar[Mapping[str, Any]] = {}
    """Per kind of :attr:`components`, the component used when the spec sets
    none: a registered name or a ``{"name": ..., **params}`` table."""
    budgeted: ClassVar[bool] = True
    """``False`` for a method whose structure does not depend on the budget
    (manual LoRA, BitFit, full fine-tuning): the budget is not checked
    against the space and the result is not held to it."""

    @property
    def selects(self) -> bool:
        """Whether the optimizer's selection is paced by its trigger (so the
        trigger's warm-up must fit in the search's epochs). Default ``True``."""
        return True

    def adapt_space(self, space: SearchSpace) -> SearchSpace:
        """Called once, before the space is applied to the model. Baselines
        use it to fix the candidate ranks (S3Delta: rank 1; PrunePEFT: the
        largest rank) or to bring a space of their own (manual PEFT). The
        default keeps the spec's space."""
        return space

    @abstractmethod
    def search(self, ctx: SearchContext) -> SearchResult:
        """Run the whole search and return its result. Called once by
        :meth:`bipeft_core.Pipeline.search`; on resume, ``ctx`` carries the
        checkpoint to continue from."""


class ExportFormat(ABC):
    """One export format: how :func:`bipeft_core.export.export` writes a
    trained :class:`~bipeft_core.structure.PeftModel` to a folder, and how
    :func:`bipeft_core.export.load_peft` reads such a folder's weights back.

    Registered through ``bipeft_register_export_formats`` under
    :attr:`name`, which ``export(..., format=name)`` and ``bipeft export
    --format`` take. The exporter owns what every format shares: the
    folder (refusing a non-empty one), ``structure.json``, the tokenizer's
    files, the model card and, last, ``export.json`` with the checksums. A
    format owns its own files: :meth:`prepare` checks the structure and
    builds everything in memory, so a refused export writes nothing.
    """

    name: ClassVar[str]
    """The format's registry name, e.g. ``"peft"``."""
    auto_preference: ClassVar[int | None] = None
    """Where ``format="auto"`` ranks the format: the formats with a
    preference are tried from the highest, and the first whose
    :meth:`refusal` is ``None`` is written. ``None`` (the default): never
    chosen automatically."""
    library_name: ClassVar[str] = "peft"
    """The model card's ``library_name``: the library that loads the folder."""
    card_tags: ClassVar[tuple[str, ...]] = ("peft",)
    """Tags the model card adds after ``bipeft`` (the module types follow)."""
    weights_file: ClassVar[str | None] = None
    """The weights file :meth:`to_trainable_state` reads back; ``None``: the
    format is not read back by :func:`~bipeft_core.export.load_peft`."""
    load_hint: ClassVar[str] = "this format cannot be read back by bipeft"
    """What ``load_peft`` says about a folder of a format it does not read
    back (:attr:`weights_file` ``None``): how to load it instead."""

    def refusal(self, peft_model: PeftModel, registry: Any) -> str | None:
        """Why this format cannot hold ``peft_model``'s structure (one
        sentence), or ``None`` when it can. ``registry``: the PEFT module
        types. Pure; called when ``format="auto"`` chooses. Default: ``None``."""
        return None

    @abstractmethod
    def prepare(self, peft_model: PeftModel, *, registry: Any, base_model_name_or_path: str | None,
                plugin_modules: Sequence[str] = ()) -> ExportFiles:
        """Check that the format holds the structure (else raise a
        :class:`~bipeft_core.errors.StructureError` that names what stops
        it and the format to use instead) and build the format's files in
        memory, as an :class:`~bipeft_core.types.ExportFiles` whose
        ``write`` writes them into the (new, empty) folder. Writes nothing.
        ``plugin_modules``: import names of plugin modules the structure's
        module types come from, for formats that record them."""

    def to_trainable_state(self, state: Mapping[str, torch.Tensor], peft_model: PeftModel,
                           registry: Any) -> dict[str, torch.Tensor]:
        """The tensors of :attr:`weights_file` under the keys of
        :meth:`PeftModel.trainable_state_dict` (``peft.<i>.<name>``,
        ``head.<name>``), for ``peft_model``, the export's structure built
        on a fresh backbone. Called by ``load_peft``; raise a
        :class:`~bipeft_core.errors.StructureError` for a key that does not
        belong. Default: the keys as they are."""
        return dict(state)

    def loading_snippet(self, model: nn.Module) -> list[str]:
        """Python lines for the model card: how to load the folder (``model``
        is the trained backbone, for its class). Default: ``load_peft``."""
        return ["from bipeft_core import load_peft",
                'model = load_peft(base_model, "<this folder>")  # base_model: the same architecture and weights']
