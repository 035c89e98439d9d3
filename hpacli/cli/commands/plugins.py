"""hpa plugins: which plugins are loaded and what each registers."""

from __future__ import annotations

from typing import Annotated

import typer


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
) -> None:
    """Show the loaded plugins (built-ins included): package, version and what each registers."""
    from rich.table import Table

    from ...errors import HpaError
    from ...pm import get_manager
    from ...progress import console
    from ...registry import REGISTRIES

    manager = get_manager()
    if options:
        _show_options(*options)
        return
    if list_kind:
        kind = {"losses": "loss"}.get(list_kind, list_kind.rstrip("s"))
        if kind not in REGISTRIES:
            raise HpaError(f"--list takes one of: {', '.join(k + 's' for k in REGISTRIES)}")
        for entry in REGISTRIES[kind].entries(pattern):
            typer.echo(f"{entry.name}\t{entry.plugin}\t{entry.description}")
        return
    registered: dict[str, list[str]] = {}
    for kind, reg in REGISTRIES.items():
        by_plugin: dict[str, list[str]] = {}
        for entry in reg.entries():
            by_plugin.setdefault(entry.plugin, []).append(entry.name)
        for plugin, names in by_plugin.items():
            shown = ", ".join(names) if len(names) <= 4 else f"{len(names)} ({', '.join(names[:3])}, ...)"
            registered.setdefault(plugin, []).append(f"{PLURAL.get(kind, kind + 's')}: {shown}")
    commands = _commands_by_plugin()
    for plugin, names in commands.items():
        registered.setdefault(plugin, []).append(f"commands: {', '.join(names)}")
    table = Table(title="hpa plugins")
    for col in ("plugin", "package", "version", "registers"):
        table.add_column(col, overflow="fold")
    for name, info in manager.info.items():
        table.add_row(name, info.package, info.version, "\n".join(registered.get(name, [])) or "-")
    console.print(table)
    errors = list(manager.load_errors)
    for reg in REGISTRIES.values():
        errors.extend(type("E", (), {"name": p, "package": "?", "message": m}) for p, m in reg.errors)
    if errors:
        bad = Table(title="plugins that failed", title_style="bold red")
        for col in ("plugin", "package", "error"):
            bad.add_column(col, overflow="fold")
        for e in errors:
            bad.add_row(e.name, e.package, e.message)
        console.print(bad)


PLURAL = {"loss": "losses"}
SUPPLIED = {"backbone": ("num_classes", "in_chans"), "segmenter": ("device", "batch_size")}


def _show_options(kind: str, name: str) -> None:
    """One line per option of a plugin object's factory: name and default."""
    import inspect

    from ...errors import HpaError
    from ...registry import REGISTRIES

    kind = {"losses": "loss"}.get(kind, kind.rstrip("s"))
    if kind not in REGISTRIES:
        raise HpaError(f"--options takes a kind ({', '.join(REGISTRIES)}) and a name")
    entry = REGISTRIES[kind].get(name)
    try:
        params = list(inspect.signature(entry.factory).parameters.values())
    except (TypeError, ValueError):
        params = []
    shown = 0
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in SUPPLIED.get(kind, ()):
            continue
        if p.kind is p.VAR_KEYWORD:
            typer.echo(f"**{p.name}\t(any other keyword)")
        else:
            typer.echo(f"{p.name}\t{'(required)' if p.default is p.empty else repr(p.default)}")
        shown += 1
    if not shown:
        typer.echo(f"{kind} {name!r} takes no options")


def _commands_by_plugin() -> dict[str, list[str]]:
    import typer as _typer

    from ...pm import get_manager

    out: dict[str, list[str]] = {}
    for impl in get_manager().pm.hook.register_commands.get_hookimpls():
        probe = _typer.Typer()
        try:
            impl.function(app=probe)
        except Exception:
            continue
        names = [c.name or c.callback.__name__.replace("_", "-") for c in probe.registered_commands]
        if names:
            out[impl.plugin_name] = names
    return out
