"""Lazy, name-based registries for judges, optimizers and reward functions.

A name resolves, in this order, to:

1. an object registered in this process (``@registry.register("name")``, for tests and notebooks);
2. an entry point of the registry's group (``cgpo.judges``, ``cgpo.optimizers``, ``cgpo.rewards``).
   Our own built-ins are declared in ``pyproject.toml`` exactly as a third-party plugin declares them,
   so the plugin path is exercised by every run;
3. a ``module:attribute`` string, for unpackaged experiments. Naming one in a config imports and runs
   that module, so configs are trusted input.

Entry points are only *listed* at start-up; a plugin's module is imported the first time a config
asks for its name. A broken plugin therefore cannot break ``cgpo --help`` or a run that does not use it.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

BUILTIN_DISTRIBUTION = "cgpo"


class RegistryError(LookupError):
    """A name that does not resolve, or a plugin that fails to load. The message is meant for users."""


@dataclass(frozen=True)
class RegistryEntry:
    """One name a registry knows, before or after its object is loaded.

    Attributes:
        name: The name configs use.
        origin: ``built-in``, the providing distribution as ``plugin: dist==version``, ``registered``
            (a decorator in this process) or ``module:attribute``.
        target: ``module:attribute`` of a lazy entry, or ``None`` for one registered with its object.
    """

    name: str
    origin: str
    target: str | None


def _split_target(target: str) -> tuple[str, str]:
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise RegistryError(f"'{target}' is not of the form module:attribute")
    return module, attribute


def load_target(target: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted) and return the object."""
    module_name, attribute = _split_target(target)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module '{module_name}' for '{target}': {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"module '{module_name}' has no attribute '{attribute}'") from None
    return obj


class Registry(Generic[T]):
    """Maps names to objects of one kind (judge classes, optimizer classes, reward functions).

    Args:
        kind: Human-readable kind used in messages, e.g. ``"judge"``.
        group: Entry-point group scanned for plugins, e.g. ``"cgpo.judges"``.
        check: Optional validation of a loaded object; it raises ``TypeError`` with a reason when the
            object is not of this registry's kind.
    """

    def __init__(self, kind: str, group: str, check: Callable[[Any], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._registered: dict[str, tuple[Any, str]] = {}
        self._entry_points: dict[str, metadata.EntryPoint] | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- registration -------------------------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, origin: str = "registered") -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does so.

        Registering a name twice is an error: silently replacing a judge would change what a config means.
        """

        def decorator(target: Any) -> Any:
            with self._lock:
                if name in self._registered:
                    raise RegistryError(f"{self.kind} '{name}' is already registered ({self._registered[name][1]})")
                if self._check is not None:
                    self._validated(name, target)
                self._registered[name] = (target, origin)
                self._loaded.pop(name, None)
            return target

        return decorator if obj is None else decorator(obj)

    def unregister(self, name: str) -> None:
        """Remove a name registered in this process (tests use this to stay independent)."""
        with self._lock:
            self._registered.pop(name, None)
            self._loaded.pop(name, None)

    # -- discovery ----------------------------------------------------------------------------------------------
    def _scan(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            found: dict[str, metadata.EntryPoint] = {}
            for ep in metadata.entry_points(group=self.group):
                # The first distribution wins a clash; a duplicate is reported by `cgpo list` as shadowed
                # rather than failing every command.
                found.setdefault(ep.name, ep)
            self._entry_points = found
        return self._entry_points

    def refresh(self) -> None:
        """Forget the entry-point scan (after installing a plugin in the same process)."""
        with self._lock:
            self._entry_points = None
            self._loaded = {k: v for k, v in self._loaded.items() if k in self._registered}

    @staticmethod
    def _origin_of(ep: metadata.EntryPoint) -> str:
        dist = ep.dist
        if dist is None:
            return "plugin"
        if dist.name == BUILTIN_DISTRIBUTION:
            return "built-in"
        return f"plugin: {dist.name}=={dist.version}"

    def entries(self) -> list[RegistryEntry]:
        """Every name known without importing anything, sorted by name."""
        rows = {name: RegistryEntry(name, origin, None) for name, (_, origin) in self._registered.items()}
        for name, ep in self._scan().items():
            rows.setdefault(name, RegistryEntry(name, self._origin_of(ep), ep.value))
        return [rows[name] for name in sorted(rows)]

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._registered or name in self._scan())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # -- resolution ---------------------------------------------------------------------------------------------
    def _validated(self, name: str, obj: Any) -> Any:
        if self._check is not None:
            try:
                self._check(obj)
            except TypeError as exc:
                raise RegistryError(f"{self.kind} '{name}' is not a valid {self.kind}: {exc}") from None
        return obj

    def get(self, name: str) -> T:
        """Return the object for ``name``, importing its module on first use.

        Raises:
            RegistryError: the name is unknown (the message suggests close names and says where the known
                names come from), or its plugin fails to import.
        """
        if name in self._loaded:
            return cast(T, self._loaded[name])
        if name in self._registered:
            obj = self._registered[name][0]
        elif name in self._scan():
            ep = self._scan()[name]
            try:
                obj = ep.load()
            except Exception as exc:  # a plugin's import error must name the plugin, not crash the CLI
                raise RegistryError(
                    f"{self.kind} '{name}' ({self._origin_of(ep)}, {ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        elif ":" in name:
            obj = load_target(name)
        else:
            raise RegistryError(self.unknown_message(name))
        obj = self._validated(name, obj)
        with self._lock:
            self._loaded[name] = obj
        return cast(T, obj)

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        listing = ", ".join(known) if known else "none installed"
        return f"unknown {self.kind} '{name}'; {hint}known {self.kind}s: {listing} (or give module:Class)"
