"""Anti-entropy messages for a replicated map ``key -> item``, pure.

Each item has a canonical encoding; the sync layer sees only ``key -> item_hash``.
Keys fall into `FANOUT` buckets by a fixed hash of the key. A bucket's hash is the
hash of its members' sorted ``(key, item hash)`` entry hashes, and the root is the
hash of the bucket hashes: both depend only on the map's contents, never on the
order in which it was built. One round goes:

1. A sends ``brief(summarize(…))``: a root of 16 bytes (a 20-byte message). Equal
   roots settle it, however many items there are.
2. Otherwise B answers with its full digest; `differing` names the buckets.
3. Each side sends the `listing` of those buckets; `plan` says which items to send
   and which to request. Only those items travel, in `page`-sized deltas.

Items are state-based CRDTs, so a stale, duplicated or reordered delta is merged
harmlessly. Every message is decoded by crdt.wire's one bounded decoder: anything a
peer sends is checked for size and shape and fails with `DecodeError` (re-exported
here with crdt.wire's helpers for the codecs that import them from this module).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crdt.wire import DecodeError, as_bytes, as_int, as_list, pack, unpack

__all__ = [
    "FANOUT",
    "HASH_BYTES",
    "MAX_DELTA_ITEMS",
    "MAX_ITEM_BYTES",
    "MAX_KEY_BYTES",
    "MAX_LISTING",
    "MAX_MESSAGE_BYTES",
    "DecodeError",
    "Digest",
    "as_bytes",
    "as_int",
    "as_list",
    "brief",
    "bucket_of",
    "decode_delta",
    "decode_digest",
    "decode_listing",
    "differing",
    "encode_delta",
    "encode_digest",
    "encode_listing",
    "item_hash",
    "listing",
    "pack",
    "page",
    "plan",
    "summarize",
    "unpack",
]

FANOUT = 64
HASH_BYTES = 16
MAX_KEY_BYTES = 256
MAX_ITEM_BYTES = 64 * 1024
MAX_LISTING = 4096  # entries in one listing message
MAX_DELTA_ITEMS = 256  # items in one delta message
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


# --- hashes and digests -------------------------------------------------------------


def _h(data: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES, person=person).digest()


def item_hash(encoded: bytes) -> bytes:
    """The 16-byte hash of an item's canonical encoding."""
    return _h(encoded, b"sporemind/item")


def bucket_of(key: bytes) -> int:
    """The bucket of `key`: fixed for every replica and every run."""
    digest = hashlib.blake2b(key, digest_size=2, person=b"sporemind/bucket").digest()
    return int.from_bytes(digest, "big") % FANOUT


def _entry(key: bytes, hashed: bytes) -> bytes:
    return _h(len(key).to_bytes(4, "big") + key + hashed, b"sporemind/entry")


@dataclass(frozen=True)
class Digest:
    """What a replica holds: the root, and the `FANOUT` bucket hashes (or `()`)."""

    root: bytes
    buckets: tuple[bytes, ...] = ()


def summarize(hashes: Mapping[bytes, bytes]) -> Digest:
    """The full digest of a map ``key -> item_hash``."""
    members: list[dict[bytes, bytes]] = [{} for _ in range(FANOUT)]
    for key, hashed in hashes.items():
        members[bucket_of(key)][key] = hashed
    return digest_of([bucket_hash(m) for m in members])


def bucket_hash(members: Mapping[bytes, bytes]) -> bytes:
    """The hash of one bucket's ``key -> item_hash`` entries (a replica that
    keeps its map split by bucket recomputes only the buckets that changed)."""
    return _h(b"".join(sorted(_entry(k, h) for k, h in members.items())), b"sporemind/bucket")


def digest_of(buckets: Sequence[bytes]) -> Digest:
    """The digest over `FANOUT` bucket hashes."""
    if len(buckets) != FANOUT:
        raise ValueError(f"a digest has {FANOUT} buckets, got {len(buckets)}")
    return Digest(_h(b"".join(buckets), b"sporemind/root"), tuple(buckets))


def brief(digest: Digest) -> Digest:
    """The root-only digest: the first, constant-size message of a round."""
    return Digest(digest.root)


