"""``wanctl-replay``'s command line in the house CLI style (help, ``--version``, mistakes).

``scorer.replay.main`` parses an everyday command line itself and comes here
for anything else, so a replay does not pay for the parser's start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from runtime import cli

from scorer.replay import run_replay


def replay(
    trace: Annotated[Path, typer.Argument(help="JSONL telemetry trace, e.g. recorded with `wanctl-tap --json`.")],
    config: Annotated[Path, typer.Option("--config", help="wanctl.yaml; its scorer section is used.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write decisions here instead of stdout.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop with exit 1 at the first invalid line.")] = False,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a config key, e.g. scorer.confidence.steer_threshold=60 (repeatable)."),
    ] = None,
    jobs: Annotated[int, typer.Option(
        "--jobs", min=1, help="Processes: the WANs are split over them (WANs linked by alternate stay together); "
                              "the output is the same as with one.")] = 1,
    version: Annotated[bool, cli.version_option(annotated=True)] = False,
) -> None:
    """Run the scorer engine offline over TRACE and print the decisions it emits.

    Invalid lines are skipped and reported on stderr with their line number and
    reason; exit 1 with --strict on the first one, exit 2 on a bad config.
    """
    raise typer.Exit(run_replay(trace, config, out, strict, set_ or [], jobs))


def app() -> None:
    command = cli.app()
    command.command(cls=cli.Command)(replay)
    command()
