"""``wanctl-keys``: the CURVE key pairs that tcp:// bus endpoints require."""

from __future__ import annotations

import os
from pathlib import Path

from bus.sockets import AUTHORIZED_DIR, CLIENT_KEY, SERVER_KEY


def make_keys(keys_dir: str | os.PathLike) -> Path:
    """Create the server and client key pairs and authorize the client key."""
    import zmq.auth

    keys = Path(keys_dir)
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys, 0o700)
    for name in (SERVER_KEY, CLIENT_KEY):
        if not (keys / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(keys), name)
        os.chmod(keys / f"{name}.key_secret", 0o600)
    authorized = keys / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True, mode=0o700)
    (authorized / f"{CLIENT_KEY}.key").write_bytes((keys / f"{CLIENT_KEY}.key").read_bytes())
    return keys


def main(argv: list[str] | None = None) -> None:
    import typer

    from runtime import cli

    app = cli.app()

    @app.command(cls=cli.Command)
    def command(keys_dir: str = typer.Argument(..., help="directory for the CURVE keys (bus.keys_dir)"),
                version: bool = cli.version_option()) -> None:
        """Create the CURVE server and client keys used when bus endpoints are tcp://.

        Copy the directory (mode 0700) to every host that runs a stage; a process
        without client.key_secret cannot publish to or read from the bus.
        """
        keys = make_keys(keys_dir)
        print(f"CURVE keys in {keys}: server.key(_secret), client.key(_secret), {AUTHORIZED_DIR}/client.key")

    app(argv)
