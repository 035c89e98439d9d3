"""The `hpa` Typer app. Commands come from plugins (built-ins included) through the
``register_commands(app)`` hook; this module only builds the app and maps errors."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from .errors import message_for, report


class HpaGroup(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = message_for(exc)
            if message is None:
                raise
            report(message)
            raise typer.Exit(code=2) from None

    def list_commands(self, ctx):
        """Panels in pipeline order (data, training, inference, tools), then registration order."""
        from .options import PANEL_ORDER

        names = list(self.commands)

        def key(name):
            panel = getattr(self.commands[name], "rich_help_panel", None)
            rank = PANEL_ORDER.index(panel) if panel in PANEL_ORDER else len(PANEL_ORDER)
            return (rank, names.index(name))

        return sorted(names, key=key)


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

    from ..pm import get_manager

    manager = get_manager()
    for impl in reversed(manager.pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(app=app)
        except Exception as exc:  # one broken plugin must not break hpa
            from ..pm import LoadError

            manager.load_errors.append(LoadError(impl.plugin_name, "?", f"register_commands: {exc}"))
    if manager.load_errors:
        from rich.console import Console

        err = Console(stderr=True)
        for e in manager.load_errors:
            err.print(f"[yellow]warning:[/] plugin {e.name} ({e.package}) failed to load: {e.message}", highlight=False, soft_wrap=True)
    return app


def main() -> None:
    app = build_app()
    app(prog_name="hpa")


if __name__ == "__main__":  # python -m hpacli.cli.app
    sys.exit(main())
