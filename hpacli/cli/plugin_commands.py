"""Commands that entry-point plugins add to ``hpa``, without importing plugins needlessly.

``hpa ingest ...`` (any built-in command) never imports a plugin. Only three things need
plugin commands:

* running one (``hpa my-command ...``, its ``--help``, completing its options): the plugin
  is imported (:func:`real_commands`);
* listing them (``hpa --help``, ``hpa`` alone, Tab-completing a command name): plugin
  commands must be listed, but a plugin whose module imports torch at the top would make
  every listing take seconds. So the name, help line and panel of each plugin's commands
  are remembered in a small cache file, keyed by the plugin's installed files (a hash of
  its distribution's ``RECORD``, which changes with every install or update); a listing
  uses the remembered entries and imports only plugins it has no fresh entry for
  (:func:`listed_commands`). Editable installs (``pip install -e``) are never cached: their
  code changes without a new ``RECORD``.

The cache lives in ``$HPA_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpacli``, else
``~/.cache/hpacli``, one file per Python environment. It holds only names and help text;
losing it costs one slower listing. ``HPA_CACHE_DIR=`` (empty) turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

CACHE_ENV = "HPA_CACHE_DIR"
CACHE_FORMAT = 1


def cache_file() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        if not value.strip():
            return None
        base = Path(value)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "hpacli"
    env = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:16]
    return base / f"plugin-commands-{env}.json"


def stamp_of(ep) -> str | None:
    """What identifies the installed plugin's files; None when it cannot be cached."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None
    try:
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            return None
        record = dist.read_text("RECORD")
    except (OSError, ValueError):
        return None
    if not record:
        return None
    from .. import __version__

    key = "\n".join((dist.metadata["Name"] or "", dist.version or "", ep.name, ep.value, __version__, record))
    return hashlib.sha256(key.encode()).hexdigest()


def _read_cache(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("plugins"), dict):
        return {}
    return data["plugins"]


def _write_cache(path: Path | None, plugins: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "plugins": plugins}, indent=1))
        tmp.replace(path)
    except (OSError, TypeError, ValueError):
        pass  # a read-only home (or an odd help text) only costs slower listings


def _text(value) -> str | None:
    """A plain string, or None for unset values (Typer's DefaultPlaceholder included)."""
    return value if isinstance(value, str) else None


def _describe(cmd) -> dict:
    text = _text(cmd.short_help) or _text(cmd.help) or ""
    return {
        "name": cmd.name,
        "help": text.strip().split("\n\n")[0],
        "panel": _text(getattr(cmd, "rich_help_panel", None)),
        "hidden": cmd.hidden is True,
        "deprecated": cmd.deprecated is True,
    }


def _stub(desc: dict):
    """A listing-only command: its name, help line and panel (never run)."""
    from typer.core import TyperCommand

    cmd = TyperCommand(
        desc["name"], help=_text(desc.get("help")) or "", hidden=desc.get("hidden") is True,
        deprecated=desc.get("deprecated") is True, rich_help_panel=_text(desc.get("panel")), rich_markup_mode="rich",
    )
    cmd.hpa_stub = True
    return cmd


def _commands_of(manager, plugin_name: str) -> tuple[dict, bool]:
    """The click commands that one loaded plugin's ``register_commands`` adds, and
    whether it added them without an error."""
    import typer
    from typer.main import get_group

    from ..pm import LoadError

    out: dict = {}
    ok = True
    for impl in reversed(manager.pm.hook.register_commands.get_hookimpls()):
        if impl.plugin_name != plugin_name:
            continue
        probe = typer.Typer(rich_markup_mode="rich")
        try:
            impl.function(app=probe)
            group = get_group(probe)
        except Exception as exc:  # one broken plugin must not break hpa
            info = manager.info.get(plugin_name)
            manager.load_errors.append(
                LoadError(plugin_name, info.package if info else "?", f"register_commands: {type(exc).__name__}: {exc}")
            )
            ok = False
            continue
        out.update(group.commands)
    return out, ok


def _plugin_names(manager) -> list[str]:
    from ..pm import DEFAULT_PLUGINS

    names: list[str] = []
    for impl in reversed(manager.pm.hook.register_commands.get_hookimpls()):
        if impl.plugin_name not in DEFAULT_PLUGINS and impl.plugin_name not in names:
            names.append(impl.plugin_name)
    return names


def real_commands() -> dict[str, tuple[str, object]]:
    """Every plugin's commands, the plugins imported: ``{name: (plugin, command)}``."""
    from ..pm import discover, get_manager

    manager = get_manager()
    out: dict[str, tuple[str, object]] = {}
    broken: set[str] = set()
    for plugin in _plugin_names(manager):
        commands, ok = _commands_of(manager, plugin)
        if not ok:
            broken.add(plugin)
        for name, cmd in commands.items():
            out.setdefault(name, (plugin, cmd))
    # refresh the listing cache while everything is loaded anyway
    path = cache_file()
    cache = _read_cache(path)
    changed = False
    for ep in discover():
        stamp = stamp_of(ep)
        if stamp is None or not manager.pm.has_plugin(ep.name) or ep.name in broken:
            continue
        entry = {"stamp": stamp, "commands": [_describe(c) for n, (p, c) in out.items() if p == ep.name]}
        if cache.get(ep.name) != entry:
            cache[ep.name] = entry
            changed = True
    if changed:
        _write_cache(path, cache)
    return out


def listed_commands() -> dict[str, tuple[str, object]]:
    """Every plugin's commands for a listing: remembered ones as stubs, the others imported."""
    from ..pm import discover, get_manager

    manager = get_manager(entry_points=False)
    if manager.fully_loaded:  # already imported (a registry was used, or a plugin registered at run time)
        return real_commands()
    path = cache_file()
    cache = _read_cache(path)
    changed = False
    out: dict[str, tuple[str, object]] = {}
    for ep in discover():
        stamp = stamp_of(ep)
        entry = cache.get(ep.name)
        if stamp is not None and isinstance(entry, dict) and entry.get("stamp") == stamp:
            for desc in entry.get("commands") or []:
                if isinstance(desc, dict) and isinstance(desc.get("name"), str):
                    out.setdefault(desc["name"], (ep.name, _stub(desc)))
            continue
        if not manager.load_entry_point(ep):
            continue
        commands, ok = _commands_of(manager, ep.name)
        for name, cmd in commands.items():
            out.setdefault(name, (ep.name, cmd))
        if stamp is not None and ok:
            cache[ep.name] = {"stamp": stamp, "commands": [_describe(c) for c in commands.values()]}
            changed = True
    if changed:
        _write_cache(path, cache)
    return out
