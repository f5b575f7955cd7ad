"""An example third-party bipeft plugin: the ``ia3`` PEFT module type, the
``excess_share`` module selector, and the ``example-ia3`` search space that
uses the module type. :mod:`bipeft_example_plugin.plugin` registers them
(the entry point in group ``bipeft`` names it)."""

from __future__ import annotations

from bipeft_example_plugin.excess_share import ExcessShare, reachable_sizes
from bipeft_example_plugin.ia3 import IA3, IA3Module

__all__ = ["IA3", "ExcessShare", "IA3Module", "reachable_sizes"]
__version__ = "0.1.0"
