"""The `hpa` Typer app. Commands come from plugins (built-ins included) through the
``register_commands(app)`` hook; this module only builds the app and maps errors to
exit statuses (``hpacli.errors``: 2 refused, 3 failed while working)."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from .errors import exit_code_for, message_for, report

EPILOG = (
    "Exit status: 0 done; 1 a check found problems (hpa submit --check), or an unexpected "
    "error with a traceback (a bug: please report it with `hpa doctor`); 2 refused before "
    "anything changed, said in one line (a usage error, a bad input file, path or name, a "
    "missing store, a stage run too early); 3 a stage failed while working (recorded as failed "
    "in `hpa info`; run it again to resume) or the system failed (no space, out of memory)."
)


class HpaGroup(TyperGroup):
    """Built-in commands are there from the start; plugin commands are added when a
    listing or an unknown name needs them (see plugin_commands.py)."""

    _plugins_listed = False
    _plugins_real = False

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = message_for(exc)
            if message is None:
                raise
            report(message)
            raise typer.Exit(code=exit_code_for(exc)) from None

    def _add_plugin_commands(self, real: bool) -> None:
        if self._plugins_real or (self._plugins_listed and not real):
            return
        from .plugin_commands import listed_commands, real_commands

        found = real_commands() if real else listed_commands()
        self._plugins_listed = True
        self._plugins_real = real
        builtin = getattr(self, "_builtin_names", None)
        if builtin is None:
            builtin = self._builtin_names = set(self.commands)
        for name, (plugin, cmd) in found.items():
            if name in builtin:
                _clash(plugin, name)
                continue
            self.commands[name] = cmd
        _warn_load_errors()

    def get_command(self, ctx, cmd_name):
        cmd = self.commands.get(cmd_name)
        if cmd is None:
            self._add_plugin_commands(real=False)
            cmd = self.commands.get(cmd_name)
        return cmd

    def resolve_command(self, ctx, args):
        if args:
            cmd = self.commands.get(args[0])
            if cmd is None or getattr(cmd, "hpa_stub", False):
                self._add_plugin_commands(real=True)
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx):
        """Panels in pipeline order (data, training, inference, tools), then registration order."""
        from .options import PANEL_ORDER

        self._add_plugin_commands(real=False)
        names = list(self.commands)

        def key(name):
            panel = getattr(self.commands[name], "rich_help_panel", None)
            rank = PANEL_ORDER.index(panel) if panel in PANEL_ORDER else len(PANEL_ORDER)
            return (rank, names.index(name))

        return sorted(names, key=key)


def _clash(plugin: str, name: str) -> None:
    from ..pm import LoadError, get_manager

    manager = get_manager(entry_points=False)
    message = f"command {name!r} clashes with hpa's own {name!r}; the plugin's is ignored"
    if not any(e.name == plugin and e.message == message for e in manager.load_errors):
        info = manager.info.get(plugin)
        manager.load_errors.append(LoadError(plugin, info.package if info else "?", message))


_warned: set[tuple[str, str]] = set()


def _warn_load_errors() -> None:
    from rich.console import Console

    from ..pm import get_manager

    err = Console(stderr=True)
    for e in get_manager(entry_points=False).load_errors:
        if (e.name, e.message) in _warned:
            continue
        _warned.add((e.name, e.message))
        err.print(f"[yellow]warning:[/] plugin {e.name} ({e.package}) failed to load: {e.message}",
                  highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"hpa (hpacli) {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="hpa",
        cls=HpaGroup,
        help="hpa: from weak image-level labels to a label per cell, for Human Protein Atlas images.",
        epilog=EPILOG,
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ) -> None:
        """hpa: from weak image-level labels to a label per cell, for Human Protein Atlas images."""

    from ..pm import DEFAULT_PLUGINS, get_manager

    # the built-in commands only; plugin commands come when needed (HpaGroup)
    manager = get_manager(entry_points=False)
    for impl in reversed(manager.pm.hook.register_commands.get_hookimpls()):
        if impl.plugin_name in DEFAULT_PLUGINS:
            impl.function(app=app)
    return app


def main() -> None:
    app = build_app()
    app(prog_name="hpa")


if __name__ == "__main__":  # python -m hpacli.cli.app
    sys.exit(main())
