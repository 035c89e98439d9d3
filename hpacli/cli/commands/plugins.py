"""hpa plugins: which plugins are loaded and what each registers."""

from __future__ import annotations

from typing import Annotated

import typer

from ..options import JsonOpt

PLURAL = {"loss": "losses"}
SUPPLIED = {"backbone": ("num_classes", "in_chans"), "segmenter": ("device", "batch_size")}
SLOW_IMPORT_S = 1.0  # a plugin slower to import than this gets a hint


def command(
    list_kind: Annotated[
        str | None,
        typer.Option("--list", help="List the names of one kind: backbones, segmenters, denoisers, losses."),
    ] = None,
    pattern: Annotated[str, typer.Option("--pattern", "-p", help="Wildcard filter for --list, e.g. 'resnet*'.")] = "*",
    options: Annotated[
        tuple[str, str] | None,
        typer.Option("--options", metavar="KIND NAME", help="The options (-o key=value) one plugin object takes, "
                     "e.g. --options denoiser graph-l1."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the loaded plugins (built-ins included): package, version and what each registers."""
    from ...errors import HpaError
    from ...registry import REGISTRIES
    from ..render import print_json

    if options:
        _show_options(*options, as_json)
        return
    if list_kind:
        kind = {"losses": "loss"}.get(list_kind, list_kind.rstrip("s"))
        if kind not in REGISTRIES:
            raise HpaError(f"--list takes one of: {', '.join(PLURAL.get(k, k + 's') for k in REGISTRIES)}")
        entries = REGISTRIES[kind].entries(pattern)
        if as_json:
            print_json([{"name": e.name, "plugin": e.plugin, "description": e.description} for e in entries])
            return
        for entry in entries:
            typer.echo(f"{entry.name}\t{entry.plugin}\t{entry.description}")
        return
    data = plugins_report()
    if as_json:
        print_json(data)
        return
    _print_tables(data)


def plugins_report() -> dict:
    """Every plugin (built-ins first) with package, version, import time and what it
    registers; the plugins that failed. Imports the plugins but no library they register
    lazily (timm's names are a family: counted only by `--list backbones`)."""
    from ...pm import get_manager
    from ...registry import REGISTRIES

    manager = get_manager()
    registers: dict[str, dict[str, list[str]]] = {}
    for kind, reg in REGISTRIES.items():
        plural = PLURAL.get(kind, kind + "s")
        for plugin, found in reg.summary().items():
            mine = registers.setdefault(plugin, {})
            if found["names"]:
                mine[plural] = sorted(found["names"])
            if found["families"]:
                mine[f"{kind}_families"] = found["families"]
    for plugin, names in _commands_by_plugin().items():
        registers.setdefault(plugin, {})["commands"] = names
    plugins = [
        {"name": name, "package": info.package, "version": info.version, "builtin": info.builtin,
         "import_seconds": None if info.builtin else round(info.seconds, 3), "registers": registers.get(name, {})}
        for name, info in manager.info.items()
    ]
    failed = [{"name": e.name, "package": e.package, "error": e.message} for e in manager.load_errors]
    for reg in REGISTRIES.values():
        failed.extend({"name": p, "package": "?", "error": m} for p, m in reg.errors)
    return {"plugins": plugins, "failed": failed}


def _print_tables(data: dict) -> None:
    from rich.table import Table

    from ...progress import console
    from ..render import print_result

    table = Table(title="hpa plugins")
    table.add_column("plugin", overflow="fold")
    for col in ("package", "version", "import"):
        table.add_column(col, no_wrap=True)
    table.add_column("registers", overflow="fold")
    slow = []
    for p in data["plugins"]:
        lines = []
        for key, names in p["registers"].items():
            if key.endswith("_families"):
                lines.extend(f"{PLURAL.get(key[:-9], key[:-9] + 's')}: {d}" for d in names)
            else:
                shown = ", ".join(names) if len(names) <= 4 else f"{len(names)} ({', '.join(names[:3])}, ...)"
                lines.append(f"{key}: {shown}")
        sec = p["import_seconds"]
        table.add_row(p["name"], p["package"], p["version"], "" if sec is None else f"{sec:.2f} s",
                      "\n".join(lines) or "-")
        if sec is not None and sec > SLOW_IMPORT_S:
            slow.append(p)
    print_result(table)
    for p in slow:
        console.print(
            f"[yellow]note:[/] plugin {p['name']} ({p['package']}) takes {p['import_seconds']:.1f} s to import; "
            "import heavy libraries (torch) inside its factories and commands, not at the top of its module",
            highlight=False, soft_wrap=True,
        )
    if data["failed"]:
        bad = Table(title="plugins that failed", title_style="bold red")
        for col in ("plugin", "package", "error"):
            bad.add_column(col, overflow="fold")
        for e in data["failed"]:
            bad.add_row(e["name"], e["package"], e["error"])
        print_result(bad)


def _commands_by_plugin() -> dict[str, list[str]]:
    import typer as _typer

    from ...pm import get_manager

    out: dict[str, list[str]] = {}
    for impl in reversed(get_manager().pm.hook.register_commands.get_hookimpls()):
        probe = _typer.Typer()
        try:
            impl.function(app=probe)
        except Exception:
            continue
        names = [c.name or c.callback.__name__.replace("_", "-") for c in probe.registered_commands]
        if names:
            out[impl.plugin_name] = names
    return out


def _show_options(kind: str, name: str, as_json: bool = False) -> None:
    """One line per option of a plugin object's factory: its name and default."""
    import inspect

    from ...errors import HpaError
    from ...registry import REGISTRIES
    from ..render import print_json

    kind = {"losses": "loss"}.get(kind, kind.rstrip("s"))
    if kind not in REGISTRIES:
        raise HpaError(f"--options takes a kind ({', '.join(REGISTRIES)}) and a name")
    entry = REGISTRIES[kind].get(name)
    try:
        params = list(inspect.signature(entry.factory).parameters.values())
    except (TypeError, ValueError):
        params = []
    rows = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in SUPPLIED.get(kind, ()):
            continue
        if p.kind is p.VAR_KEYWORD:
            rows.append({"name": f"**{p.name}", "default": "(any other keyword)"})
        else:
            rows.append({"name": p.name, "default": "(required)" if p.default is p.empty else p.default})
    if as_json:
        print_json({"kind": kind, "name": name, "plugin": entry.plugin, "options": rows})
        return
    for r in rows:
        d = r["default"]
        typer.echo(f"{r['name']}\t{d if isinstance(d, str) and d.startswith('(') else repr(d)}")
    if not rows:
        typer.echo(f"{kind} {name!r} takes no options")
