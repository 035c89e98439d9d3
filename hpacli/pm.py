"""The plugin manager: built-in plugins, entry-point plugins, allow/deny by env var.

``HPA_LOAD_PLUGINS`` controls entry-point loading (built-ins always load):

* unset: load every plugin installed under the ``hpa`` entry-point group;
* empty or ``none``: load none (useful in tests, or to rescue a broken install);
* ``name1,name2``: load only those entry-point names.

A plugin that fails to import or to register is recorded in ``load_errors`` and
reported; it never stops ``hpa`` from starting.

Loading is in two steps so that ``hpa`` starts fast whatever plugins are installed:
the built-ins (cheap) load first; entry-point plugins are imported only when something
needs them (a registry lookup, ``hpa plugins``, a plugin command, the list of commands of
``hpa --help``). ``hpa info`` or ``hpa ingest`` never import a plugin.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "hpa"
ENV_LOAD = "HPA_LOAD_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "hpacli.builtin.backbones",
    "hpacli.builtin.segmenters",
    "hpacli.builtin.denoisers",
    "hpacli.builtin.losses",
    "hpacli.builtin.commands",
)


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    builtin: bool
    seconds: float = 0.0  # time to import the plugin's module (entry points)


@dataclass
class LoadError:
    name: str
    package: str
    message: str


def discover() -> list:
    """The allowed ``hpa`` entry points (``HPA_LOAD_PLUGINS``), found without importing them."""
    allowed = _allowed()
    if allowed is not None and not allowed:
        return []
    seen: set[str] = set()
    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (allowed is not None and ep.name not in allowed) or ep.name in seen:
            continue
        seen.add(ep.name)
        out.append(ep)
    return out


def package_of(ep) -> tuple[str, str]:
    """(distribution name, version) of an entry point, '?' when unknown."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


def _allowed() -> set[str] | None:
    value = os.environ.get(ENV_LOAD)
    if value is None:
        return None
    value = value.strip()
    if value.lower() in ("", "none", "0"):
        return set()
    return {v.strip() for v in value.split(",") if v.strip()}


class _Manager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("hpa")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.load_errors: list[LoadError] = []
        self._builtins_loaded = False
        self._loaded = False
        self._tried: set[str] = set()
        # bumped whenever the set of plugins changes; the registries re-ask the hooks then
        self.generation = 0

    def load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        from . import __version__

        for modname in DEFAULT_PLUGINS:
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self.info[modname] = PluginInfo(modname, "hpacli", __version__, True)
        self.generation += 1

    def load(self) -> None:
        """Built-ins and every allowed entry-point plugin."""
        self.load_builtins()
        if self._loaded:
            return
        self._loaded = True
        for ep in discover():
            self.load_entry_point(ep)

    @property
    def fully_loaded(self) -> bool:
        return self._loaded

    def load_entry_point(self, ep) -> bool:
        """Import and register one entry point (once); False if it failed."""
        self.load_builtins()
        if ep.name in self._tried:
            return self.pm.has_plugin(ep.name)
        self._tried.add(ep.name)
        package, pkg_version = package_of(ep)
        if self.pm.has_plugin(ep.name):
            return True
        start = time.perf_counter()
        try:
            module = ep.load()
            self.pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not break hpa
            self.load_errors.append(LoadError(ep.name, package, f"{type(exc).__name__}: {exc}"))
            return False
        self.info[ep.name] = PluginInfo(ep.name, package, pkg_version, False, time.perf_counter() - start)
        self.generation += 1
        return True

    def register(self, plugin: object, name: str, package: str = "(runtime)", version: str = "") -> None:
        """Register a plugin object at run time (tests, notebooks)."""
        self.load()
        self.pm.register(plugin, name=name)
        self.info[name] = PluginInfo(name, package, version, False)
        self.generation += 1

    def unregister(self, name: str) -> None:
        self.load()
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        self.info.pop(name, None)
        self.generation += 1

    def is_builtin(self, name: str) -> bool:
        info = self.info.get(name)
        return bool(info and info.builtin)


_manager = _Manager()


def get_manager(entry_points: bool = True) -> _Manager:
    """The plugin manager with the built-ins loaded, and (by default) every entry-point plugin."""
    if entry_points:
        _manager.load()
    else:
        _manager.load_builtins()
    return _manager


def register_plugin(plugin: object, name: str, package: str = "(runtime)", version: str = "") -> None:
    """Register a plugin object (a module or any object with hook implementations); the
    registries see it on their next lookup."""
    get_manager().register(plugin, name, package, version)


def unregister_plugin(name: str) -> None:
    get_manager().unregister(name)
