"""Registries of named backbones, segmenters, denoisers and losses, filled by plugin hooks.

``create_backbone("densenet121-hpa", num_classes=19)``, ``list_backbones("resnet*")``...
Each registry asks every plugin's hook once, on first use, and remembers which plugin
registered which name (``hpa plugins`` shows it).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .errors import PluginError, UnknownNameError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""


@dataclass
class Family:
    """Many names registered at once and listed lazily (every timm model name): ``names()``
    is called only when a name is looked up that nothing registered by itself, or when
    names are listed; ``factory(name, **kwargs)`` builds one."""

    plugin: str
    names_fn: Callable[[], Any]
    factory: Callable[..., Any]
    description: str = ""
    _names: frozenset[str] | None = None

    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(str(n) for n in self.names_fn())
        return self._names

    def entry(self, name: str) -> Entry:
        return Entry(name, partial(self.factory, name), self.plugin, self.description)


class _Register:
    """The ``register`` callback a hook receives: ``register(name, factory, description="")``;
    ``register.family(names, factory, description="")`` adds many names listed lazily."""

    def __init__(self, registry: Registry, plugin: str, entries: dict[str, Entry], families: list[Family]):
        self._registry, self._plugin, self._entries, self._families = registry, plugin, entries, families

    def __call__(self, name: str, factory: Callable[..., Any], description: str = "") -> None:
        kind, plugin = self._registry.kind, self._plugin
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin} registered a {kind} without a name")
        if not callable(factory):
            raise PluginError(f"plugin {plugin} registered {kind} {name!r} with a non-callable factory")
        self._entries[name] = Entry(name, factory, plugin, description)

    def family(self, names: Callable[[], Any], factory: Callable[..., Any], description: str = "") -> None:
        if not callable(names) or not callable(factory):
            raise PluginError(f"plugin {self._plugin} registered a {self._registry.kind} family without callables")
        self._families.append(Family(self._plugin, names, factory, description))


class Registry:
    def __init__(self, kind: str, hook: str) -> None:
        self.kind = kind
        self.hook = hook
        self._entries: dict[str, Entry] | None = None
        self._families: list[Family] = []
        self.errors: list[tuple[str, str]] = []

    def _collect(self) -> dict[str, Entry]:
        if self._entries is not None:
            return self._entries
        from .pm import get_manager

        manager = get_manager()
        entries: dict[str, Entry] = {}
        families: list[Family] = []
        hook = getattr(manager.pm.hook, self.hook)
        # call each implementation on its own so that we know who registered what,
        # and so that one failing plugin does not hide the others
        for impl in reversed(hook.get_hookimpls()):  # pluggy lists last-registered first
            try:
                impl.function(register=_Register(self, impl.plugin_name, entries, families))
            except Exception as exc:
                self.errors.append((impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        self._entries = entries
        self._families = families
        return entries

    def _family_names(self) -> dict[str, Family]:
        """Every family name (resolves the families: may import their library)."""
        self._collect()
        out: dict[str, Family] = {}
        for fam in self._families:
            try:
                names = fam.names()
            except Exception as exc:  # a broken library must not hide the other names
                self.errors.append((fam.plugin, f"{fam.description or 'names'}: {type(exc).__name__}: {exc}"))
                fam._names = frozenset()
                continue
            for n in names:
                out[n] = fam
        return out

    def _all(self) -> dict[str, Entry]:
        found = dict(self._collect())
        for n, fam in self._family_names().items():
            if n not in found:
                found[n] = fam.entry(n)
        return found

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._all() if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        found = self._all()
        return [found[n] for n in sorted(found) if fnmatch.fnmatchcase(n, pattern)]

    def summary(self) -> dict[str, dict[str, list[str]]]:
        """Per plugin: the names it registered one by one and the descriptions of its
        families, without resolving the families (``hpa plugins`` imports no library)."""
        out: dict[str, dict[str, list[str]]] = {}
        for entry in self._collect().values():
            out.setdefault(entry.plugin, {"names": [], "families": []})["names"].append(entry.name)
        for fam in self._families:
            out.setdefault(fam.plugin, {"names": [], "families": []})["families"].append(fam.description)
        return out

    def get(self, name: str) -> Entry:
        found = self._collect()
        if name in found:
            return found[name]
        fam = self._family_names().get(name)
        if fam is not None:
            return fam.entry(name)
        found = self._all()
        close = difflib.get_close_matches(name, list(found), n=5)
        listing = ", ".join(sorted(found)) if len(found) <= 30 else f"{len(found)} names; `hpa plugins --list {self.kind}s` shows them"
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        from .pm import get_manager

        failed = sorted({e.name for e in get_manager().load_errors} | {p for p, _ in self.errors})
        broken = f" Plugins that failed to load: {', '.join(failed)} (`hpa plugins` says why)." if failed else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Registered: {listing}.{broken}")

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)

    def reset(self) -> None:
        self._entries = None
        self._families = []
        self.errors = []


BACKBONES = Registry("backbone", "register_backbones")
SEGMENTERS = Registry("segmenter", "register_segmenters")
DENOISERS = Registry("denoiser", "register_denoisers")
LOSSES = Registry("loss", "register_losses")
REGISTRIES = {"backbone": BACKBONES, "segmenter": SEGMENTERS, "denoiser": DENOISERS, "loss": LOSSES}


def reset_registries() -> None:
    for reg in REGISTRIES.values():
        reg.reset()


def create_backbone(name: str, **kwargs: Any) -> Any:
    return BACKBONES.create(name, **kwargs)


def create_segmenter(name: str, **kwargs: Any) -> Any:
    return SEGMENTERS.create(name, **kwargs)


def create_denoiser(name: str, **kwargs: Any) -> Any:
    return DENOISERS.create(name, **kwargs)


def create_loss(name: str, **kwargs: Any) -> Any:
    return LOSSES.create(name, **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


def list_segmenters(pattern: str = "*") -> list[str]:
    return SEGMENTERS.names(pattern)


def list_denoisers(pattern: str = "*") -> list[str]:
    return DENOISERS.names(pattern)


def list_losses(pattern: str = "*") -> list[str]:
    return LOSSES.names(pattern)
