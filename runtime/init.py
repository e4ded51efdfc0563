"""``wanctl-init DIR``: a ready-to-run directory from an installed wanctl.

Writes into DIR (created if needed):

- ``wanctl.yaml``: the example config, every key with its default, except
  ``actuator.dry_run: true`` (a new install never writes to the router until
  you say so) and ``logger.rotate_bytes`` (the logger rotates decisions.jsonl
  itself, between whole lines);
- ``supervisord.conf``: the shipped one, its programs pointing at the
  installed console scripts;
- ``wanctl.service``: the systemd unit for supervisord, with DIR and the
  installed scripts filled in; ``logrotate.conf`` for stage-events.jsonl;
- ``alerts/wanctl.rules.yml``: the sample Prometheus alert rules;
- ``var/wanctl/``: where the pipeline writes (mode 0700);

then prints the commands to try it and to install the service.  Existing
files are never overwritten without ``--force``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import sysconfig
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from runtime import cli

# Where deploy/wanctl.service expects things; replaced by the real places.
UNIT_DIR = "/var/lib/wanctl"
UNIT_BIN = "/opt/wanctl/bin"
ROTATE_BYTES = 64 * 1024 * 1024

app = cli.app()


def shipped(name: str) -> str:
    """The text of a file shipped in the package (``supervisord.conf``, ``alerts/wanctl.rules.yml``...)."""
    return resources.files("runtime").joinpath("share", name).read_text()


def scripts_dir() -> Path:
    """The directory of the installed console scripts (this one's, normally)."""
    argv0 = Path(sys.argv[0])
    if argv0.name.startswith("wanctl-init") and (argv0.resolve().parent / "wanctl-bus").exists():
        return argv0.resolve().parent
    return Path(sysconfig.get_path("scripts"))


def config_text() -> str:
    text = shipped("wanctl.example.yaml")
    text = _set_in_section(text, "actuator", "dry_run", "true")
    return _set_in_section(text, "logger", "rotate_bytes", str(ROTATE_BYTES))


def _set_in_section(text: str, section: str, key: str, value: str) -> str:
    """Set ``section.key`` in the example's text, keeping its comment."""
    start = re.search(rf"^{section}:\s*(#.*)?$", text, re.M)
    if start is None:
        raise ValueError(f"the example config has no {section} section")
    line = re.compile(rf"^(  {key}:\s*)(\S+)", re.M)
    match = line.search(text, start.end())
    if match is None:
        raise ValueError(f"the example config has no {section}.{key}")
    new = (match.group(1) + value).ljust(len(match.group(0)))  # the comment stays in its column
    return text[:match.start()] + new + text[match.end():]


def supervisord_text(bin_dir: Path) -> str:
    return shipped("supervisord.conf").replace("%(here)s/.venv/bin/", f"{bin_dir}/")


def unit_text(directory: Path, bin_dir: Path, python: str) -> str:
    text = shipped("deploy/wanctl.service")
    text = text.replace(f"{UNIT_BIN}/python", python)
    return text.replace(UNIT_BIN, str(bin_dir)).replace(UNIT_DIR, str(directory))


def logrotate_text(directory: Path) -> str:
    return shipped("deploy/logrotate.conf").replace(UNIT_DIR, str(directory))


@app.command(cls=cli.Command)
def run(
    directory: Path = typer.Argument(..., help="the directory to write (created if missing)"),
    force: bool = typer.Option(False, "--force", help="overwrite files that already exist"),
    bin_dir: Optional[Path] = typer.Option(None, "--bin", help="where the wanctl and supervisord scripts are "
                                                               "[default: this script's directory]"),
    version: bool = cli.version_option(),
) -> None:
    """Write a ready-to-run wanctl directory: config, supervisord.conf, systemd unit, alert rules."""
    directory = directory.expanduser().resolve()
    bins = (bin_dir.expanduser().resolve() if bin_dir else scripts_dir())
    files = {
        "wanctl.yaml": config_text(),
        "supervisord.conf": supervisord_text(bins),
        "wanctl.service": unit_text(directory, bins, sys.executable),
        "logrotate.conf": logrotate_text(directory),
        "alerts/wanctl.rules.yml": shipped("alerts/wanctl.rules.yml"),
    }
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        print(f"wanctl-init: {directory} already has {', '.join(existing)}; nothing written (--force overwrites)",
              file=sys.stderr)
        raise typer.Exit(1)
    if not (bins / "supervisord").exists():
        print(f"wanctl-init: warning: no supervisord in {bins} (--bin names the scripts' directory)",
              file=sys.stderr)
    if any(directory.is_relative_to(p) for p in (Path("/home"), Path("/root"), Path("/run/user"))):
        print(f"wanctl-init: warning: the systemd unit's ProtectHome=yes hides {directory} from the service; "
              "use a directory such as /var/lib/wanctl for it", file=sys.stderr)
    var = directory / "var" / "wanctl"
    var.mkdir(parents=True, exist_ok=True)
    os.chmod(directory / "var", 0o700)
    os.chmod(var, 0o700)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    d, b = shlex.quote(str(directory)), shlex.quote(str(bins))
    env = f"WANCTL_CONFIG={d}/wanctl.yaml WANCTL_VAR={d}/var/wanctl"
    print(f"""
Next:
  1. Edit {d}/wanctl.yaml: router.host, the WANs' queues and rule comments
     (with router.host unset it runs against the built-in simulator).  The
     password goes in $WANCTL_ROUTER_PASSWORD or router.password_file, never
     in the YAML (for the service: WANCTL_ROUTER_PASSWORD=... in
     /etc/wanctl/env, mode 0600).  It starts in dry run (actuator.dry_run: true).
  2. Run it in the foreground (Ctrl-C stops it):
       cd {d} && {env} {b}/supervisord -n -c {d}/supervisord.conf
     and from another shell:
       {b}/supervisorctl -c {d}/supervisord.conf status
       {b}/wanctl-status --config {d}/wanctl.yaml
  3. As a service (user wanctl, hardened systemd unit):
       sudo useradd --system --home-dir {d} --shell /usr/sbin/nologin wanctl
       sudo chown -R wanctl:wanctl {d}/var
       sudo install -m 0644 {d}/wanctl.service /etc/systemd/system/wanctl.service
       sudo install -m 0644 {d}/logrotate.conf /etc/logrotate.d/wanctl
       sudo systemctl daemon-reload && sudo systemctl enable --now wanctl""")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
