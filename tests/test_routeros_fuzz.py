"""The router link reads whatever a router sends: a property test over a real socket.

A small TCP server on 127.0.0.1 answers the link's login and then, for the command under test
(or for the login itself), sends bytes drawn by hypothesis: sentences built from random words
(any reply word, attributes with huge, numeric or non-UTF-8 values, ``.tag=`` values ours or
not), every word-length form (1 to 5 bytes, minimal or not, and the reserved 0xF8+ control
bytes), raw bytes, truncated length prefixes and lengths claiming far more than follows; then it
closes, holds the connection silent, streams a chunk without end (fast or slow), or the stage
stops in the middle of it.

Whatever arrives, ``RouterLink`` returns rows or raises its own errors (``RouterTrap``,
``RouterUnreachable``), within the command's deadline plus a small margin, having read at most
``router.max_reply_bytes``; after a failure the connection is gone, one link error is counted
and the backoff has started; a stop is a clean ``LinkStopped``, never a counted error.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proto.config import parse_config
from routeros.link import LinkStopped, RouterLink, RouterTrap, RouterUnreachable
from sim.wire import decode_length, encode_length, length_size

TIMEOUT_S = 0.3  # the deadline of the command under test (and of the login)
MARGIN_S = 0.4  # what a loaded two-core machine may add to it
MAX_REPLY_BYTES = 4096
MAX_REPLY_SENTENCES = 40

TAG = object()  # stands for the tag of the sentence being answered


# --- encoding what the router sends ------------------------------------------


def length_prefix(n: int, form: int) -> bytes:
    """``n`` in the given length form (1..5 bytes), or the smallest form that holds it."""
    limits = {1: 0x80, 2: 0x4000, 3: 0x200000, 4: 0x10000000, 5: 1 << 32}
    form = next(f for f in range(form, 6) if n < limits[f])
    if form == 1:
        return bytes([n])
    if form == 5:
        return b"\xf0" + n.to_bytes(4, "big")
    marker = {2: 0x8000, 3: 0xC00000, 4: 0xE0000000}[form]
    return (n | marker).to_bytes(form, "big")


@dataclass
class Sentence:
    words: list  # (bytes | TAG, length form)
    terminated: bool

    def encode(self, tag: bytes) -> bytes:
        out = bytearray()
        for word, form in self.words:
            data = b".tag=" + tag if word is TAG else word
            out += length_prefix(len(data), form) + data
        if self.terminated:
            out += b"\x00"
        return bytes(out)


@dataclass
class Script:
    parts: list  # Sentence | bytes
    ending: str  # close | hold | endless | trickle
    chunk: Sentence | bytes = b""
    at_login: bool = False  # answer the login with it instead of the command
    stop_after: float | None = None  # the stage stops this long into the command

    def encode(self, tag: bytes) -> bytes:
        return b"".join(p.encode(tag) if isinstance(p, Sentence) else p for p in self.parts)


# --- strategies ---------------------------------------------------------------

forms = st.sampled_from([1, 1, 1, 2, 3, 4, 5])
reply_words = st.sampled_from([b"!re", b"!trap", b"!fatal", b"!done", b"!empty", b"!unknown", b"re", b"",
                               b"!done\x00", b"!\xff\xfe"])
values = st.one_of(
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(1, 600).map(lambda n: b"9" * n),  # digits, far beyond any float
    st.integers(-(10**40), 10**40).map(lambda n: str(n).encode()),
    st.integers(200, 20000).map(lambda n: b"x" * n),  # huge, often over the bound
    st.binary(max_size=30),  # not UTF-8
    st.sampled_from([b"yes", b"no", b"true", b"", b"00", b"-0", b"1e400", b"nan"]),
)
keys = st.one_of(st.sampled_from([b"message", b"name", b"ret", b".id", b"", b"category", b"time"]),
                 st.binary(max_size=8))
attributes = st.builds(lambda k, v: b"=" + k + b"=" + v, keys, values)
tag_words = st.one_of(st.just(TAG), st.just(TAG),
                      st.one_of(st.sampled_from([b"", b"0", b"1", b"2", b"3", b"c1"]), st.binary(max_size=6))
                      .map(lambda t: b".tag=" + t))
other_words = st.one_of(attributes, tag_words, st.binary(max_size=20))


@st.composite
def sentences(draw):
    words = [(draw(reply_words), draw(forms))]
    words += [(w, draw(forms)) for w in draw(st.lists(other_words, max_size=6))]
    return Sentence(words, terminated=draw(st.booleans()) or draw(st.booleans()))


def well_formed(reply: bytes, *attrs: bytes) -> Sentence:
    return Sentence([(reply, 1), *((a, 1) for a in attrs), (TAG, 1)], terminated=True)


raw = st.binary(min_size=1, max_size=64)
truncated_prefixes = st.one_of(
    st.sampled_from([b"\x80", b"\xbf", b"\xc0\x01", b"\xdf\xff", b"\xe0\x00\x01", b"\xf0", b"\xf0\x00\x00\x01",
                     b"\xf8", b"\xfc", b"\xff"]),
    st.integers(0xF8, 0xFF).flatmap(lambda b: st.binary(max_size=4).map(lambda rest: bytes([b]) + rest)),
)
claimed_lengths = st.builds(lambda n, form, body: length_prefix(n, form) + body,
                            st.integers(0, (1 << 32) - 1), forms, st.binary(max_size=16))
parts = st.one_of(sentences(), sentences(), raw, truncated_prefixes, claimed_lengths,
                  st.builds(well_formed, st.sampled_from([b"!re", b"!done", b"!trap"]), attributes))


@st.composite
def scripts(draw):
    ending = draw(st.sampled_from(["close", "close", "hold", "endless", "trickle"]))
    chunk = draw(st.one_of(sentences(), raw, st.just(well_formed(b"!re", b"=name=x")))) \
        if ending in ("endless", "trickle") else b""
    at_login = draw(st.booleans()) and draw(st.booleans())
    stop_after = None if at_login else draw(st.one_of(st.none(), st.none(), st.floats(0.0, 0.2)))
    return Script(draw(st.lists(parts, max_size=5)), ending, chunk, at_login, stop_after)


# --- the router ---------------------------------------------------------------


class HostileRouter:
    """Accepts connections on 127.0.0.1; each one is answered by the script current when it was accepted."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.script: Script | None = None
        self.closing = False
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, name="hostile-router", daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            worker = threading.Thread(target=self._serve, args=(conn, self.script), daemon=True)
            worker.start()
            self.threads = [t for t in self.threads if t.is_alive()] + [worker]

    @staticmethod
    def _read_tag(conn: socket.socket) -> bytes:
        """Read one sentence from the link; the value of its ``.tag=``."""

        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                got = conn.recv(n - len(data))
                if not got:
                    raise ConnectionError("closed")
                data += got
            return data

        tag = b""
        while True:
            first = exactly(1)
            if first == b"\x00":
                return tag
            prefix = first + exactly(length_size(first[0]) - 1)
            word = exactly(decode_length(prefix))
            if word.startswith(b".tag="):
                tag = word[5:]

    def _serve(self, conn: socket.socket, script: Script) -> None:
        end = time.monotonic() + 10.0  # a safety net: the link closes long before
        conn.settimeout(1.0)
        try:
            tag = self._read_tag(conn)
            if not script.at_login:
                conn.sendall(b"\x05!done" + length_prefix(5 + len(tag), 1) + b".tag=" + tag + b"\x00")
                tag = self._read_tag(conn)
            conn.sendall(script.encode(tag))
            chunk = script.chunk.encode(tag) if isinstance(script.chunk, Sentence) else script.chunk
            while script.ending != "close" and time.monotonic() < end and not self.closing:
                if script.ending == "endless" and chunk:
                    conn.sendall(chunk * max(1, 512 // len(chunk)))
                    continue
                if script.ending == "trickle" and chunk:
                    conn.sendall(chunk)
                try:  # hold: wait for the link to close the connection
                    if conn.recv(4096) == b"":
                        break
                except socket.timeout:
                    pass
                if script.ending == "trickle":
                    conn.settimeout(0.05)
        except OSError:
            pass  # the link closed or reset the connection: what it should do
        finally:
            conn.close()

    def close(self) -> None:
        self.closing = True
        self.accepter.join(2)
        for worker in self.threads:
            worker.join(2)
        self.listener.close()


@pytest.fixture(scope="module")
def router():
    server = HostileRouter()
    yield server
    server.close()


def link_for(router: HostileRouter, stop) -> RouterLink:
    cfg = parse_config({
        "router": {"host": None, "port": router.port, "username": "admin", "password_env": None,
                   "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S, "backoff_initial_s": 0.5,
                   "backoff_max_s": 5.0, "max_reply_bytes": MAX_REPLY_BYTES,
                   "max_reply_sentences": MAX_REPLY_SENTENCES},
        "wans": [{"name": "wan1", "queue": "cake-wan1", "ping_target": "192.0.2.1", "rule_comment": "steer-wan1"}],
    })
    return RouterLink(cfg, "admin", stop=stop)


def check_rows(rows) -> None:
    assert isinstance(rows, list)
    size = 0
    for row in rows:
        assert isinstance(row, dict)
        for key, value in row.items():
            assert isinstance(key, str) and isinstance(value, (int, bool, str))
            size += len(key) + len(str(value))
    assert size <= MAX_REPLY_BYTES


def check_failed(link: RouterLink, counter: str) -> None:
    """One counted failure: no connection, the backoff started."""
    assert not link.connected
    assert link.counters[counter] == 1, link.counters
    assert link.backoff.failures == 1
    assert link.next_attempt > link.clock()
    assert link.last_error and len(link.last_error) < 1000


# --- the property -------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scripts())
@example(Script([well_formed(b"!re", b"=name=a", b"=bytes=12"), well_formed(b"!done")], "close"))  # the normal case
@example(Script([well_formed(b"!trap", b"=message=no such item"), well_formed(b"!done")], "close"))
@example(Script([well_formed(b"!fatal")], "close", at_login=True))  # bare !fatal at login
@example(Script([b"\x00"], "hold"))  # an empty sentence
@example(Script([well_formed(b"!trap", b"=message=" + b"7" * 400, b"=category=1")], "close"))
@example(Script([well_formed(b"!re", b"=name=" + b"x" * 5000)], "hold"))  # over the byte bound
@example(Script([], "endless", well_formed(b"!re", b"=name=x")))  # a fast endless reply
@example(Script([], "trickle", well_formed(b"!re", b"=name=x")))  # one row per 50 ms, never !done
@example(Script([b"\xf0\x00\x00\x00\x05!done\x00"], "close"))  # the 5-byte length form
@example(Script([b"\xc0\x00"], "hold", stop_after=0.05))  # a stop while a length prefix is incomplete
def test_any_reply_is_rows_or_a_counted_backed_off_link_error(router, script):
    stopping = {"armed": False, "at": float("inf"), "seen": False}

    def stop() -> bool:
        if stopping["armed"] and time.monotonic() >= stopping["at"]:
            stopping["seen"] = True
        return stopping["seen"]

    router.script = script
    link = link_for(router, stop)
    try:
        started = time.monotonic()
        connected = link.ensure()
        assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
        if script.at_login:
            if not connected:
                check_failed(link, "login_failures" if link.counters["login_failures"] else "connect_failures")
                assert link.counters["login_failures"] + link.counters["connect_failures"] == 1
            return
        assert connected, link.last_error
        transport = link._transport
        if script.stop_after is not None:
            stopping.update(armed=True, at=time.monotonic() + script.stop_after)
        started = time.monotonic()
        try:
            rows = link.run("/interface/print")
        except LinkStopped:
            assert stopping["seen"]
            assert not link.connected and link.counters["link_errors"] == 0, link.counters
        except RouterTrap as error:
            assert not stopping["seen"]
            assert link.connected and link.counters["traps"] == 1 and link.counters["link_errors"] == 0
            assert 0 < len(str(error)) < 1000
        except RouterUnreachable as error:
            assert not stopping["seen"], f"a stop became a link error: {error}"
            check_failed(link, "link_errors")
            assert len(str(error)) < 1000
        else:
            assert link.connected and link.counters["link_errors"] == 0
            check_rows(rows)
        assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
        assert transport.received <= MAX_REPLY_BYTES
    finally:
        link.close()


@pytest.mark.parametrize("ending,counter", [("hold", "timeouts"), ("close", "disconnects")])
def test_a_reply_cut_inside_a_length_prefix_is_counted_as_what_it_is(router, ending, counter):
    """Before, a deadline or a close while the 2nd-4th byte of a length prefix was awaited was
    counted as a malformed length (and a stop there as a backed-off link error)."""
    router.script = Script([well_formed(b"!re", b"=name=a"), b"\xc0\x01"], ending)
    link = link_for(router, lambda: False)
    try:
        assert link.ensure()
        with pytest.raises(RouterUnreachable):
            link.run("/interface/print")
        check_failed(link, "link_errors")
        assert link.counters["protocol_errors"] == 0 and link.counters[counter] >= 1, link.counters
    finally:
        link.close()
