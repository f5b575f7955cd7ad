"""Search-space definitions shipped with bipeft, as TOML data files.

This folder installs as the import package ``bipeft_spaces``; its ``*.toml``
files are registered by the built-in plugin ``bipeft_plugins.spaces``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["space_files"]


def space_files() -> list[Path]:
    """The shipped space files, by name."""
    root = resources.files(__name__)
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))
