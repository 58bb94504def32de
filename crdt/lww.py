"""Last-writer-wins registers and maps, for peer and agent records.

A register is ``(stamp, writer, value)``; merge keeps the greater in the total
order on that triple. The stamp comes in as an argument (a record's seq or a
clock reading taken by the caller); the writer breaks ties between writers, and
the value breaks the tie of one writer that wrote twice with one stamp, so every
replica picks the same register. Merge is ``max``: commutative, associative,
idempotent. A map merges per key, so it is a CRDT too; a key is never deleted
(a record is retired by writing a newer value that says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crdt.sync import MAX_KEY_BYTES, DecodeError, as_bytes, as_int, as_list, pack, unpack

__all__ = [
    "LWW",
    "MAX_ENTRIES",
    "MAX_MAP_BYTES",
    "MAX_STAMP",
    "MAX_VALUE_BYTES",
    "MAX_WRITER_BYTES",
    "LWWMap",
    "decode",
    "decode_map",
    "encode",
    "encode_map",
    "merge",
    "merge_maps",
    "put",
]

MAX_STAMP = 2**63 - 1
MAX_WRITER_BYTES = 64
MAX_VALUE_BYTES = 64 * 1024
MAX_ENTRIES = 10_000
MAX_MAP_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, order=True)
class LWW:
    """One register; the dataclass order (stamp, writer, value) is the merge order."""

    stamp: int
    writer: bytes
    value: bytes


LWWMap = Mapping[bytes, LWW]


def merge(a: LWW, b: LWW) -> LWW:
    return a if a >= b else b


def merge_maps(a: LWWMap, b: LWWMap) -> dict[bytes, LWW]:
    """Per key, the greater register; keys on one side only are kept."""
    out = dict(a)
    for key, reg in b.items():
        mine = out.get(key)
        out[key] = reg if mine is None else merge(mine, reg)
    return out


def put(m: LWWMap, key: bytes, stamp: int, writer: bytes, value: bytes) -> dict[bytes, LWW]:
    """Write `value` under `key`; an older stamp than the current one loses, as in a merge."""
    return merge_maps(m, {key: LWW(stamp, writer, value)})


# --- codec --------------------------------------------------------------------------


def _fields(reg: LWW) -> list[object]:
    return [reg.stamp, reg.writer, reg.value]


def _register(obj: object, offset: int = 0) -> LWW:
    row = as_list(obj, "lww register", 3 + offset, exact=3 + offset)
    return LWW(as_int(row[offset], "lww stamp", 0, MAX_STAMP),
               as_bytes(row[offset + 1], "lww writer", MAX_WRITER_BYTES),
               as_bytes(row[offset + 2], "lww value", MAX_VALUE_BYTES))


def encode(reg: LWW) -> bytes:
    """Canonical msgpack ``[stamp, writer, value]``: the item encoding for sync."""
    return pack(_fields(reg))


def decode(data: bytes) -> LWW:
    return _register(unpack(data, MAX_VALUE_BYTES + 256, "lww register"))


def encode_map(m: LWWMap) -> bytes:
    """Canonical msgpack ``[[key, stamp, writer, value]…]``, sorted by key."""
    return pack([[key, *_fields(reg)] for key, reg in sorted(m.items())])


def decode_map(data: bytes) -> dict[bytes, LWW]:
    rows = as_list(unpack(data, MAX_MAP_BYTES, "lww map"), "lww map", MAX_ENTRIES)
    out: dict[bytes, LWW] = {}
    for row in rows:
        key = as_bytes(as_list(row, "lww entry", 4, exact=4)[0], "lww key", MAX_KEY_BYTES)
        if key in out:
            raise DecodeError("lww map: duplicate key")
        out[key] = _register(row, offset=1)
    return out
