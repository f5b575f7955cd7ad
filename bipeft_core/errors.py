"""Exceptions raised by bipeft.

Every error says what was wrong, with the offending value, and how to fix it.
All of them derive from :class:`BipeftError`, so a caller (the CLI, for one)
can catch the library's own errors apart from bugs.
"""

from __future__ import annotations

__all__ = [
    "BipeftError",
    "BudgetError",
    "DataError",
    "DuplicateNameError",
    "RegistryError",
    "SearchSpaceError",
    "SpecError",
    "StructureError",
    "TargetError",
    "TrainingError",
    "UnknownNameError",
]


class BipeftError(Exception):
    """Base class of every error bipeft raises on bad input."""


class RegistryError(BipeftError):
    """A registry was used wrongly."""


class UnknownNameError(RegistryError, KeyError):
    """A name that no registered plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RegistryError):
    """Two plugins registered the same name in one registry."""


class BudgetError(BipeftError, ValueError):
    """A budget that cannot be parsed, or cannot be met."""


class SpecError(BipeftError, ValueError):
    """A pipeline spec (dict or TOML file) that is not valid."""


class SearchSpaceError(BipeftError, ValueError):
    """A search space definition that is not valid."""


class TargetError(BipeftError, ValueError):
    """A model in which the search space finds no (or wrong) positions."""


class StructureError(BipeftError, ValueError):
    """A structure that does not fit the model or the registry."""


class DataError(BipeftError, ValueError):
    """A dataset folder, file or column that is missing or malformed."""


class TrainingError(BipeftError, RuntimeError):
    """Training cannot go on (a NaN loss, for one)."""
