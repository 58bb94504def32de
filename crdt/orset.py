"""An add-wins observed-remove set with dots, state-based and immutable.

Every add is tagged with a fresh dot ``(replica, n)``: the replica's ``n``-th event.
``entries`` maps an element to the dots of the adds that keep it in the set. The
causal context holds every dot the replica has seen, as a version vector ``vv``
(replica -> n: dots ``1..n`` seen) plus a ``cloud`` of dots seen beyond that prefix.

A remove drops the element's dots from ``entries`` and keeps them in the context,
so a replica that merges later learns they were removed. A dot the remover had not
seen is absent from its context and survives the merge: a concurrent add wins.

Invariants, kept by every function here and checked by `decode`:

- every dot in ``entries`` is in the context, and belongs to one element only;
- no element maps to an empty set of dots;
- the context is compact (no 0 in ``vv``; no cloud dot inside or next to its
  replica's prefix), so equal states compare equal with ``==``.

A replica id must be used by one writer only; `add` takes it as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crdt.sync import DecodeError, as_bytes, as_int, as_list, pack, unpack

__all__ = [
    "MAX_DOTS",
    "MAX_ELEMENTS",
    "MAX_ELEMENT_BYTES",
    "MAX_ENCODED_BYTES",
    "MAX_REPLICAS",
    "MAX_REPLICA_BYTES",
    "Dot",
    "ORSet",
    "add",
    "contains",
    "decode",
    "elements",
    "empty",
    "encode",
    "merge",
    "remove",
]

Dot = tuple[bytes, int]  # (replica id, event number from 1)

MAX_ENCODED_BYTES = 1024 * 1024
MAX_ELEMENTS = 10_000
MAX_DOTS = 50_000  # dots in entries plus dots in the cloud
MAX_REPLICAS = 1024
MAX_ELEMENT_BYTES = 1024
MAX_REPLICA_BYTES = 64
_MAX_SEQ = 2**63 - 1


@dataclass(frozen=True)
class ORSet:
    """One replica's state. Treat the mappings as read-only: functions return new sets."""

    entries: Mapping[bytes, frozenset[Dot]] = field(default_factory=dict)
    vv: Mapping[bytes, int] = field(default_factory=dict)
    cloud: frozenset[Dot] = frozenset()


def empty() -> ORSet:
    return ORSet()


def elements(s: ORSet) -> frozenset[bytes]:
    return frozenset(s.entries)


def contains(s: ORSet, element: bytes) -> bool:
    return element in s.entries


def _seen(s: ORSet, dot: Dot) -> bool:
    replica, n = dot
    return n <= s.vv.get(replica, 0) or dot in s.cloud


def _compact(vv: Mapping[bytes, int], cloud: Iterable[Dot]) -> tuple[dict[bytes, int],
                                                                    frozenset[Dot]]:
    """Fold cloud dots that extend a prefix into ``vv``; drop those already in it."""
    prefix = dict(vv)
    rest: set[Dot] = set()
    for replica, n in sorted(cloud):  # ascending per replica: a gap stays a gap
        top = prefix.get(replica, 0)
        if n == top + 1:
            prefix[replica] = n
        elif n > top:
            rest.add((replica, n))
    return prefix, frozenset(rest)


def add(s: ORSet, element: bytes, replica: bytes) -> ORSet:
    """Add `element` with a fresh dot of `replica`; the dots it replaces were observed."""
    n = max([s.vv.get(replica, 0), *(m for r, m in s.cloud if r == replica)]) + 1
    dot = (replica, n)
    entries = dict(s.entries)
    entries[element] = frozenset({dot})
    vv, cloud = _compact(s.vv, s.cloud | {dot})
    return ORSet(entries, vv, cloud)


def remove(s: ORSet, element: bytes) -> ORSet:
    """Remove the dots of `element` this replica has observed (and no others)."""
    if element not in s.entries:
        return s
    entries = {e: dots for e, dots in s.entries.items() if e != element}
    return ORSet(entries, s.vv, s.cloud)


def merge(a: ORSet, b: ORSet) -> ORSet:
    """Join: a dot survives if both sides keep it or the other side never saw it."""
    entries: dict[bytes, frozenset[Dot]] = {}
    for element in a.entries.keys() | b.entries.keys():
        da = a.entries.get(element, frozenset())
        db = b.entries.get(element, frozenset())
        dots = (da & db) | {d for d in da - db if not _seen(b, d)} | {
            d for d in db - da if not _seen(a, d)}
        if dots:
            entries[element] = frozenset(dots)
    joined = {r: max(a.vv.get(r, 0), b.vv.get(r, 0)) for r in a.vv.keys() | b.vv.keys()}
    vv, cloud = _compact(joined, a.cloud | b.cloud)
    return ORSet(entries, vv, cloud)


# --- codec --------------------------------------------------------------------------


def _dots(dots: Iterable[Dot]) -> list[list[object]]:
    return [[r, n] for r, n in sorted(dots)]


def encode(s: ORSet) -> bytes:
    """Canonical msgpack: ``[[[element, dots]…], [[replica, n]…], cloud dots]``, sorted."""
    return pack([[[e, _dots(d)] for e, d in sorted(s.entries.items())],
                 [[r, n] for r, n in sorted(s.vv.items())], _dots(s.cloud)])


def _decode_dot(obj: object) -> Dot:
    replica, n = as_list(obj, "dot", 2, exact=2)
    return (as_bytes(replica, "replica id", MAX_REPLICA_BYTES, 1),
            as_int(n, "dot number", 1, _MAX_SEQ))


def _decode_entries(obj: object) -> tuple[dict[bytes, frozenset[Dot]], int]:
    entries: dict[bytes, frozenset[Dot]] = {}
    total = 0
    for row in as_list(obj, "orset entries", MAX_ELEMENTS):
        raw_element, raw_dots = as_list(row, "orset entry", 2, exact=2)
        element = as_bytes(raw_element, "orset element", MAX_ELEMENT_BYTES)
        dots = frozenset(_decode_dot(d) for d in as_list(raw_dots, "dots", MAX_DOTS))
        if element in entries or not dots:
            raise DecodeError("orset: duplicate element or element without dots")
        total += len(dots)
        entries[element] = dots
    return entries, total


def decode(data: bytes) -> ORSet:
    """Parse and check a peer's set; any flaw raises `DecodeError`."""
    fields = as_list(unpack(data, MAX_ENCODED_BYTES, "orset"), "orset", 3, exact=3)
    entries, in_entries = _decode_entries(fields[0])
    vv: dict[bytes, int] = {}
    for replica, n in map(_decode_dot, as_list(fields[1], "orset vv", MAX_REPLICAS)):
        if replica in vv:
            raise DecodeError("orset: duplicate replica in version vector")
        vv[replica] = n
    raw_cloud = as_list(fields[2], "orset cloud", MAX_DOTS)
    if in_entries + len(raw_cloud) > MAX_DOTS:
        raise DecodeError(f"orset: more than {MAX_DOTS} dots")
    vv, cloud = _compact(vv, map(_decode_dot, raw_cloud))
    if len(vv.keys() | {r for r, _ in cloud}) > MAX_REPLICAS:
        raise DecodeError(f"orset: more than {MAX_REPLICAS} replicas")
    s = ORSet(entries, vv, cloud)
    all_dots = [d for dots in entries.values() for d in dots]
    if len(set(all_dots)) != len(all_dots) or not all(_seen(s, d) for d in all_dots):
        raise DecodeError("orset: a dot is shared by two elements or outside the context")
    return s
