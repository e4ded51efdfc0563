"""``wanctl-stage-events``: a supervisord event listener for stages that die or give up.

supervisord runs it as ``[eventlistener:stage-events]`` subscribed to
``PROCESS_STATE_EXITED`` and ``PROCESS_STATE_FATAL``.  An unexpected exit or a
FATAL state (supervisord stopped retrying) is appended as one JSON line to
``var/stage-events.jsonl`` (``--log``), written to stderr (supervisord's log
for the listener) and, with ``--webhook URL`` or ``WANCTL_WEBHOOK_URL``,
POSTed as JSON.  Expected exits (``supervisorctl stop``) are not reported.

The listener protocol: write ``READY\\n``, read one header line and a payload
of ``len`` bytes from stdin, act, write ``RESULT 2\\nOK``, repeat.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional


def parse_tokens(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def event_record(headers: dict[str, str], payload: str) -> dict | None:
    """What to report for one event, or None when it is an expected exit."""
    name = headers.get("eventname", "")
    body_line, _, _ = payload.partition("\n")
    body = parse_tokens(body_line)
    if name == "PROCESS_STATE_EXITED" and body.get("expected") == "1":
        return None
    if name not in ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"):
        return None
    return {
        "wall": time.time(),
        "event": "fatal" if name == "PROCESS_STATE_FATAL" else "unexpected_exit",
        "group": body.get("groupname"),
        "process": body.get("processname"),
        "from_state": body.get("from_state"),
        "pid": body.get("pid"),
    }


def post(url: str, record: dict) -> str | None:
    try:
        request = urllib.request.Request(url, data=json.dumps(record).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=3):
            return None
    except Exception as error:  # noqa: BLE001 - a webhook outage must not stop the listener
        return f"webhook {url}: {error}"


def serve(stdin, stdout, log_path: Path, webhook: str | None) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        headers = parse_tokens(line)
        payload = stdin.read(int(headers.get("len", "0")))
        record = event_record(headers, payload)
        if record is not None:
            text = json.dumps(record)
            print(f"stage-events: {text}", file=sys.stderr, flush=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(text + "\n")
            if webhook:
                problem = post(webhook, record)
                if problem:
                    print(f"stage-events: {problem}", file=sys.stderr, flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main(argv: list[str] | None = None) -> None:
    import typer

    from runtime import cli

    app = cli.app()

    @app.command(cls=cli.Command, help=(
        "A supervisord event listener ([eventlistener:stage-events], PROCESS_STATE_EXITED and "
        "PROCESS_STATE_FATAL): each unexpected exit or FATAL state of a stage is appended to --log as one "
        "JSON line, written to stderr and, with --webhook, POSTed as JSON. Expected exits (supervisorctl "
        "stop) are not reported. Speaks the listener protocol on stdin and stdout: run it under supervisord."))
    def command(
        log: Path = typer.Option(Path("var/stage-events.jsonl"), "--log", metavar="PATH",
                                 help="JSONL file of reported events"),
        webhook: Optional[str] = typer.Option(None, "--webhook", metavar="URL", envvar="WANCTL_WEBHOOK_URL",
                                              help="POST each event as JSON here (default: $WANCTL_WEBHOOK_URL)"),
        version: bool = cli.version_option(),
    ) -> None:
        serve(sys.stdin, sys.stdout, log, webhook)

    app(argv)


if __name__ == "__main__":
    main()
