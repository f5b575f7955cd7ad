"""String-keyed registries that plugins fill.

A :class:`Registry` maps plain lowercase names to objects of one kind (PEFT
module types, sensitivity estimators, tasks, ...). Plugins fill registries
from their ``bipeft_register_*`` hooks; specs then name the entries. A
registry rejects a name registered twice and answers an unknown name with the
list of the names it knows.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import attrs

from bipeft_core.errors import DuplicateNameError, RegistryError, UnknownNameError

__all__ = ["Entry", "Registry", "normalise_name"]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-./]*$")


def normalise_name(name: str) -> str:
    """Lower-case ``name`` and check that it is a valid registry key."""
    if not isinstance(name, str):
        raise RegistryError(
            f"registry names are strings, got {name!r} ({type(name).__name__}); "
            "give the plugin a `name` string attribute"
        )
    key = name.strip().lower()
    if not _NAME_RE.match(key):
        raise RegistryError(
            f"invalid registry name {name!r}: use letters, digits, '_', '-', '.' or '/', "
            "starting with a letter"
        )
    return key


@attrs.frozen(kw_only=True)
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    provider: str = "?"
    """The plugin that registered it (its pluggy name)."""
    distribution: str = "?"
    """The distribution that ships that plugin (``bipeft`` for built-ins)."""


class Registry(Generic[T]):
    """A mapping from lowercase names to registered objects of one ``kind``.

    ``base`` (a class) makes :meth:`add` check that each object (or, for a
    class, the class itself) is of that kind.
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self._provider = ("?", "?")

    # -- filling -----------------------------------------------------------------
    def add(self, obj: T, name: str | None = None) -> T:
        """Register ``obj`` under ``name`` (default: ``obj.name``) and return it.

        Raises :class:`DuplicateNameError` if the name is taken.
        """
        if name is None:
            name = getattr(obj, "name", None)
            if name is None:
                raise RegistryError(
                    f"cannot register {obj!r} in the {self.kind} registry without a name: "
                    "pass name=... or give it a `name` attribute"
                )
        key = normalise_name(name)
        if self.base is not None:
            ok = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
            if not ok and not (callable(obj) and not isinstance(obj, type)):
                raise RegistryError(
                    f"{obj!r} registered as {self.kind} {key!r} is not a {self.base.__name__}; "
                    f"subclass bipeft_core.{self.base.__name__}"
                )
        if key in self._entries:
            old = self._entries[key]
            raise DuplicateNameError(
                f"{self.kind} {key!r} is already registered by plugin {old.provider!r} "
                f"({old.distribution}); the second registration came from plugin "
                f"{self._provider[0]!r} ({self._provider[1]}). Register it under another name, "
                f"or disable the first plugin (load_plugins(disable=[{old.provider!r}]))"
            )
        self._entries[key] = Entry(
            name=key, obj=obj, provider=self._provider[0], distribution=self._provider[1]
        )
        return obj

    def _set_provider(self, plugin_name: str, distribution: str) -> None:
        self._provider = (plugin_name, distribution)

    # -- reading -----------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered under ``name``; :class:`UnknownNameError` if none."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        key = name.strip().lower() if isinstance(name, str) else name
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._entries)) or "(none registered)"
            close = difflib.get_close_matches(str(key), list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}. Known {self.kind} names: {known}.{hint} "
                "A plugin that provides it must be installed (entry-point group 'bipeft') "
                "or passed to load_plugins(plugins=[...])"
            ) from None

    def create(self, name: str, /, **params: Any) -> Any:
        """Call the factory registered under ``name`` with ``params``."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        return factory(**params)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
