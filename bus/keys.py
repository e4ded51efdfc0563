"""``wanctl-keys``: the CURVE key pairs that tcp:// bus endpoints require.

Layout of the keys directory on the bus host (``bus.keys_dir``)::

    server.key, server.key_secret   the bus's pair (the scorer's journal socket uses it too)
    client.key, client.key_secret   the bus host's own client pair (its scorer, tap, ...)
    authorized/<name>.key           the allow-list: one public key per client host
    hosts/<name>/                   what to copy to host <name> as its keys_dir:
        client.key, client.key_secret, server.key (public only)

A host other than the bus's gets only ``hosts/<name>/``: its own secret and
the server's public key.  Deleting ``authorized/<name>.key`` (``--revoke``)
locks that host out without touching any other.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from bus.sockets import AUTHORIZED_DIR, CLIENT_KEY, SERVER_KEY

HOSTS_DIR = "hosts"
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _pair(directory: Path, name: str) -> None:
    import zmq.auth

    if not (directory / f"{name}.key_secret").exists():
        zmq.auth.create_certificates(str(directory), name)
    os.chmod(directory / f"{name}.key_secret", 0o600)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _check_host(host: str) -> str:
    if not HOST_NAME.match(host) or host == CLIENT_KEY:
        raise ValueError(f"host name must be 1-64 letters, digits, '.', '_' or '-' (and not {CLIENT_KEY!r}), "
                         f"got {host!r}")
    return host


def make_keys(keys_dir: str | os.PathLike) -> Path:
    """Create the server pair and the bus host's own client pair, and allow-list its public key."""
    keys = _private_dir(Path(keys_dir))
    for name in (SERVER_KEY, CLIENT_KEY):
        _pair(keys, name)
    authorized = _private_dir(keys / AUTHORIZED_DIR)
    (authorized / f"{CLIENT_KEY}.key").write_bytes((keys / f"{CLIENT_KEY}.key").read_bytes())
    return keys


def make_host_keys(keys_dir: str | os.PathLike, host: str) -> Path:
    """A client pair for ``host`` in ``hosts/<host>/`` (with the server's public
    key beside it) and its public key in the allow-list; returns that directory."""
    _check_host(host)
    keys = make_keys(keys_dir)
    bundle = _private_dir(keys / HOSTS_DIR / host)
    _pair(bundle, CLIENT_KEY)
    shutil.copyfile(keys / f"{SERVER_KEY}.key", bundle / f"{SERVER_KEY}.key")
    (keys / AUTHORIZED_DIR / f"{host}.key").write_bytes((bundle / f"{CLIENT_KEY}.key").read_bytes())
    return bundle


def revoke_host(keys_dir: str | os.PathLike, host: str) -> bool:
    """Take ``host``'s public key off the allow-list; True if it was on it."""
    _check_host(host)
    try:
        (Path(keys_dir) / AUTHORIZED_DIR / f"{host}.key").unlink()
    except FileNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    import typer

    from runtime import cli

    app = cli.app()

    @app.command(cls=cli.Command)
    def command(
        keys_dir: str = typer.Argument(..., help="directory for the CURVE keys (bus.keys_dir on the bus host)"),
        host: str = typer.Option(None, "--host", metavar="NAME",
                                 help="also make a client key pair for this host and allow-list it"),
        revoke: str = typer.Option(None, "--revoke", metavar="NAME",
                                   help="take this host's public key off the allow-list"),
        version: bool = cli.version_option(),
    ) -> None:
        """Create the CURVE keys used when bus endpoints are tcp://.

        Without options: the server pair, the bus host's own client pair and
        the allow-list (authorized/).  With --host NAME: a client pair for that
        host in hosts/NAME/, its public key added to authorized/NAME.key; copy
        only hosts/NAME/ (its own secret and the server's public key, mode
        0700) to that host and point its bus.keys_dir there.  Never copy
        server.key_secret to a host that does not run the bus or the scorer.
        """
        try:
            if revoke:
                removed = revoke_host(keys_dir, revoke)
                print(f"{revoke}: {'removed from' if removed else 'was not in'} {Path(keys_dir) / AUTHORIZED_DIR}")
                return
            if host:
                bundle = make_host_keys(keys_dir, host)
                print(f"CURVE keys for {host} in {bundle} (copy this directory to {host} as its bus.keys_dir); "
                      f"public key allow-listed as {Path(keys_dir) / AUTHORIZED_DIR / (host + '.key')}")
                return
        except ValueError as error:
            print(f"wanctl-keys: {error}")
            raise typer.Exit(2) from None
        keys = make_keys(keys_dir)
        print(f"CURVE keys in {keys}: server.key(_secret), client.key(_secret), {AUTHORIZED_DIR}/client.key")

    app(argv)
