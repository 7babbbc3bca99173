"""A small plug-in registry: built-ins register by decorator, third-party packages by entry point."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes). Entry points of `group` are loaded lazily on first lookup;
    a malformed plug-in fails loudly rather than vanishing from the list."""

    def __init__(self, kind: str, group: str, base: type) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._items: dict[str, type[T]] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            self.add(name, cls)
            return cls

        return decorator

    def add(self, name: str, cls: type[T]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self.base.__name__}")
        if name in self._items and self._items[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._items[name]!r}")
        self._items[name] = cls

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry_point in metadata.entry_points(group=self.group):
            if entry_point.name in self._items:
                continue
            try:
                cls = entry_point.load()
            except Exception as exc:  # a broken plug-in must say which one it is
                raise UserError(
                    f"{self.kind} plug-in {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
                ) from exc
            self.add(entry_point.name, cls)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}") from None
