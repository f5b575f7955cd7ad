"""The built-in export formats besides bipeft's own (which is the core's,
:class:`bipeft_core.formats.BipeftFormat`): native peft (``peft``), a peft
adapter of bipeft's peft method (``peft-bipeft``) and the merged
transformers model (``merged``). docs/export.md describes their files."""

from __future__ import annotations

from typing import Any

from bipeft_core.hookspecs import hookimpl
from bipeft_plugins.exports.merged import MergedFormat
from bipeft_plugins.exports.peft_method import PeftMethodFormat
from bipeft_plugins.exports.peft_native import PeftFormat

__all__ = ["MergedFormat", "PeftFormat", "PeftMethodFormat"]


@hookimpl
def bipeft_register_export_formats(registry: Any) -> None:
    registry.add(PeftFormat())
    registry.add(PeftMethodFormat())
    registry.add(MergedFormat())
