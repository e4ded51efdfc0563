"""The RouterOS API wire format, server side: words, sentences, durations.

A *word* is a length prefix followed by that many bytes.  The prefix has five
forms (RouterOS API manual, "API words"):

=================  =====  ==================================
length             bytes  encoding
=================  =====  ==================================
< 0x80             1      the length
< 0x4000           2      length | 0x8000
< 0x200000         3      length | 0xC00000
< 0x10000000       4      length | 0xE0000000
otherwise          5      0xF0, then the length in 4 bytes
=================  =====  ==================================

A *sentence* is words up to a zero-length word.  This module is written
independently of librouteros so that the tests, which talk to the simulator
through librouteros, cross-check two implementations of the format.
"""

from __future__ import annotations

import asyncio


class WireError(Exception):
    """The peer sent bytes that are not a valid API word."""


def encode_length(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"word length must be >= 0, got {n}")
    if n < 0x80:
        return bytes([n])
    if n < 0x4000:
        return (n | 0x8000).to_bytes(2, "big")
    if n < 0x200000:
        return (n | 0xC00000).to_bytes(3, "big")
    if n < 0x10000000:
        return (n | 0xE0000000).to_bytes(4, "big")
    if n < 0x100000000:
        return b"\xf0" + n.to_bytes(4, "big")
    raise ValueError(f"word length must fit in 32 bits, got {n}")


def encode_word(word: str | bytes) -> bytes:
    data = word.encode() if isinstance(word, str) else word
    return encode_length(len(data)) + data


def encode_sentence(words: list[str] | tuple[str, ...]) -> bytes:
    return b"".join(encode_word(w) for w in words) + b"\x00"


def length_size(first: int) -> int:
    """How many bytes the length prefix starting with byte ``first`` has."""
    if first < 0x80:
        return 1
    if first < 0xC0:
        return 2
    if first < 0xE0:
        return 3
    if first < 0xF0:
        return 4
    if first == 0xF0:
        return 5
    raise WireError(f"reserved control byte 0x{first:02X} in word length")


def decode_length(prefix: bytes) -> int:
    size = len(prefix)
    if size == 1:
        return prefix[0]
    if size == 2:
        return int.from_bytes(prefix, "big") & 0x3FFF
    if size == 3:
        return int.from_bytes(prefix, "big") & 0x1FFFFF
    if size == 4:
        return int.from_bytes(prefix, "big") & 0x0FFFFFFF
    return int.from_bytes(prefix[1:], "big")


async def read_word(reader: asyncio.StreamReader, max_len: int) -> bytes:
    first = await reader.readexactly(1)
    size = length_size(first[0])
    prefix = first + (await reader.readexactly(size - 1) if size > 1 else b"")
    n = decode_length(prefix)
    if n > max_len:
        raise WireError(f"word of {n} bytes exceeds the {max_len}-byte limit")
    return await reader.readexactly(n) if n else b""


async def read_sentence(reader: asyncio.StreamReader, max_len: int = 1 << 24) -> list[str]:
    """Words up to the terminating empty word; an empty sentence is ``[]``."""
    words: list[str] = []
    while True:
        word = await read_word(reader, max_len)
        if not word:
            return words
        words.append(word.decode("utf-8", errors="replace"))


# --- durations ------------------------------------------------------------

_UNITS = (("w", 604_800_000_000), ("d", 86_400_000_000), ("h", 3_600_000_000),
          ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000), ("us", 1))


def format_duration(seconds: float) -> str:
    """A RouterOS duration as the API prints it: ``12ms345us``, ``1s3ms``, ``0s``.

    Components from weeks down to microseconds, zero ones left out.
    """
    us = max(0, round(seconds * 1_000_000))
    if us == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        count, us = divmod(us, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
