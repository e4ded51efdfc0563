"""The layers of the tree, checked on the source (``ast``), not by importing it.

- ``proto/`` is the vocabulary: msgspec, yaml and the standard library only,
  and none of the standard library's runtime modules (sockets, threads, HTTP,
  processes, signals);
- a stage (``collector``, ``scorer``, ``actuator``, ``logger``) never imports
  another stage: what they share lives in ``proto``, ``bus`` or ``runtime``;
- the scorer's engine and policies are sans-I/O: no clock, socket, logging or
  thread;
- the tap, a bus client an operator runs anywhere, pulls in no Prometheus and
  no HTTP server, even indirectly.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("collector", "scorer", "actuator", "logger")
PROJECT = ("proto", "bus", "runtime", "report", "routeros", *STAGES, "sim", "bench", "tests")
PROTO_THIRD_PARTY = {"msgspec", "yaml"}
RUNTIME_STDLIB = {"socket", "socketserver", "ssl", "selectors", "asyncio", "threading", "_thread", "multiprocessing",
                  "concurrent", "subprocess", "signal", "http", "urllib", "xmlrpc", "ftplib", "smtplib"}
SANS_IO_FORBIDDEN = {"time", "socket", "logging", "threading"}
SANS_IO_MODULES = ("scorer/engine.py", "scorer/quality.py", "scorer/flap.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions included), as absolute dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem == "__future__":
                continue
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # ``from bus import sockets``
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_checker_sees_imports_inside_functions():
    source = REPO / "collector" / "__main__.py"
    assert "collector.poller" in imports_of(source)  # imported inside run()
    assert {"bus.sockets", "proto.messages.Telemetry"} <= imports_of(REPO / "bus" / "tap.py")


def test_proto_imports_only_msgspec_yaml_and_the_quiet_standard_library():
    problems = []
    for path in sources("proto"):
        for name in imports_of(path):
            root = top(name)
            if root == "proto" or root in PROTO_THIRD_PARTY:
                continue
            if root in sys.stdlib_module_names and root not in RUNTIME_STDLIB:
                continue
            problems.append(f"{path.relative_to(REPO)} imports {name}")
    assert not problems, "proto/ is the vocabulary only:\n" + "\n".join(sorted(problems))


def stage_edges() -> list[tuple[str, str, str]]:
    edges = []
    for stage in STAGES:
        for path in sources(stage):
            for name in imports_of(path):
                if top(name) in STAGES and top(name) != stage:
                    edges.append((str(path.relative_to(REPO)), stage, name))
    return edges


# Until the RouterOS link leaves collector/ for its own package, the actuator
# reaches into the collector for it; once routeros/ exists this edge must be gone.
KNOWN_EDGE = ("actuator", "collector.routeros")
ROUTEROS_MOVED = (REPO / "routeros" / "__init__.py").exists()


def is_known_edge(edge: tuple[str, str, str]) -> bool:
    return edge[1] == KNOWN_EDGE[0] and edge[2].startswith(KNOWN_EDGE[1])


def test_stages_never_import_each_other_apart_from_the_known_edge():
    edges = [e for e in stage_edges() if ROUTEROS_MOVED or not is_known_edge(e)]
    assert not edges, "a stage imports another stage:\n" + "\n".join(f"{p} imports {n}" for p, _, n in edges)


@pytest.mark.xfail(not ROUTEROS_MOVED, strict=True,
                   reason="actuator/rule.py still imports RouterLink from collector/routeros.py; "
                          "passes once the link lives in routeros/")
def test_the_actuator_does_not_reach_into_the_collector():
    edges = [e for e in stage_edges() if is_known_edge(e)]
    assert not edges, "\n".join(f"{p} imports {n}" for p, _, n in edges)


@pytest.mark.parametrize("relative", SANS_IO_MODULES)
def test_the_engine_and_policies_are_sans_io(relative):
    path = REPO / relative
    if not path.exists():
        pytest.skip(f"{relative} does not exist in this tree")
    used = {top(name) for name in imports_of(path)} & SANS_IO_FORBIDDEN
    assert not used, f"{relative} imports {sorted(used)}: time comes in with the samples, results go out as values"


def project_closure(start: str) -> set[str]:
    """Every module reachable from ``start`` through project imports (third-party ones included as leaves)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if top(name) not in PROJECT:
            continue
        base = REPO / Path(*name.split("."))
        path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if not path.exists():
            continue  # ``from pkg import name`` where name is not a module
        todo.extend(imports_of(path))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run too
    return seen


def test_the_tap_pulls_in_no_prometheus_and_no_http_server():
    reached = project_closure("bus.tap")
    assert "bus.sockets" in reached  # the walk did follow the tap's own imports
    bad = {name for name in reached if top(name) == "prometheus_client" or name.startswith("http.server")
           or top(name) == "runtime" and name not in ("runtime", "runtime.stop", "runtime.stop.StopFlag",
                                                      "runtime.cli")}  # cli: --version and help (typer only)
    assert not bad, f"wanctl-tap reaches {sorted(bad)}"
