"""Registers the search spaces shipped in ``bipeft_spaces`` (S1, S2)."""

from __future__ import annotations

from bipeft_spaces import space_files

from bipeft_core.hookspecs import hookimpl
from bipeft_core.space import DeclarativeSpace


@hookimpl
def bipeft_register_search_spaces(registry):
    for path in space_files():
        registry.add(DeclarativeSpace.from_toml(path))
