"""Registries of named backbones, segmenters, denoisers and losses, filled by plugin hooks.

``create_backbone("densenet121-hpa", num_classes=19)``, ``list_backbones("resnet*")``...
Each registry asks every plugin's hook on first use (and again after a plugin is added or
removed), and remembers which plugin registered which name (``hpa plugins`` shows it).

Names are taken in plugin order: hpacli's built-ins first, then entry-point plugins. A
name registered twice keeps its first owner; the later registration is refused and
reported (``Registry.errors``, shown by ``hpa plugins``), never silently dropped.

A hook may also register a *family* of names that is listed lazily
(``register.family(list_names, factory, description)``, ``factory(name, **kw)``): the
built-in timm backbones, whose names cannot be listed without importing torch. Shell
completion lists names without expanding families (``names(expand=False)``).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .errors import InputError, PluginError, UnknownNameError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""


@dataclass
class Family:
    list_names: Callable[[], Iterable[str]]
    factory: Callable[..., Any]
    plugin: str
    order: int
    description: str = ""
    _names: set[str] | None = field(default=None, repr=False)

    def names(self) -> set[str]:
        if self._names is None:
            self._names = {str(n) for n in self.list_names()}
        return self._names


class LazyFactory:
    """A factory named by ``"module:attribute"``, imported on first call; its signature (for
    option checks) is the target's, also imported only when asked."""

    def __init__(self, target: str) -> None:
        self.target = target

    def _resolve(self) -> Callable[..., Any]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._resolve())


def lazy(target: str) -> LazyFactory:
    return LazyFactory(target)


def factory_parameters(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword names a factory accepts, or None when it takes any (``**kwargs``) or its
    signature cannot be read."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names


class _Register:
    """The ``register`` callback handed to one plugin's hook."""

    def __init__(self, registry: Registry, plugin: str, order: int, entries: dict, families: list) -> None:
        self.registry, self.plugin, self.order = registry, plugin, order
        self._entries, self._families = entries, families

    def __call__(self, name: str, factory: Callable[..., Any], description: str = "") -> None:
        kind = self.registry.kind
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.plugin} registered a {kind} without a name")
        if not callable(factory):
            raise PluginError(f"plugin {self.plugin} registered {kind} {name!r} with a non-callable factory")
        old = self._entries.get(name)
        if old is not None:
            self.registry.errors.append((self.plugin, f"registers {kind} {name!r}, which plugin {old[0].plugin} "
                                                      "registered first; ignored (choose another name)"))
            return
        self._entries[name] = (Entry(name, factory, self.plugin, description), self.order)

    def family(self, list_names: Callable[[], Iterable[str]], factory: Callable[..., Any],
               description: str = "") -> None:
        """Register every name ``list_names()`` gives (called lazily); ``factory(name, **kw)``."""
        if not callable(list_names) or not callable(factory):
            raise PluginError(f"plugin {self.plugin} registered a {self.registry.kind} family without callables")
        self._families.append(Family(list_names, factory, self.plugin, self.order, description))


