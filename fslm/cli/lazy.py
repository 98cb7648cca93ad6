"""Verbs imported on first use: `fslm --help` and `fslm models` must not pay for torch, transformers or fastapi."""

from __future__ import annotations

import importlib
from typing import ClassVar, NamedTuple

import click
import typer
from typer.core import TyperCommand, TyperGroup


class Verb(NamedTuple):
    module: str  # fslm.cli.<module>
    attr: str  # a command function (wrapped in `guarded`) or a typer.Typer sub-app
    summary: str  # what `fslm --help` lists; tests/cli checks it equals the loaded command's first help paragraph
    extra: str | None = None  # the optional extra (fslm/extras.py) the verb needs; None = the core


class LazyGroup(TyperGroup):
    """A typer group whose `verbs` are imported only when run, or asked for their own --help."""

    verbs: ClassVar[dict[str, Verb]] = {}
    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in self.verbs if name not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.verbs:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # the group's own --help needs only names and summaries
            return TyperCommand(cmd_name, help=self.verbs[cmd_name].summary)
        self.commands[cmd_name] = self.load(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def load(self, name: str) -> click.Command:
        """Import the verb's module and build its click command exactly as an eager registration would."""
        from fslm.cli.common import guarded

        verb = self.verbs[name]
        if verb.extra is not None:
            from fslm.extras import missing

            if missing(verb.extra):
                return _needs_extra(name, verb)
        target = getattr(importlib.import_module(f"fslm.cli.{verb.module}"), verb.attr)
        holder = typer.Typer()
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=name)
        else:
            holder.command(name)(guarded(target))
        return typer.main.get_group(holder).commands[name]


def _needs_extra(name: str, verb: Verb) -> click.Command:
    """Stands in for a verb whose extra is not installed: any use of it prints the install command and exits 2."""
    from fslm.cli.common import guarded
    from fslm.extras import require

    @guarded
    def unavailable() -> None:
        require(verb.extra, f"`fslm {name}`")

    return click.Command(
        name,
        help=verb.summary,
        callback=unavailable,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
    )