def differing(a: Digest, b: Digest) -> list[int]:
    """Indices of the buckets that differ; every bucket if a side sent only its root."""
    if a.root == b.root:
        return []
    if len(a.buckets) != FANOUT or len(b.buckets) != FANOUT:
        return list(range(FANOUT))
    return [i for i in range(FANOUT) if a.buckets[i] != b.buckets[i]]


def listing(hashes: Mapping[bytes, bytes], buckets: Iterable[int]) -> dict[bytes, bytes]:
    """The ``key -> item_hash`` entries of `hashes` that fall in `buckets`."""
    wanted = set(buckets)
    return {k: h for k, h in hashes.items() if bucket_of(k) in wanted}


def plan(mine: Mapping[bytes, bytes],
         theirs: Mapping[bytes, bytes]) -> tuple[list[bytes], list[bytes]]:
    """(keys to send, keys to request), both sorted.

    Both listings must cover the same buckets. A key whose item differs on the two
    sides is in both lists: each side merges the other's item into its own.
    """
    send = sorted(k for k, h in mine.items() if theirs.get(k) != h)
    request = sorted(k for k, h in theirs.items() if mine.get(k) != h)
    return send, request


def page(keys: Sequence[bytes], max_items: int = MAX_DELTA_ITEMS) -> list[list[bytes]]:
    """Split `keys` into runs of at most `max_items`, so every message stays bounded."""
    if max_items < 1:
        raise ValueError("max_items must be positive")
    return [list(keys[i:i + max_items]) for i in range(0, len(keys), max_items)]


# --- messages -----------------------------------------------------------------------


def encode_digest(digest: Digest) -> bytes:
    return pack([digest.root, list(digest.buckets)])


def decode_digest(data: bytes) -> Digest:
    fields = as_list(unpack(data, 2048, "digest", max_len=FANOUT, max_str=HASH_BYTES),
                     "digest", 2, exact=2)
    root = as_bytes(fields[0], "digest root", HASH_BYTES, HASH_BYTES)
    raw = as_list(fields[1], "digest buckets", FANOUT)
    if len(raw) not in (0, FANOUT):
        raise DecodeError(f"digest: {len(raw)} buckets, expected 0 or {FANOUT}")
    buckets = tuple(as_bytes(b, "bucket hash", HASH_BYTES, HASH_BYTES) for b in raw)
    return Digest(root, buckets)


def _encode_pairs(pairs: Mapping[bytes, bytes]) -> bytes:
    return pack([[k, v] for k, v in sorted(pairs.items())])


def _decode_pairs(data: bytes, what: str, max_items: int,
                  min_value: int, max_value: int) -> dict[bytes, bytes]:
    rows = as_list(unpack(data, MAX_MESSAGE_BYTES, what, max_len=max_items,
                          max_str=max(MAX_KEY_BYTES, max_value)), what, max_items)
    out: dict[bytes, bytes] = {}
    for row in rows:
        raw_key, raw_value = as_list(row, f"{what} entry", 2, exact=2)
        key = as_bytes(raw_key, f"{what} key", MAX_KEY_BYTES)
        if key in out:
            raise DecodeError(f"{what}: duplicate key")
        out[key] = as_bytes(raw_value, f"{what} value", max_value, min_value)
    return out


def encode_listing(entries: Mapping[bytes, bytes]) -> bytes:
    """A listing message: ``key -> item_hash``, at most `MAX_LISTING` entries."""
    return _encode_pairs(entries)


def decode_listing(data: bytes) -> dict[bytes, bytes]:
    return _decode_pairs(data, "listing", MAX_LISTING, HASH_BYTES, HASH_BYTES)


def encode_delta(items: Mapping[bytes, bytes]) -> bytes:
    """A delta message: ``key -> encoded item``, at most `MAX_DELTA_ITEMS` items."""
    return _encode_pairs(items)


def decode_delta(data: bytes) -> dict[bytes, bytes]:
    """The delta's items, still encoded: the caller decodes and verifies each one."""
    return _decode_pairs(data, "delta", MAX_DELTA_ITEMS, 0, MAX_ITEM_BYTES)
