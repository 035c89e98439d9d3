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
from typing import Any

from .errors import PluginError, UnknownNameError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""


class Registry:
    def __init__(self, kind: str, hook: str) -> None:
        self.kind = kind
        self.hook = hook
        self._entries: dict[str, Entry] | None = None
        self.errors: list[tuple[str, str]] = []

    def _collect(self) -> dict[str, Entry]:
        if self._entries is not None:
            return self._entries
        from .pm import get_manager

        manager = get_manager()
        entries: dict[str, Entry] = {}
        hook = getattr(manager.pm.hook, self.hook)
        # call each implementation on its own so that we know who registered what,
        # and so that one failing plugin does not hide the others
        for impl in reversed(hook.get_hookimpls()):  # pluggy lists last-registered first

            def register(name: str, factory: Callable[..., Any], description: str = "", _p=impl.plugin_name):
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_p} registered a {self.kind} without a name")
                if not callable(factory):
                    raise PluginError(f"plugin {_p} registered {self.kind} {name!r} with a non-callable factory")
                entries[name] = Entry(name, factory, _p, description)

            try:
                impl.function(register=register)
            except Exception as exc:
                self.errors.append((impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        self._entries = entries
        return entries

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._collect() if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        found = self._collect()
        return [found[n] for n in self.names(pattern)]

    def get(self, name: str) -> Entry:
        found = self._collect()
        if name in found:
            return found[name]
        close = difflib.get_close_matches(name, list(found), n=5)
        listing = ", ".join(sorted(found)) if len(found) <= 30 else f"{len(found)} names; `hpa plugins --list {self.kind}s` shows them"
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Registered: {listing}")

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)

    def reset(self) -> None:
        self._entries = None
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
