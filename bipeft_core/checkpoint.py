"""Search checkpoints: written atomically, read back with clear errors.

A checkpoint holds tensors and plain data only (dicts, lists, tuples,
strings, numbers, booleans, ``None``) and is read with
``torch.load(weights_only=True)``, so that loading a checkpoint someone sent
you cannot run code. :func:`plain` turns numpy values into plain ones and
refuses anything else before it is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bipeft_core.errors import BipeftError

__all__ = ["CheckpointError", "CheckpointManager", "load_safe", "plain"]

FORMAT = "bipeft-search-checkpoint"
#: 2: one layout for every strategy of the shared search loop (bipeft_core.loop)
VERSION = 2


class CheckpointError(BipeftError):
    """A checkpoint that cannot be read or does not belong to this search."""


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as
    tensors; anything that is not a tensor or plain data raises
    :class:`CheckpointError` (``torch.load(weights_only=True)`` could not read it)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return value
    if isinstance(value, dict):
        return {k: plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    kind = type(value).__module__.split(".")[0]
    if kind == "numpy":
        return torch.from_numpy(value.copy()) if hasattr(value, "shape") and value.shape else value.item()
    raise CheckpointError(f"{where} is a {type(value).__module__}.{type(value).__name__}, which a checkpoint "
                          "cannot hold (tensors and plain data only: dict, list, tuple, str, int, float, bool, None); "
                          "store it as plain data")


def _first_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return lines[0] if lines else type(exc).__name__


def load_safe(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (raises what torch raises)."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
        torch.save(plain({"format": FORMAT, "version": VERSION, **payload}, "the search checkpoint"), tmp)
        os.replace(tmp, self.path)
        self.writes += 1
        return self.path

    def load(self) -> dict[str, Any]:
        try:
            data = load_safe(self.path)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {self.path}; start the search without resume") from None
        except Exception as exc:  # torch raises many kinds on a truncated or foreign file
            raise CheckpointError(
                f"the checkpoint {self.path} is corrupt or not a bipeft checkpoint ({type(exc).__name__}: "
                f"{_first_line(exc)}); delete it to start the search again, or resume from a good copy"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a bipeft search checkpoint; delete it or point "
                                  "the search at another folder")
        version = data.get("version", 0)
        if version > VERSION:
            raise CheckpointError(f"{self.path} was written by a newer bipeft (format {version}); "
                                  "upgrade bipeft to resume it")
        if version < VERSION:
            raise CheckpointError(f"{self.path} was written by an older bipeft (format {version}, this one reads "
                                  f"{VERSION}); finish that search with the bipeft that started it, or delete the "
                                  "checkpoint to start the search again")
        return data
