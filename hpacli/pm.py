"""The plugin manager: built-in plugins, entry-point plugins, allow/deny by env var.

``HPA_LOAD_PLUGINS`` controls entry-point loading (built-ins always load):

* unset: load every plugin installed under the ``hpa`` entry-point group;
* empty or ``none``: load none (useful in tests, or to rescue a broken install);
* ``name1,name2``: load only those entry-point names.

A plugin that fails to import or to register is recorded in ``load_errors`` and
reported; it never stops ``hpa`` from starting.
"""

from __future__ import annotations

import importlib
import os
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


@dataclass
class LoadError:
    name: str
    package: str
    message: str


class _Manager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("hpa")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.load_errors: list[LoadError] = []
        self._loaded = False
        # bumped whenever the set of plugins changes; the registries re-ask the hooks then
        self.generation = 0

    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from . import __version__

        for modname in DEFAULT_PLUGINS:
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self.info[modname] = PluginInfo(modname, "hpacli", __version__, True)
        self._load_entry_points()

    def _allowed(self) -> set[str] | None:
        value = os.environ.get(ENV_LOAD)
        if value is None:
            return None
        value = value.strip()
        if value.lower() in ("", "none", "0"):
            return set()
        return {v.strip() for v in value.split(",") if v.strip()}

    def _load_entry_points(self) -> None:
        allowed = self._allowed()
        if allowed is not None and not allowed:
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "?"
            pkg_version = dist.version if dist is not None else "?"
            if self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break hpa
                self.load_errors.append(LoadError(ep.name, package, f"{type(exc).__name__}: {exc}"))
                continue
            self.info[ep.name] = PluginInfo(ep.name, package, pkg_version, False)

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


def get_manager() -> _Manager:
    _manager.load()
    return _manager


def register_plugin(plugin: object, name: str, package: str = "(runtime)", version: str = "") -> None:
    """Register a plugin object (a module or any object with hook implementations); the
    registries see it on their next lookup."""
    get_manager().register(plugin, name, package, version)


def unregister_plugin(name: str) -> None:
    get_manager().unregister(name)
