"""RTT from this host: one ICMP echo, when ``collector.rtt_probe`` is ``local``.

The target is resolved once, with a timeout (never on every poll).
Uses an unprivileged ICMP datagram socket where ``net.ipv4.ping_group_range``
allows it, else a raw socket (root or CAP_NET_RAW).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

_ICMP_ECHO = 8
_ICMP_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpProbe:
    """Echo requests to one host; ``rtt_ms()`` is one probe's RTT or None when lost."""

    def __init__(self, target: str, resolve_timeout: float = 1.0):
        from routeros.link import resolve  # a name is resolved once, within the timeout

        self.address = resolve(target, resolve_timeout)
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            self.raw = False
        except PermissionError:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.raw = True
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0

    def rtt_ms(self, timeout: float) -> float | None:
        self.seq = (self.seq + 1) & 0xFFFF
        payload = struct.pack("!d", time.monotonic())
        header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, self.ident, self.seq)
        packet = struct.pack("!BBHHH", _ICMP_ECHO, 0, _checksum(header + payload), self.ident, self.seq) + payload
        sent = time.monotonic()
        self.sock.sendto(packet, (self.address, 0))
        deadline = sent + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data, _ = self.sock.recvfrom(2048)
            if self.raw:
                data = data[(data[0] & 0x0F) * 4:]  # strip the IP header
            if len(data) < 8:
                continue
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
            # Datagram sockets rewrite the id to the socket's own port: match on seq only there.
            if kind == _ICMP_ECHO_REPLY and seq == self.seq and (not self.raw or ident == self.ident):
                return (time.monotonic() - sent) * 1000.0
        return None

    def close(self) -> None:
        self.sock.close()
