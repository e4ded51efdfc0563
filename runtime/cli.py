"""What every wanctl console script shares: ``--version`` and one style of ``--help``.

Every command is built with ``app()`` (or ``command()`` for one made with
``typer.run``-style functions): plain help text (flags show as flags, not
``<bool>``; the same layout in every script), arguments in the usage line as
``TRACE``/``[TRACE]`` (never ``{trace}``), and a ``--version`` option that
prints ``wanctl <version>`` and exits 0.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import typer
from typer.core import TyperCommand


def version() -> str:
    try:
        return metadata.version("wanctl")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"wanctl {version()}")
        raise typer.Exit(0)


def version_option(annotated: bool = False) -> Any:
    """The ``--version`` parameter every command takes (eager: it answers before anything is checked).

    ``annotated``: for ``Annotated[bool, version_option(True)] = False`` signatures (the default goes after).
    """
    decls = ("--version",) if annotated else (False, "--version")
    return typer.Option(*decls, callback=_print_version, is_eager=True, help="Print 'wanctl <version>' and exit.")


def config_option(what: str) -> Any:
    """The ``--config PATH`` parameter of the commands that read the pipeline's config,
    taken from ``$WANCTL_CONFIG`` when it is not given; ``what`` says what is read from it."""
    return typer.Option(None, "--config", metavar="PATH", envvar="WANCTL_CONFIG",
                        help=f"{what} [default: $WANCTL_CONFIG]")


class Command(TyperCommand):
    """A typer command whose usage line names arguments in capitals without braces."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}(\.\.\.)?$", lambda m: m.group(1).upper() + (m.group(2) or ""), piece)
                for piece in super().collect_usage_pieces(ctx)]


def app(help: str | None = None) -> typer.Typer:  # noqa: A002 - typer's own name
    """A one-command typer app in the house style; decorate its command with ``@app.command(cls=Command)``."""
    return typer.Typer(add_completion=False, rich_markup_mode=None, help=help)
