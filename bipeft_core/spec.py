"""Declarative pipeline specs: plain data, with no knowledge of the
registries or of running (that is :mod:`bipeft_core.pipeline`'s).

A pipeline is fully described by plain data (:class:`PipelineSpec`): the model and task, the
budget, the search space, one registered implementation per interface (with
its parameters), and the training settings of the search and the re-train.
It is built from Python, a dict, or a TOML file, and ``to_dict()``
round-trips::

    [model]
    name_or_path = "path/or/hub-id"
    task = "glue/rte"

    [budget]
    value = "0.1%"

    [space]
    name = "s2"
    ranks = [1, 4, 8]

    [search]
    optimizer = "iterative"
    sensitivity = { name = "grad_weight_cos", beta = 0.85 }
    trigger = { name = "budget_stability", window = 5 }
    epochs = 20
    seed = 42

    [retrain]
    epochs = 20

Invalid specs fail when loaded, with the field, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.budget import Budget
from bipeft_core.errors import BudgetError, SearchSpaceError, SpecError, read_text_file
from bipeft_core.tomlio import TOMLDecodeError, dumps, loads
from bipeft_core.types import check_ranks
from bipeft_core.types import freeze_mapping as _freeze_mapping
from bipeft_core.types import hashable as _hashable

__all__ = ["COMPONENT_KINDS", "Component", "DataSpec", "ModelSpec", "PipelineSpec", "SpaceSpec", "TrainSpec", "read_spec_file"]

COMPONENT_KINDS = ("optimizer", "sensitivity", "trigger", "module_selector", "dimension_selector")

#: The keys of the ``[train]`` table: settings that the search and the
#: re-train share (each stage's own table may still set its own).
SHARED_TRAIN_KEYS = ("grad_accum_steps", "mixed_precision", "gradient_checkpointing")


def _freeze(value: Any) -> Any:
    return _freeze_mapping(value) if isinstance(value, Mapping) else _hashable(value)


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# -- validators that raise SpecError with the field, the value and the fix -----------


def _validator(check, fix: str):
    def validate(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and attribute.default is None:
            return
        if not check(value):
            raise SpecError(f"{type(inst).__name__.lower().replace('spec', '')}.{attribute.name} = {value!r} "
                            f"is not valid: {fix}")

    return validate


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_pos_int = _validator(lambda v: _is_int(v) and v >= 1, "give a whole number >= 1")
_pos_num = _validator(lambda v: _is_num(v) and v > 0, "give a number > 0")
_nonneg_num = _validator(lambda v: _is_num(v) and v >= 0, "give a number >= 0")
_ratio = _validator(lambda v: _is_num(v) and 0 <= v < 1, "give a fraction in [0, 1), e.g. 0.06")
_int = _validator(_is_int, "give a whole number")


@attrs.frozen(kw_only=True)
class Component:
    """One registered implementation, by name, with its parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_freeze)

    @classmethod
    def parse(cls, value: Any, field: str) -> Component:
        if isinstance(value, Component):
            return value
        if isinstance(value, str):
            if not value.strip():
                raise SpecError(f"{field} is empty; name a registered implementation")
            return cls(name=value.strip().lower())
        if isinstance(value, Mapping):
            if "name" not in value or not isinstance(value["name"], str):
                raise SpecError(f"{field} = {dict(value)!r} has no name; write {{ name = \"...\", ... }}")
            params = {k: v for k, v in value.items() if k != "name"}
            return cls(name=value["name"].strip().lower(), params=params)
        name = getattr(value, "name", None)
        if isinstance(name, str) and attrs.has(type(value)):  # a configured strategy object
            params = attrs.asdict(value, recurse=False)
            return cls(name=name, params=params)
        raise SpecError(f"{field} = {value!r}: give a registered name, a table {{ name = ..., ... }}, "
                        "or an attrs strategy object")

    def param_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.params}

    def to_value(self) -> str | dict[str, Any]:
        return self.name if not self.params else {"name": self.name, **self.param_dict()}


def _component_or_none(value: Any, field: str) -> Component | None:
    return None if value is None else Component.parse(value, field)


def _optimizer(value: Any) -> Component | None:
    return _component_or_none(value, "search.optimizer")


def _sensitivity(value: Any) -> Component | None:
    return _component_or_none(value, "search.sensitivity")


def _trigger(value: Any) -> Component | None:
    return _component_or_none(value, "search.trigger")


def _module_selector(value: Any) -> Component | None:
    return _component_or_none(value, "search.module_selector")