class Registry:
    def __init__(self, kind: str, hook: str) -> None:
        self.kind = kind
        self.hook = hook
        self._entries: dict[str, tuple[Entry, int]] | None = None
        self._families: list[Family] = []
        self._generation: tuple | None = None
        self._checked_families = False
        self.errors: list[tuple[str, str]] = []

    def _collect(self) -> dict[str, tuple[Entry, int]]:
        from .pm import get_manager

        manager = get_manager()
        if self._entries is not None and self._generation == (id(manager), manager.generation):
            return self._entries
        self.errors = []
        entries: dict[str, tuple[Entry, int]] = {}
        families: list[Family] = []
        hook = getattr(manager.pm.hook, self.hook)
        # in registration order (built-ins first); each implementation on its own, so that we
        # know who registered what and one failing plugin does not hide the others
        for order, impl in enumerate(hook.get_hookimpls()):
            try:
                impl.function(register=_Register(self, impl.plugin_name, order, entries, families))
            except Exception as exc:
                self.errors.append((impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        self._entries, self._families = entries, families
        self._generation = (id(manager), manager.generation)
        self._checked_families = False
        return entries

    def _names_of(self, fam: Family) -> set[str]:
        """A family's names; a library that fails to list them is reported, not fatal."""
        try:
            return fam.names()
        except Exception as exc:  # a broken library must not hide the other names
            self.errors.append((fam.plugin, f"{fam.description or 'names'}: {type(exc).__name__}: {exc}"))
            fam._names = set()
            return fam._names

    def _shadowed(self, name: str, order: int) -> Family | None:
        """The earlier family that also has ``name`` (it wins), if any."""
        for fam in self._families:
            if fam.order < order and name in self._names_of(fam):
                return fam
        return None

    def _check_families(self) -> None:
        """Refuse (and report) names that a plugin registered but an earlier family holds."""
        if self._checked_families:
            return
        self._checked_families = True
        for name, (entry, order) in list(self._entries.items()):
            fam = self._shadowed(name, order) if any(f.order < order for f in self._families) else None
            if fam is not None:
                del self._entries[name]
                self.errors.append((entry.plugin, f"registers {self.kind} {name!r}, which plugin {fam.plugin} "
                                                  "registered first; ignored (choose another name)"))

    def names(self, pattern: str = "*", expand: bool = True) -> list[str]:
        """Registered names matching ``pattern``; ``expand=False`` leaves out the names of
        families (no heavy import: for shell completion)."""
        entries = self._collect()
        found = set(entries)
        if expand and self._families:
            self._check_families()
            found = set(self._entries)
            for fam in self._families:
                found |= self._names_of(fam)
        return sorted(n for n in found if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self.get(n) for n in self.names(pattern)]

    def get(self, name: str) -> Entry:
        entries = self._collect()
        hit = entries.get(name)
        if hit is not None and not any(f.order < hit[1] for f in self._families):
            return hit[0]
        for fam in sorted(self._families, key=lambda f: f.order):
            if hit is not None and fam.order > hit[1]:
                break
            if name in self._names_of(fam):
                if hit is not None:
                    self._check_families()
                return Entry(name, partial(fam.factory, name), fam.plugin, fam.description)
        if hit is not None:
            return hit[0]
        found = self.names()
        close = difflib.get_close_matches(name, found, n=5)
        listing = ", ".join(found) if len(found) <= 30 else f"{len(found)} names; `hpa plugins --list {self.kind}s` shows them"
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        from .pm import get_manager

        failed = sorted({e.name for e in get_manager().load_errors} | {p for p, _ in self.errors})
        broken = f" Plugins that failed to load: {', '.join(failed)} (`hpa plugins` says why)." if failed else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Registered: {listing}.{broken}")

    def summary(self) -> dict[str, dict[str, list[str]]]:
        """Per plugin: the names it registered one by one and the descriptions of its
        families, without resolving the families (``hpa plugins`` imports no library)."""
        out: dict[str, dict[str, list[str]]] = {}
        for entry, _ in self._collect().values():
            out.setdefault(entry.plugin, {"names": [], "families": []})["names"].append(entry.name)
        for fam in self._families:
            out.setdefault(fam.plugin, {"names": [], "families": []})["families"].append(fam.description)
        return out

    def parameters(self, name: str) -> list[str] | None:
        """The option names the factory of ``name`` accepts (None: any)."""
        return factory_parameters(self.get(name).factory)

    def check_options(self, name: str, options: dict, supplied: Iterable[str] = ()) -> None:
        """InputError (one line) when ``options`` has keys the factory of ``name`` does not
        take, naming them and the accepted ones (``supplied``: keys hpacli passes itself)."""
        accepted = self.parameters(name)
        if accepted is None:
            return
        unknown = sorted(k for k in options if k not in accepted)
        if unknown:
            own = [a for a in accepted if a not in set(supplied)]
            raise InputError(f"{self.kind} {name!r} has no option {', '.join(unknown)}; "
                             f"it takes: {', '.join(own) if own else 'no options'}")

    def accepts(self, name: str, key: str) -> bool:
        accepted = self.parameters(name)
        return accepted is None or key in accepted

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
    """The raw module a backbone's factory returns; :func:`hpacli.models.create_model`
    builds a checked, stamped model from it."""
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


def completer(kind: str) -> Callable[[str], list[str]]:
    """A shell-completion function for names of ``kind`` (families are not expanded, so
    completing imports no torch)."""

    def complete(incomplete: str) -> list[str]:
        try:
            return REGISTRIES[kind].names(f"{incomplete}*", expand=False)
        except Exception:  # completion must never fail loudly
            return []

    return complete
