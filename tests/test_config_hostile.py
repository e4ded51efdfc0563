"""Hostile config files: every malformed one is a ConfigError (exit 2) with a key
path and a bounded message, never a traceback, a hang or a dump of the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.config import (
    MAX_PROBLEM_CHARS, Config, ConfigError, load_config, parse_config, router_password,
)
from bus.sockets import check_bus, check_tls_ca

BIN = Path(sys.executable).parent


def problems_of(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    for line in caught.value.problems:
        assert len(line) <= MAX_PROBLEM_CHARS and "\n" not in line
        line.encode("utf-8")  # printable to any UTF-8 stderr
    return caught.value.problems


def write(tmp_path: Path, data: bytes | str, name: str = "wanctl.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_non_utf8_file(tmp_path):
    [line] = problems_of(write(tmp_path, b"scorer:\n  policy: \xff\xfe\n"))
    assert "must be UTF-8 text, got byte 0xff at offset 18" in line


def test_deep_nesting_is_refused_before_any_recursion(tmp_path):
    for doc in ("a: " + "[" * 500 + "]" * 500, "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 400))):
        [line] = problems_of(write(tmp_path, doc))
        assert "nested more than 32 levels deep" in line


def test_alias_bomb_is_refused_fast_and_short(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghi", "bcdefghij"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    started = time.monotonic()
    [line] = problems_of(path)
    assert time.monotonic() - started < 2
    assert "at most 20000 values (aliases expanded)" in line
    # Many aliases, each small: refused by count.
    many = "a: &a 1\nb: [" + ",".join(["*a"] * 500) + "]\n"
    assert "more than 100 aliases" in problems_of(write(tmp_path, many))[0]


def test_non_string_keys_name_their_section_and_never_dump_the_config(tmp_path):
    [line] = problems_of(write(tmp_path, "scorer:\n  policy: confidence\n  1: 2\nrouter:\n  username: secret-ish\n"))
    assert line == "scorer: keys must be strings, got int key 1"
    [line] = problems_of(write(tmp_path, "? [a, b]\n: 1\n"))
    assert "not valid YAML" in line and "unhashable" in line
    [line] = problems_of(write(tmp_path, "wans:\n  - {name: wan1, queue: q, true: 3}\n"))
    assert line == "wans[0]: keys must be strings, got bool key True"


def test_lone_surrogates(tmp_path):
    [line] = problems_of(write(tmp_path, 'scorer:\n  policy: "\\ud800"\n'))
    assert line == "scorer.policy: must be valid Unicode text, got a lone surrogate '\\ud800' at character 0"
    [line] = problems_of(write(tmp_path, 'scorer:\n  "\\udfff": 1\n'))
    assert "lone surrogate" in line


def test_unreadable_kinds_of_file_never_block(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert problems_of(fifo) == [f"{fifo}: cannot read config: is not a regular file"]
    assert problems_of(Path("/dev/zero")) == ["/dev/zero: cannot read config: is not a regular file"]
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read config: is a directory"]
    big = write(tmp_path, "a: 1\n" * 300_000)
    assert "is larger than" in problems_of(big)[0]
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("bad\0name.yaml")


@pytest.mark.parametrize("doc,expected", [
    ('logger:\n  path: "a\\0b"\n', "logger.path: must not contain a NUL byte, got 'a\\x00b'"),
    ("logger:\n  path: ~nosuchuser-wanctl/x\n",
     "logger.path: names a home directory that does not exist, got '~nosuchuser-wanctl/x'"),
    ("scorer:\n  state_path: ''\n", "scorer.state_path: must be a non-empty path, got ''"),
    ("bus:\n  linger_ms: 2147483648\n", "bus.linger_ms: must be <= 5000, got 2147483648"),
    ("bus:\n  linger_ms: 5001\n", "bus.linger_ms: must be <= 5000, got 5001"),
    ("bus:\n  heartbeat_s: .inf\n", "bus.heartbeat_s: must be a finite number, got inf"),
    ("scorer:\n  max_gap_s: .nan\n", "scorer.max_gap_s: must be a finite number, got nan"),
])
def test_unusable_paths_and_values(tmp_path, doc, expected):
    assert problems_of(write(tmp_path, doc)) == [expected]


def test_directory_where_a_file_is_expected_and_back(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    assert problems_of(write(tmp_path, "logger:\n  path: adir\n")) == [
        "logger.path: must be a file, got the directory 'adir'"]
    assert problems_of(write(tmp_path, "bus:\n  run_dir: afile\n")) == [
        "bus.run_dir: must be a directory, got 'afile' which is not one"]
    assert problems_of(write(tmp_path, "scorer:\n  journal_path: afile/j.jsonl\n")) == [
        "scorer.journal_path: a parent of 'afile/j.jsonl' is not a directory"]
    assert problems_of(write(tmp_path, "logger:\n  path: /dev/zero\n")) == [
        "logger.path: must be a regular file, got '/dev/zero' (a device, FIFO or socket)"]


def test_huge_values_are_bounded_in_messages(tmp_path):
    [line] = problems_of(write(tmp_path, "scorer:\n  policy: " + "x" * 100_000 + "\n"))
    assert line.startswith("scorer.policy: invalid value, got 'xxx") and len(line) < 200
    [line] = problems_of(write(tmp_path, "scorer:\n  max_gap_s: [" + ",".join(["1"] * 5000) + "]\n"))
    assert line == "scorer.max_gap_s: must be of type float, got a list of 5000 entries"


def test_overrides_use_the_same_loader(tmp_path):
    path = write(tmp_path, "{}\n")
    assert "nested more than 32" in problems_of(path, ["scorer.max_gap_s=" + "[" * 100 + "]" * 100])[0]
    assert "keys must be strings" in problems_of(path, ["scorer={1: 2}"])[0]


def _router_cfg(tmp_path, **router) -> Config:
    return parse_config({"router": {"host": "192.0.2.1", **router}}, str(tmp_path))


def test_password_file_must_be_a_small_regular_text_file(tmp_path):
    (tmp_path / "pw").write_bytes(b"s3cret'\"\n")
    assert router_password(_router_cfg(tmp_path, password_file="pw")) == "s3cret'\""
    (tmp_path / "bin").write_bytes(b"\x00\xffsecret\x01")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        "bin": "router.password_file: 'bin' must hold UTF-8 text (it is binary)",
        "/dev/zero": "router.password_file: cannot read '/dev/zero': is not a regular file",
        "fifo": "router.password_file: cannot read 'fifo': is not a regular file",
        "nope": "router.password_file: cannot read 'nope': No such file or directory",
    }
    for name, expected in cases.items():
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            router_password(_router_cfg(tmp_path, password_file=name))
        assert caught.value.problems == [expected]
        assert time.monotonic() - started < 1
    (tmp_path / "ctl").write_bytes(b"sec\x00ret\n")
    with pytest.raises(ConfigError) as caught:
        router_password(_router_cfg(tmp_path, password_file="ctl"))
    assert "sec" not in str(caught.value).replace("secret", "")  # never a piece of the password


def test_tls_ca_must_be_a_pem_bundle(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    check_tls_ca(_router_cfg(tmp_path, tls=True, tls_ca="ca.pem"))
    (tmp_path / "junk.pem").write_bytes(b"\x00\x01\x02")
    (tmp_path / "empty.pem").write_text("")
    for name, expected in {
        "missing.pem": "router.tls_ca: cannot read 'missing.pem': No such file or directory",
        "junk.pem": "router.tls_ca: 'junk.pem' is not a PEM CA bundle",
        "empty.pem": "router.tls_ca: 'empty.pem' is not a PEM CA bundle: no certificate in it",
        "/dev/zero": "router.tls_ca: cannot read '/dev/zero': is not a regular file",
    }.items():
        with pytest.raises(ConfigError) as caught:
            check_tls_ca(_router_cfg(tmp_path, tls=True, tls_ca=name))
        assert caught.value.problems[0].startswith(expected), caught.value.problems


@pytest.mark.parametrize("script", ["wanctl-bus", "wanctl-scorer", "wanctl-logger", "wanctl-collector",
                                    "wanctl-actuator"])
def test_every_stage_exits_2_on_a_hostile_config(tmp_path, script):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    configs = [fifo, write(tmp_path, b"\xff\xfe", "bin.yaml"), write(tmp_path, "a: " + "[" * 600, "deep.yaml"),
               write(tmp_path, "bus:\n  linger_ms: 4294967296\n", "linger.yaml")]
    for config in configs:
        result = subprocess.run([str(BIN / script), "--config", str(config)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2, (config, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"{script}: config error: ")


# --- fuzz ----------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["quality", "confidence", "GREEN", "tcp://127.0.0.1:1", "ipc://x.sock", "~nouser-x/y",
                     "/dev/zero", "a\0b", "\ud800", "var/x"]),
)
_keys = st.one_of(
    st.sampled_from(["scorer", "bus", "router", "wans", "logger", "health", "collector", "actuator", "policy",
                     "linger_ms", "max_gap_s", "confidence", "name", "queue", "path", "password_file",
                     "keys_dir", "state_path", "run_dir", "tls_ca", "tls"]),
    st.text(max_size=8), st.integers(), st.booleans(), st.none(),
)
_trees = st.recursive(_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)), max_leaves=25)


def _document(tree) -> bytes:
    try:
        return yaml.safe_dump(tree, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return b"{}"


def _check(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as error:
        assert error.problems
        for line in error.problems:
            assert len(line) <= MAX_PROBLEM_CHARS and "\n" not in line
            line.encode("utf-8")
    else:
        assert isinstance(cfg, Config)
        checks = [lambda: check_bus(cfg, "bus"), lambda: check_bus(cfg, "scorer"), lambda: check_bus(cfg, "tap"),
                  lambda: router_password(cfg), lambda: check_tls_ca(cfg)]
        for check in checks:  # what the stages check next, before any socket or router connection
            try:
                check()
            except ConfigError as error:
                assert all(len(line) <= MAX_PROBLEM_CHARS for line in error.problems)


_FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FUZZ
@given(tree=_trees)
def test_fuzz_yaml_documents_give_a_config_or_a_config_error(tmp_path, tree):
    _check(tmp_path, _document(tree))
    _check(tmp_path, _document({"scorer": tree}))
    _check(tmp_path, _document({"bus": tree, "router": tree}))


@_FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.text(alphabet=st.sampled_from(list("{}[]:,&*!?|>-'\"\\#%@`\n\t abc123.~\x00\x85\u2028")),
            max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
))
def test_fuzz_bytes_give_a_config_or_a_config_error(tmp_path, data):
    _check(tmp_path, data)


_hostile_paths = st.one_of(
    st.sampled_from(["", "~nouser-x/y", "/dev/zero", "/dev/null", "/proc/self", "/", ".", "..", "a\0b", "\ud800",
                     "ipc://", "ipc:///nonexistent-dir/x.sock", "ipc://x.sock", "tcp://", "tcp://127.0.0.1:0",
                     "tcp://127.0.0.1:70000", "tcp://*:5555", "tcp://[::1]:5", "x" * 300, "var/run", "/tmp"]),
    st.text(max_size=30),
)


@_FUZZ
@given(bus=st.dictionaries(st.sampled_from(["run_dir", "publish", "subscribe", "journal", "keys_dir", "clients_dir"]),
                           _hostile_paths, max_size=6),
       router=st.dictionaries(st.sampled_from(["password_file", "tls_ca", "host"]), _hostile_paths, max_size=3))
def test_fuzz_bus_and_router_paths_give_a_config_or_a_config_error(tmp_path, bus, router):
    _check(tmp_path, _document({"bus": bus, "router": {**router, "tls": True}}))
