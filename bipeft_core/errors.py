"""Exceptions raised by bipeft.

Every error says what was wrong, with the offending value, and how to fix it.
All of them derive from :class:`BipeftError`, so a caller (the CLI, for one)
can catch the library's own errors apart from bugs.
"""

from __future__ import annotations

from pathlib import Path

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
    "read_text_file",
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


def read_text_file(path: str | Path, *, what: str, error: type[BipeftError] = BipeftError, fix: str = "",
                   encoding: str = "utf-8") -> str:
    """The text of ``path``; the one mapping of what can go wrong reading a
    file to bipeft's errors. ``what`` names the file for the message
    (``"spec file"``), ``error`` is the class raised, and ``fix`` is appended
    to every message. A missing file, a folder, bytes that are not UTF-8
    (with the line and byte where they stop being so) and any other
    ``OSError`` (with its reason) each get their own message."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist{tail}") from None
    except IsADirectoryError:
        raise error(f"{what} {str(path)!r} is a folder, not a file{tail}") from None
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{what} {str(path)!r} is not UTF-8 text ({exc.reason} at line {line}, byte {exc.start}: "
                    f"{raw[exc.start:exc.start + 1]!r}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8){tail}"
                    ) from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read ({exc.strerror or exc}); check the path and its "
                    f"permissions{tail}") from None
