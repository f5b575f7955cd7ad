"""Search checkpoints: written atomically, read back with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bipeft_core.errors import BipeftError

__all__ = ["CheckpointError", "CheckpointManager"]

FORMAT = "bipeft-search-checkpoint"
VERSION = 1


class CheckpointError(BipeftError):
    """A checkpoint that cannot be read or does not belong to this search."""


class CheckpointManager:
    """Keeps the latest checkpoint of one search in ``folder``.

    ``every``: write after every ``every`` weight steps (and always after a
    trigger and at the end of an epoch). Writes go to a temporary file that
    replaces the checkpoint in one step, so a kill never leaves half a file.
    """

    filename = "search-checkpoint.pt"

    def __init__(self, folder: str | os.PathLike[str], *, every: int = 50) -> None:
        if every < 1:
            raise CheckpointError(f"checkpoint every={every}: give a whole number of steps >= 1")
        self.folder = Path(folder)
        self.every = every
        self.writes = 0

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, payload: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, self.path)
        self.writes += 1
        return self.path

    def load(self) -> dict[str, Any]:
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {self.path}; start the search without resume") from None
        except Exception as exc:  # torch raises many kinds on a truncated or foreign file
            raise CheckpointError(
                f"the checkpoint {self.path} is corrupt or not a bipeft checkpoint ({type(exc).__name__}: "
                f"{exc}); delete it to start the search again, or resume from a good copy"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a bipeft search checkpoint; delete it or point "
                                  "the search at another folder")
        if data.get("version", 0) > VERSION:
            raise CheckpointError(f"{self.path} was written by a newer bipeft (format {data['version']}); "
                                  "upgrade bipeft to resume it")
        return data
