"""From the repo to a production directory: one config (WANCTL_CONFIG), per-config
var/ directories, the supervisord layout, the wheel and what `wanctl-init`
writes from an installed one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from proto.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHIPPED = {
    "runtime/share/supervisord.conf": "supervisord.conf",
    "runtime/share/wanctl.example.yaml": "wanctl.example.yaml",
    "runtime/share/wanctl.sim.yaml": "wanctl.sim.yaml",
    "runtime/share/alerts/wanctl.rules.yml": "alerts/wanctl.rules.yml",
    "runtime/share/deploy/wanctl.service": "deploy/wanctl.service",
    "runtime/share/deploy/logrotate.conf": "deploy/logrotate.conf",
    "runtime/share/deploy/grafana-dashboard.json": "deploy/grafana-dashboard.json",
}


def server_options(conf: Path, env: dict[str, str], monkeypatch):
    """supervisord's own reading of a config file (what `supervisord -c` does first)."""
    from supervisor.options import ServerOptions

    for name in ("WANCTL_CONFIG", "WANCTL_VAR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return options


def programs(options) -> dict[str, tuple[str, object]]:
    return {p.name: (g.name, p) for g in options.process_group_configs for p in g.process_configs}


# --- the repo's supervisord.conf ---------------------------------------------------


def test_supervisord_conf_takes_the_config_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "site.yaml"
    config.write_text("{}\n")
    (tmp_path / "var" / "site").mkdir(parents=True)  # supervisord checks that log directories exist
    options = server_options(ROOT / "supervisord.conf",
                             {"WANCTL_CONFIG": str(config), "WANCTL_VAR": str(tmp_path / "var" / "site")}, monkeypatch)
    found = programs(options)
    for name in ("bus", "sim", "collector", "scorer", "actuator", "actuator-noop", "logger"):
        group, program = found[name]
        assert f"--config {config}" in program.command, program.command
        assert program.stdout_logfile == str(tmp_path / "var" / "site" / f"{name}.log")
        assert program.stdout_logfile_maxbytes > 0 and program.stdout_logfile_backups > 0
    assert options.logfile == str(tmp_path / "var" / "site" / "supervisord.log")
    assert options.logfile_maxbytes > 0 and options.logfile_backups > 0
    assert "wanctl.sim.yaml" not in (ROOT / "supervisord.conf").read_text().replace("WANCTL_CONFIG=wanctl.sim.yaml", "")


def test_supervisord_refuses_to_start_without_the_config_variable(monkeypatch):
    with pytest.raises(ValueError, match="ENV_WANCTL_(CONFIG|VAR)"):
        server_options(ROOT / "supervisord.conf", {}, monkeypatch)


def test_the_no_op_actuator_is_outside_the_wanctl_group_and_the_sim_may_exit(tmp_path, monkeypatch):
    options = server_options(ROOT / "supervisord.conf",
                             {"WANCTL_CONFIG": str(ROOT / "wanctl.sim.yaml"), "WANCTL_VAR": str(tmp_path)}, monkeypatch)
    found = programs(options)
    group, noop = found["actuator-noop"]
    assert group != "wanctl" and noop.autostart is False
    assert {name for name, (g, _) in found.items() if g == "wanctl"} == {
        "bus", "sim", "collector", "scorer", "actuator", "logger"}
    _, sim = found["sim"]
    # An exit 0 right after the start (a real router: "not needed") is a clean
    # start that is not restarted.
    assert sim.startsecs == 0 and sim.exitcodes == [0]
    assert sim.autorestart.__name__ == "RestartWhenExitUnexpected"


def test_the_simulator_exits_0_when_the_config_names_a_real_router(tmp_path):
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump({"router": {"host": "192.0.2.1"},
                                      "wans": [{"name": "wan1", "queue": "q", "rule_comment": "c"}]}))
    result = subprocess.run([str(BIN / "wanctl-sim"), "--config", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "not needed" in result.stdout and "router.host 192.0.2.1" in result.stdout


# --- per-config var/ ---------------------------------------------------------------


def test_default_var_paths_are_per_config(tmp_path):
    for name in ("wanctl.sim.yaml", "wanctl.yaml"):
        (tmp_path / name).write_text("logger: {fsync: never}\n")
    sim, real = load_config(tmp_path / "wanctl.sim.yaml"), load_config(tmp_path / "wanctl.yaml")
    assert (sim.scorer.state_path, sim.scorer.journal_path, sim.bus.run_dir, sim.logger.path) == (
        "var/wanctl.sim/scorer-state.msgpack", "var/wanctl.sim/scorer-journal.jsonl", "var/wanctl.sim/run",
        "var/wanctl.sim/decisions.jsonl")
    assert real.logger.path == "var/wanctl/decisions.jsonl" and real.scorer.state_path.startswith("var/wanctl/")
    # The example writes the defaults out; a copy of it gets its own directory too.
    example = tmp_path / "site-b.yaml"
    shutil.copy(ROOT / "wanctl.example.yaml", example)
    assert load_config(example).logger.path == "var/site-b/decisions.jsonl"


def test_a_path_set_in_the_config_is_kept(tmp_path):
    config = tmp_path / "wanctl.yaml"
    config.write_text("logger: {path: log/decisions.jsonl}\nscorer: {state_path: /srv/state.msgpack}\n")
    cfg = load_config(config)
    assert cfg.logger.path == "log/decisions.jsonl" and cfg.scorer.state_path == "/srv/state.msgpack"
    assert cfg.scorer.journal_path == "var/wanctl/scorer-journal.jsonl"


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists() or shutil.which("make") is None,
                    reason="needs the repo's .venv and make")
def test_make_run_fails_on_the_terminal_when_a_real_router_has_no_password(tmp_path):
    config = tmp_path / "wanctl.yaml"
    config.write_text(yaml.safe_dump({"router": {"host": "192.0.2.1"},
                                      "wans": [{"name": "wan1", "queue": "q", "rule_comment": "c"}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("WANCTL_ROUTER_PASSWORD", "WANCTL_CONFIG", "MAKEFLAGS")}
    # check-config is the first step of `make run`; -o keeps make from reinstalling the venv.
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", "check-config",
                             f"WANCTL_CONFIG={config}"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "router.password_env: no router password" in result.stderr, result.stderr
    assert not (tmp_path / "var").exists()


# --- the wheel and wanctl-init ------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed, with its dependencies, into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp / "dist")],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("wanctl-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--prefer-binary", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return wheel, venv / "bin"


def test_the_wheel_ships_the_runtime_files_and_no_plotting(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for member, source in SHIPPED.items():
            assert z.read(member) == (ROOT / source).read_bytes(), member
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "sim/scenarios/default.yaml" in names
    assert "wanctl-init = runtime.init:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "matplotlib" in r] == ["Requires-Dist: matplotlib>=3.7; extra == \"plot\""]


def test_wanctl_init_writes_a_ready_to_run_directory(installed, tmp_path, monkeypatch):
    _, bin_dir = installed
    target = tmp_path / "site"
    result = subprocess.run([str(bin_dir / "wanctl-init"), str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("wanctl.yaml", "supervisord.conf", "wanctl.service", "logrotate.conf", "alerts/wanctl.rules.yml"):
        assert f"wrote {target / name}" in result.stdout
    assert f"{bin_dir}/supervisord -n -c {target}/supervisord.conf" in result.stdout
    assert "systemctl enable --now wanctl" in result.stdout

    cfg = load_config(target / "wanctl.yaml")
    assert cfg.actuator.dry_run is True and cfg.logger.rotate_bytes > 0
    assert cfg.logger.path == "var/wanctl/decisions.jsonl" and (target / "var" / "wanctl").is_dir()
    assert (target / "alerts" / "wanctl.rules.yml").read_text() == (ROOT / "alerts" / "wanctl.rules.yml").read_text()

    options = server_options(target / "supervisord.conf", {"WANCTL_CONFIG": str(target / "wanctl.yaml"),
                                                           "WANCTL_VAR": str(target / "var" / "wanctl")}, monkeypatch)
    for name, (_, program) in programs(options).items():
        executable = Path(program.command.split()[0])
        assert executable.parent == bin_dir and os.access(executable, os.X_OK), program.command
    assert options.configroot.supervisord.server_configs[0]["file"] == f"{target}/var/supervisor.sock"

    unit = (target / "wanctl.service").read_text()
    assert f"Environment=WANCTL_CONFIG={target}/wanctl.yaml" in unit
    assert f"ReadWritePaths={target}/var" in unit and f"ExecStart={bin_dir}/supervisord" in unit
    for option in ("User=wanctl", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "Restart=on-failure"):
        assert option in unit.splitlines(), option
    assert "/opt/wanctl" not in unit and "/var/lib/wanctl" not in unit

    # Never over an operator's files without --force.
    (target / "wanctl.yaml").write_text("router: {host: 192.0.2.1}\n")
    again = subprocess.run([str(bin_dir / "wanctl-init"), str(target)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
    assert (target / "wanctl.yaml").read_text() == "router: {host: 192.0.2.1}\n"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_generated_unit_passes_systemd_analyze(installed, tmp_path):
    _, bin_dir = installed
    subprocess.run([str(bin_dir / "wanctl-init"), str(tmp_path / "site")], check=True, capture_output=True,
                   timeout=60)
    unit = tmp_path / "wanctl.service"
    shutil.copy(tmp_path / "site" / "wanctl.service", unit)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_report_plot_without_matplotlib_says_how_to_install_it(installed, tmp_path):
    _, bin_dir = installed
    log = tmp_path / "decisions.jsonl"
    log.write_text("")
    result = subprocess.run([str(bin_dir / "wanctl-report"), str(log), "--plot", str(tmp_path / "t.png")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "pip install 'wanctl[plot]'" in result.stderr, result.stderr


def test_under_supervisord_a_real_router_config_leaves_the_simulator_and_the_no_op_actuator_stopped(tmp_path):
    """The repo's supervisord.conf, run for real with a config that names a
    router (a closed loopback port): the simulator exits 0 and stays EXITED,
    and `restart 'wanctl:*'` does not start the no-op actuator."""
    from tests.support import free_port, wait_for

    shutil.copy(ROOT / "supervisord.conf", tmp_path / "supervisord.conf")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "var" / "real").mkdir(parents=True)
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump({
        "router": {"host": "127.0.0.1", "port": free_port()},
        "wans": [{"name": "wan1", "queue": "cake-wan1", "rule_comment": "wanctl-steer-wan1"}],
        "health": {"bus": 0, "collector": 0, "scorer": 0, "actuator": 0, "logger": 0},
    }))
    env = {**os.environ, "WANCTL_CONFIG": str(config), "WANCTL_VAR": str(tmp_path / "var" / "real"),
           "WANCTL_ROUTER_PASSWORD": "unused"}
    conf = str(tmp_path / "supervisord.conf")

    def status() -> dict[str, str]:
        out = subprocess.run([str(BIN / "supervisorctl"), "-c", conf, "status"], capture_output=True, text=True,
                             timeout=30).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) >= 2}

    proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", conf], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status().get("wanctl:scorer") == "RUNNING" and status().get("wanctl:sim") == "EXITED",
                 30, "the scorer RUNNING and the simulator EXITED", interval=0.3)
        assert "not needed" in (tmp_path / "var" / "real" / "sim.log").read_text()
        time.sleep(1.5)
        assert status()["wanctl:sim"] == "EXITED" and status()["actuator-noop"] == "STOPPED"
        subprocess.run([str(BIN / "supervisorctl"), "-c", conf, "restart", "wanctl:*"], capture_output=True,
                       timeout=60)
        wait_for(lambda: status().get("wanctl:actuator") == "RUNNING", 30, "the live actuator back", interval=0.3)
        assert status()["actuator-noop"] == "STOPPED"
        assert (tmp_path / "var" / "real" / "run").is_dir()  # the bus's run dir: var/<config stem>/run
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