def _dimension_selector(value: Any) -> Component | None:
    return _component_or_none(value, "search.dimension_selector")


def _parse_budget(value: Any) -> Budget:
    return Budget.parse(value)


def _parse_space(value: Any) -> SpaceSpec:
    return SpaceSpec.parse(value)


def _parse_model(value: Any) -> ModelSpec:
    return ModelSpec.parse(value)


def _search_settings(value: Any) -> TrainSpec:
    return TrainSpec.parse(value, "search")


def _retrain_settings(value: Any) -> TrainSpec:
    return TrainSpec.parse(value, "retrain")


def _dtype(value: Any) -> None:
    if value is not None and value not in ("float32", "bfloat16", "float16"):
        raise SpecError(f"model.dtype = {value!r}: give \"float32\", \"bfloat16\" or \"float16\"")


@attrs.frozen(kw_only=True)
class ModelSpec:
    """The backbone and the task."""

    name_or_path: str | None = None
    task: str | None = None
    max_length: int | None = attrs.field(default=None, validator=_pos_int)
    target_map: Any = None
    """A registered target map's name, or a table of patterns (see docs/targets.md)."""
    dtype: str | None = attrs.field(default=None, validator=lambda _i, _a, v: _dtype(v))
    """The backbone's dtype: ``float32``, ``bfloat16`` or ``float16``
    (``None``: as saved, float32 for most). PEFT modules and the task head
    train in float32 whatever it is."""
    revision: str | None = None
    """A hub revision (branch, tag or commit) of ``name_or_path``."""
    trust_remote_code: bool | None = None
    """Allow a hub model's own modelling code (``from_pretrained``'s flag)."""
    attn_implementation: str | None = None
    """``eager``, ``sdpa``, ``flash_attention_2``, ... (``from_pretrained``'s)."""
    device_map: str | None = None
    """``from_pretrained``'s ``device_map`` (e.g. ``"auto"``; needs accelerate)."""

    def load_kwargs(self) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments these fields ask for."""
        out: dict[str, Any] = {}
        if self.dtype is not None:
            import torch
            import transformers

            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            out["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = getattr(torch, self.dtype)
        for key in ("revision", "trust_remote_code", "attn_implementation", "device_map"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def parse(cls, value: Any) -> ModelSpec:
        if value is None:
            return cls()
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(name_or_path=value)
        return _from_table(cls, value, "model")

    def to_dict(self) -> dict[str, Any]:
        return _to_table(self)


def _columns(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c for c in value):
        raise SpecError(f"data.text_columns = {value!r}: give one or two column names, e.g. [\"sentence\"] or "
                        "[\"question\", \"passage\"]")
    if len(value) > 2:
        raise SpecError(f"data.text_columns = {list(value)!r}: a text task reads one column or a pair; give at "
                        "most two")
    return tuple(value)


def _kind(value: Any) -> str | None:
    if value is not None and value not in ("auto", "classification", "regression", "causal_lm"):
        raise SpecError(f"data.kind = {value!r}: give 'classification', 'regression', 'causal_lm' (next-token "
                        "prediction on the text column, no label) or 'auto' (the default: regression when every "
                        "label is a number with a fraction, else classification)")
    return value


@attrs.frozen(kw_only=True)
class DataSpec:
    """The user's own data files, in place of a registered task (the
    ``[data]`` table; docs/own-data.md). ``train_file`` is required when the
    table is given; the other files are optional (splits are made from what
    is given, as for the built-in tasks). A task plugin turns it into a task
    (hook ``bipeft_task_from_data``; the built-in reads CSV, JSON and JSON
    Lines files)."""

    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: tuple[str, ...] | None = attrs.field(default=None, converter=_columns)
    """One or two text columns (``None``: ``["text"]``)."""
    label_column: str | None = None
    """``None``: ``"label"``."""
    kind: str | None = attrs.field(default=None, validator=lambda _i, _a, v: _kind(v))
    """``classification``, ``regression``, ``causal_lm`` or ``auto`` (``None``: auto)."""
    metric: str | None = None
    """A shipped metric: accuracy, f1, matthews_correlation, pearsonr or
    spearmanr (``None``: accuracy for classification, pearsonr for regression)."""
    name: str | None = None
    """The task's name in reports (``None``: the training file's stem)."""
    dataset: str | None = None
    """Instead of files: any ``datasets.load_dataset`` source (a hub id, a
    local dataset folder, or a builder such as ``"parquet"`` with files);
    the splits named by ``train_split`` and the optional
    ``validation_split`` and ``test_split``."""
    dataset_config: str | None = None
    """The ``load_dataset`` config name (``None``: its default)."""
    train_split: str | None = None
    """The training split of ``dataset`` (``None``: ``"train"``)."""
    validation_split: str | None = None
    test_split: str | None = None

    def __attrs_post_init__(self) -> None:
        given = [f.name for f in attrs.fields(type(self)) if getattr(self, f.name) is not None]
        if given and self.train_file is None and self.dataset is None:
            raise SpecError(f"[data] gives {given} but no train_file (or dataset); add train_file = "
                            "\"path/to/train.csv\" (bipeft: --train-file FILE)")
        if self.train_file is not None and self.dataset is not None:
            raise SpecError(f"[data] gives both train_file = {self.train_file!r} and dataset = {self.dataset!r}; "
                            "keep one")

    @property
    def given(self) -> bool:
        return self.train_file is not None or self.dataset is not None

    @classmethod
    def parse(cls, value: Any) -> DataSpec:
        if value is None:
            return cls()
        if isinstance(value, DataSpec):
            return value
        return _from_table(cls, value, "data")

    def to_dict(self) -> dict[str, Any]:
        return _to_table(self)


@attrs.frozen(kw_only=True)
class SpaceSpec:
    """A registered search space (or a space file), optionally with other
    candidate ranks. ``name = None``: the default spec's space (see
    :class:`~bipeft_core.pipeline.Pipeline`)."""

    name: str | None = None
    ranks: tuple[int, ...] | None = None
    file: str | None = None
    """A space TOML file (docs/howto-search-space.md); its own name is used."""

    def __attrs_post_init__(self) -> None:
        if self.ranks is not None:
            try:
                object.__setattr__(self, "ranks", check_ranks(list(self.ranks), "space.ranks"))
            except SearchSpaceError as exc:
                raise SpecError(str(exc)) from None

    @classmethod
    def parse(cls, value: Any) -> SpaceSpec:
        if value is None:
            return cls()
        if isinstance(value, SpaceSpec):
            return value
        if isinstance(value, str):
            return cls(name=value.lower())
        if hasattr(value, "modules") and hasattr(value, "name") and not isinstance(value, Mapping):
            return cls(name=value.name)
        return _from_table(cls, value, "space")

    def to_dict(self) -> dict[str, Any]:
        return _to_table(self)


@attrs.frozen(kw_only=True)
class TrainSpec:
    """Training settings (of the search's weight steps, or of the re-train).

    Defaults as docs/algorithm.md §3 and §9: AdamW lr 3e-4, weight decay 1e-4,
    batch 32, linear decay without warm-up, gradient clipping at 2.0.
    """

    epochs: int = attrs.field(default=20, validator=_pos_int)
    batch_size: int = attrs.field(default=32, validator=_pos_int)
    eval_batch_size: int = attrs.field(default=64, validator=_pos_int)
    lr: float = attrs.field(default=3e-4, validator=_pos_num)
    weight_decay: float = attrs.field(default=1e-4, validator=_nonneg_num)
    warmup_ratio: float = attrs.field(default=0.0, validator=_ratio)
    clip_norm: float | None = attrs.field(default=2.0, validator=_pos_num)
    seed: int = attrs.field(default=42, validator=_int)
    max_train_examples: int | None = attrs.field(default=None, validator=_pos_int)
    grad_accum_steps: int | None = attrs.field(default=None, validator=_pos_int)
    """Batches whose gradients one optimiser step sums (``None``: 1): the
    effective batch is ``batch_size · grad_accum_steps``, the memory that of
    one ``batch_size`` batch."""
    mixed_precision: str | None = attrs.field(default=None, validator=lambda _i, _a, v: _precision(v))
    """``"bf16"``: forward passes and losses under bfloat16 autocast;
    ``"no"`` or ``None``: the model's own dtype."""
    gradient_checkpointing: bool | None = attrs.field(default=None, validator=lambda _i, _a, v: _flag(v))
    """Recompute the backbone's activations in the backward pass instead of
    keeping them (transformers' gradient checkpointing): less memory, more time."""

    @property
    def accum(self) -> int:
        return self.grad_accum_steps or 1

    @property
    def bf16(self) -> bool:
        return self.mixed_precision == "bf16"

    @classmethod
    def parse(cls, value: Any, table: str = "train") -> TrainSpec:
        if isinstance(value, TrainSpec):
            return value
        return _from_table(cls, value or {}, table)

    def to_dict(self) -> dict[str, Any]:
        return _to_table(self)


def _from_table(cls: type, value: Any, table: str) -> Any:
    if not isinstance(value, Mapping):
        raise SpecError(f"[{table}] must be a table, got {value!r}")
    allowed = [f.name for f in attrs.fields(cls)]
    extra = sorted(set(value) - set(allowed))
    if extra:
        raise SpecError(f"[{table}] has unknown key(s) {extra}; the keys of [{table}] are {allowed}")
    kwargs = dict(value)
    if "ranks" in kwargs and isinstance(kwargs["ranks"], list):
        kwargs["ranks"] = tuple(kwargs["ranks"])
    try:
        return cls(**kwargs)
    except SpecError as exc:
        msg = str(exc)
        prefix = cls.__name__.lower().replace("spec", "") + "."
        raise SpecError(f"{table}.{msg[len(prefix):]}" if msg.startswith(prefix) else f"[{table}] {msg}") from None


def _to_table(obj: Any) -> dict[str, Any]:
    out = {}
    for f in attrs.fields(type(obj)):
        v = getattr(obj, f.name)
        if v is None:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """A TOML spec file's contents as a dict. Raises :class:`SpecError`
    naming the file and the fix when it is missing, a folder, unreadable,
    not UTF-8 or not valid TOML."""
    path = Path(path)
    text = read_text_file(path, what="spec file", error=SpecError, fix="give the path of a .toml spec")
    try:
        return loads(text)
    except TOMLDecodeError as exc:
        raise SpecError(f"spec file {str(path)!r} is not valid TOML: {exc}. Fix the syntax there "
                        "(strings need quotes; tables are [name])") from None


def _precision(value: Any) -> None:
    if value is not None and value not in ("no", "bf16"):
        raise SpecError(f"mixed_precision = {value!r}: give \"no\" or \"bf16\" (bfloat16 autocast)")


def _flag(value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise SpecError(f"gradient_checkpointing = {value!r}: give true or false")


def _parse_data(value: Any) -> DataSpec:
    return DataSpec.parse(value)


@attrs.frozen(kw_only=True)
class PipelineSpec:
    """What a pipeline is, as plain data: what to search, under which budget,
    with which components, and how to train. Parsing checks every value's
    form; checking names against the registries and running are
    :class:`bipeft_core.pipeline.Pipeline`'s.

    Components (``optimizer``, ``sensitivity``, ``trigger``,
    ``module_selector``, ``dimension_selector``) are registered names,
    ``{"name": ..., **params}`` tables, or attrs strategy objects; ``None``
    takes the optimizer's default.
    """

    budget: Budget = attrs.field(converter=_parse_budget)
    budgets: tuple[Budget, ...] = attrs.field(default=(), converter=lambda v: tuple(_parse_budget(b) for b in v))
    """More budgets for one search (``[budget] budgets = [...]``, ``--budgets``):
    the search runs down to the smallest of these and :attr:`budget`, and
    records on its way the structure of each larger one (a budget-to-quality
    curve; docs/budgets.md). Empty by default."""
    curve_references: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    """Whether a curve (:attr:`budgets`) also re-trains its reference points,
    LoRA r=1, 2, 4, 8 and BitFit (``[budget] references``, default true);
    false keeps only the searched structures' points (five re-trains fewer)."""
    space: SpaceSpec = attrs.field(factory=SpaceSpec, converter=_parse_space)
    """``None`` (or no name): the default spec's space, filled in by the pipeline."""
    model: ModelSpec = attrs.field(factory=ModelSpec, converter=_parse_model)
    optimizer: Component | None = attrs.field(default=None, converter=_optimizer)
    """``None``: the default spec's optimizer, filled in by the pipeline."""
    sensitivity: Component | None = attrs.field(default=None, converter=_sensitivity)
    trigger: Component | None = attrs.field(default=None, converter=_trigger)
    module_selector: Component | None = attrs.field(
        default=None, converter=_module_selector)
    dimension_selector: Component | None = attrs.field(
        default=None, converter=_dimension_selector)
    search_settings: TrainSpec = attrs.field(factory=TrainSpec, converter=_search_settings)
    """Training settings of the search (the ``[search]`` table's other keys)."""
    retrain_settings: TrainSpec = attrs.field(factory=TrainSpec, converter=_retrain_settings)
    """Training settings of the re-train (the ``[retrain]`` table)."""
    data: DataSpec = attrs.field(factory=DataSpec, converter=_parse_data)
    """The user's own data files (the ``[data]`` table), in place of ``model.task``."""

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "spec", **extra: Any) -> Any:
        """From the dict form (the TOML tables). Raises :class:`SpecError`.
        ``extra`` goes to the constructor as it is (a subclass's own fields)."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: a spec is a table of tables, got {type(data).__name__}")
        allowed = ["model", "budget", "space", "search", "retrain", "data", "train"]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise SpecError(f"{source}: unknown table(s) {unknown}; a spec has {allowed}")
        if "budget" not in data:
            raise SpecError(f"{source}: no budget; add e.g. budget = \"0.1%\" or [budget] value = \"102600\"")
        raw_budget = data["budget"]
        budgets: list[Any] = []
        if isinstance(raw_budget, Mapping) and "budgets" in raw_budget:
            raw_budget = dict(raw_budget)
            budgets = raw_budget.pop("budgets")
            if not isinstance(budgets, list) or not budgets:
                raise SpecError(f"{source}: [budget] budgets = {budgets!r}: give a list, e.g. [\"0.05%\", \"0.2%\"]")
            if "value" not in raw_budget:
                raw_budget["value"] = budgets[0]
        references = True
        if isinstance(raw_budget, Mapping) and "references" in raw_budget:
            raw_budget = dict(raw_budget)
            references = raw_budget.pop("references")
            if not isinstance(references, bool):
                raise SpecError(f"{source}: [budget] references = {references!r}: give true or false")
            if not budgets:
                raise SpecError(f"{source}: [budget] references is for a curve: give [budget] budgets as well, "
                                "or leave references out")
        search = dict(data.get("search") or {})
        if not isinstance(search, dict):
            raise SpecError(f"{source}: [search] must be a table")
        components = {k: search.pop(k) for k in COMPONENT_KINDS if k in search}
        retrain = dict(data.get("retrain") or {})
        shared = data.get("train") or {}
        if not isinstance(shared, Mapping) or set(shared) - set(SHARED_TRAIN_KEYS):
            raise SpecError(f"{source}: [train] holds the settings both stages share, {list(SHARED_TRAIN_KEYS)}; "
                            f"got {sorted(shared) if isinstance(shared, Mapping) else shared!r}")
        for key, value in shared.items():  # a stage's own table wins
            search.setdefault(key, value)
            retrain.setdefault(key, value)
        try:
            return cls(model=data.get("model"), budget=_budget(raw_budget),
                       budgets=tuple(_budget(b) for b in budgets), curve_references=references,
                       space=data.get("space"),
                       search_settings=search, retrain_settings=retrain, **components,
                       data=data.get("data"), **extra)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path, **extra: Any) -> Any:
        """Load a TOML spec file. Raises :class:`SpecError` naming the file."""
        return cls.from_dict(read_spec_file(path), source=str(path), **extra)

    def to_dict(self) -> dict[str, Any]:
        """The dict form; ``type(p).from_dict(p.to_dict()) == p``."""
        search: dict[str, Any] = {}
        for kind in COMPONENT_KINDS:
            comp = getattr(self, kind)
            if comp is not None:
                search[kind] = comp.to_value()
        search.update(self.search_settings.to_dict())
        out: dict[str, Any] = {}
        model = self.model.to_dict()
        if model:
            out["model"] = model
        out["budget"] = {"value": self.budget.to_value()}
        if self.budgets:
            out["budget"]["budgets"] = [b.to_value() for b in self.budgets]
            if not self.curve_references:
                out["budget"]["references"] = False
        space = self.space.to_dict()
        if space:
            out["space"] = space
        out["search"] = search
        out["retrain"] = self.retrain_settings.to_dict()
        if self.data.given:
            out["data"] = self.data.to_dict()
        return out

    def to_toml(self) -> str:
        """The TOML form; ``from_toml`` of it gives an equal spec."""
        return dumps(self.to_dict())

    def evolve(self, **changes: Any) -> Any:
        return attrs.evolve(self, **changes)


def _budget(value: Any) -> Budget:
    try:
        return Budget.parse(value)
    except BudgetError as exc:
        # echo what the user wrote (the value of a [budget] table, not the table)
        shown = value.get("value", value) if isinstance(value, Mapping) else value
        raise SpecError(f"budget = {shown!r}: {exc}") from None
