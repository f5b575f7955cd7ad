"""BIPEFT's strategies (filled in by the search issue)."""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl


@hookimpl
def bipeft_register_strategies(registry):
    return None
