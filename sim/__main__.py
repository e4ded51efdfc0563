"""``wanctl-sim``: the built-in RouterOS API simulator, on its own.

    wanctl-sim [--config PATH] [--scenario PATH] [--host 127.0.0.1] [--port 8728]
               [--username admin] [--password admin]
               [--tls-cert PEM --tls-key PEM] [--pre-7-18] [--list]

Prints ``listening on HOST:PORT`` once it accepts connections and runs until
interrupted (SIGINT or SIGTERM).  With ``--config`` it serves the config's
``router.port``, and exits 0 at once, saying why, when the config names a
real router (``router.host``): supervisord then leaves it stopped.  With no scenario it plays the shipped
default one: two WANs, ``wan1`` congested from t=15 s for 20 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from typing import Optional

import typer

from runtime import cli

from proto.config import config_or_exit, router_address
from sim.router import Router
from sim.scenario import ScenarioError, load_scenario, shipped_scenarios
from sim.server import SimServer

app = cli.app()


def _resolve(scenario: str | None) -> str | None:
    """A path, or the name of a shipped scenario (``flapping``)."""
    if scenario is None:
        return None
    shipped = shipped_scenarios()
    return str(shipped[scenario]) if scenario in shipped else scenario


async def _serve(server: SimServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"listening on {server.host}:{server.port}", flush=True)
    await stop.wait()
    await server.stop()


@app.command(cls=cli.Command)
def run(
    config: Optional[str] = typer.Option(None, "--config",
                                         help="wanctl config: serve its router.port; exit 0 at once if it "
                                              "names a real router (router.host)"),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="scenario YAML, or a shipped name"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: Optional[int] = typer.Option(None, "--port",
                                       help="0 picks a free port [default: the config's router.port, else 8728]"),
    username: str = typer.Option("admin", "--username"),
    password: str = typer.Option("admin", "--password"),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="serve api-ssl with this certificate chain"),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="private key of --tls-cert"),
    pre_7_18: bool = typer.Option(False, "--pre-7-18", help="answer empty prints without !empty"),
    ping_delay_scale: float = typer.Option(1.0, "--ping-delay-scale", min=0.0,
                                           help="scale the real-time pacing of /ping (0: answer at once, "
                                                "still reporting the simulated RTT; for benchmarks)"),
    list_: bool = typer.Option(False, "--list", help="list the shipped scenarios and exit"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    version: bool = cli.version_option(),
) -> None:
    """Serve the RouterOS API of a simulated router whose WANs follow a scenario."""
    if list_:
        for name, path in shipped_scenarios().items():
            print(f"{name:14s} {load_scenario(path).description}")
        return
    if config is not None:
        cfg = config_or_exit("wanctl-sim", config)
        if cfg.router.host is not None:
            print(f"wanctl-sim: not needed: {config} names a real router (router.host {cfg.router.host}); exiting",
                  flush=True)
            return
        if port is None:
            port = router_address(cfg)[1]
    if port is None:
        port = 8728
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s wanctl-sim %(levelname)s %(message)s")
    try:
        loaded = load_scenario(_resolve(scenario))
    except ScenarioError as error:
        print(f"wanctl-sim: {error}", file=sys.stderr)
        raise typer.Exit(2)
    context = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            print("wanctl-sim: --tls-cert and --tls-key go together", file=sys.stderr)
            raise typer.Exit(2)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    if loaded.description:
        print(f"scenario: {loaded.description}", file=sys.stderr, flush=True)
    server = SimServer(Router(loaded), host=host, port=port, username=username, password=password,
                       ssl_context=context, empty_reply=False if pre_7_18 else None,
                       ping_delay_scale=ping_delay_scale)
    try:
        asyncio.run(_serve(server))
    except OSError as error:
        print(f"wanctl-sim: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
