"""What the swarm DHT stores: values, how they verify and how they merge (pure).

The network layer sees opaque bytes; this module gives them a meaning. Every
value starts with a one-byte kind tag:

* ``B`` (:data:`KIND_BUCKET`), under a bucket key (:func:`dht.keys.bucket_key`):
  a bounded set of signed :class:`IndexEntry`, ``B ‖ msgpack([[body, sig], …])``.
* ``C`` (:data:`KIND_CONTENT`), under a content key (= the memory id):
  one memory record and its vote entries,
  ``C ‖ msgpack([memory wire, [vote wire, …]])``.

Decoding verifies every signature and raises :class:`VerifyError` on
anything wrong: one bad entry refuses the whole value. Sizes are checked
before anything is parsed. Encoders emit canonical bytes (deduplicated,
sorted), so equal states are equal bytes on every node.

Both merges are joins (commutative, associative, idempotent), including
when a cap drops entries: a later merge can never resurrect what a cap
dropped (see :func:`merge_buckets` for why the bucket's rule keeps that).

Nothing a writer claims decides which entries a full bucket keeps: authors
share it round-robin, in orders drawn from hashes (NOTES.md, "a rank decided
by the writer's own claim").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crdt import wire
from p2pnode.errors import VerifyError
from p2pnode.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Envelope, Identity, envelope_of
from p2pnode.records import MAX_RECORD_BYTES, MemoryRecord, decode_memory

__all__ = [
    "BITS_BYTES", "INDEX_DOMAIN", "KIND_BUCKET", "KIND_CONTENT", "MAX_BUCKET_BYTES",
    "MAX_BUCKET_ENTRIES", "MAX_CONTENT_BYTES", "MAX_ENTRY_BYTES", "MAX_SKEW_MS", "MAX_VOTES",
    "MAX_VOTE_BYTES", "Content", "IndexEntry", "cosine_estimate", "decode_bucket",
    "decode_content", "dht_id", "embedding_bits", "encode_bucket", "encode_content",
    "hamming_similarity", "make_entry", "merge_buckets", "merge_content", "merge_values",
    "node_dht_id", "not_after", "validate_value",
]

KIND_BUCKET = b"B"
KIND_CONTENT = b"C"
INDEX_DOMAIN = b"sporemind/index/v1"
_DHT_ID_PREFIX = b"sporemind/dht-id/v1"
_SHARE_PREFIX = b"sporemind/bucket-share/v1"
KEY_BYTES = 32
DHT_ID_BYTES = 20  # kademlia's ids are 160 bits
BITS_BYTES = 48  # 384 sign bits: the encoder's dimension (another dim needs index/v2)
_MAX_UINT = (1 << 63) - 1  # what SQLite and every msgpack reader can hold
_VERSION = 1
# How far ahead of a holder's clock an entry's created time may be. Entries
# dated later are not stored yet (nothing ranks by the time: this is sanity).
MAX_SKEW_MS = 5 * 60 * 1000

# One entry is [body, sig] with body = ["index", 1, id, bits, author, up, down,
# created]: 1 + 6 + 1 + 34 + 50 + 34 + 3 × 9 (uints at most) = 153 bytes, plus
# 1 + 2 + 2 + 64 framing and signature = 222 bytes (≈206 with small counts).
MAX_ENTRY_BYTES = 222
MAX_BUCKET_ENTRIES = 32
# Kind tag + array16 header + 32 entries = 7,108 bytes: one kademlia datagram
# (rpcudp sends at most 8,192 bytes), with room left for the RPC framing.
MAX_BUCKET_BYTES = 1 + 3 + MAX_BUCKET_ENTRIES * MAX_ENTRY_BYTES
# The votes an older spore's content value may carry (ignored), bounded: a
# vote is ~580 bytes with a 388-byte compact question vector; 1 KiB is ample.
MAX_VOTES = 256
MAX_VOTE_BYTES = 1024
# ~320 KiB at most (with an older value's votes): content does NOT fit one
# datagram once it has a long answer, so the network layer carries it otherwise.
MAX_CONTENT_BYTES = 1 + 3 + 5 + MAX_RECORD_BYTES + 3 + MAX_VOTES * (3 + MAX_VOTE_BYTES)

F32 = npt.NDArray[np.float32]


_pack = wire.pack


def _unpack(data: bytes, what: str, max_bytes: int, *, max_len: int | None = None,
            canonical: bool = False) -> object:
    """crdt.wire's one bounded decode; its errors as VerifyError."""
    try:
        return wire.unpack(data, max_bytes, what, max_len=max_len, canonical=canonical)
    except wire.DecodeError as exc:
        raise VerifyError(f"malformed {exc}") from exc


def _uint(x: object) -> bool:
    # bool is an int in Python, but a msgpack `true` is no counter
    return type(x) is int and 0 <= x <= _MAX_UINT


def _key(key32: bytes) -> bytes:
    if not isinstance(key32, bytes) or len(key32) != KEY_BYTES:
        raise VerifyError(f"a DHT key must be {KEY_BYTES} bytes")
    return key32


def dht_id(key32: bytes) -> bytes:
    """The ONE mapping of a 32-byte value key to a 160-bit kademlia id."""
    return hashlib.sha256(_DHT_ID_PREFIX + _key(key32)).digest()[:DHT_ID_BYTES]


def node_dht_id(public_key: bytes) -> bytes:
    """A node's routing id: the first 160 bits of its node id (SHA-256 of its key)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise VerifyError("a public key must be 32 bytes")
    return hashlib.sha256(public_key).digest()[:DHT_ID_BYTES]


# --- compact embeddings ---------------------------------------------------------------

def embedding_bits(emb: F32) -> bytes:
    """Sign bits of an embedding, packed big-endian: bit i is 1 iff emb[i] > 0."""
    x = np.asarray(emb, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError("embedding has NaN or infinite values")
    return np.packbits(x > 0).tobytes()


def hamming_similarity(a: bytes, b: bytes) -> float:
    """Fraction of equal bits, in [0, 1]."""
    if len(a) != len(b) or not a:
        raise ValueError(f"bit strings differ in length ({len(a)} vs {len(b)}) or are empty")
    differ = (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()
    return 1.0 - differ / (8 * len(a))


def cosine_estimate(a: bytes, b: bytes) -> float:
    """SimHash's cos(π · differing fraction).

    Exact in expectation for random hyperplanes; coordinate signs are not
    random planes (embedding axes are correlated), so treat this as a rough
    pre-ranking and score candidates on their full embedding.
    """
    return math.cos(math.pi * (1.0 - hamming_similarity(a, b)))


# --- index entries -----------------------------------------------------------------

@dataclass(frozen=True)
class IndexEntry:
    """One memory in a bucket: its id, sign bits, author and the author's claims.

    `up`, `down` and `created_ms` are what the author signed, bounded to
    [0, 2**63) and never used to rank: a memory's votes are read from its
    content key. They stay for the wire format (index/v1).
    """

    memory_id: bytes
    bits: bytes
    author: bytes
    up: int
    down: int
    created_ms: int
    signature: bytes
    body: bytes  # the signed canonical bytes, kept: we never re-encode to verify

    @property
    def wire(self) -> bytes:
        return Envelope(self.body, self.signature).wire

    @property
    def slot(self) -> tuple[bytes, bytes]:
        """What a bucket holds once: (memory id, author)."""
        return self.memory_id, self.author


def _entry_body(memory_id: bytes, bits: bytes, author: bytes, up: int, down: int,
                created_ms: int) -> bytes:
    return _pack(["index", _VERSION, memory_id, bits, author, up, down, created_ms])


def make_entry(identity: Identity, memory_id: bytes, emb: F32, up: int, down: int,
               created_ms: int) -> IndexEntry:
    """Sign an index entry for `memory_id` (ValueError on values no peer would accept)."""
    bits = embedding_bits(emb)
    if len(memory_id) != KEY_BYTES or len(bits) != BITS_BYTES:
        raise ValueError(f"need a 32-byte memory id and a {8 * BITS_BYTES}-d embedding")
    if not all(_uint(n) for n in (up, down, created_ms)):
        raise ValueError("up, down and created_ms must be integers in [0, 2**63)")
    body = _entry_body(memory_id, bits, identity.public_key, up, down, created_ms)
    return IndexEntry(memory_id, bits, identity.public_key, up, down, created_ms,
                      identity.sign(INDEX_DOMAIN, body), body)


def _decode_entry(pair: object) -> IndexEntry:
    try:
        body, sig, _ = envelope_of(pair, "index entry")
    except wire.DecodeError as exc:
        raise VerifyError("an index entry must be [body, signature]") from exc
    # canonical: one entry, one encoding
    f = _unpack(body, "index entry", MAX_ENTRY_BYTES, max_len=8, canonical=True)
    if not (isinstance(f, list) and len(f) == 8 and f[0] == "index" and f[1] == _VERSION):
        raise VerifyError("not a v1 index entry")
    _, _, memory_id, bits, author, up, down, created = f
    if not (isinstance(memory_id, bytes) and len(memory_id) == KEY_BYTES
            and isinstance(bits, bytes) and len(bits) == BITS_BYTES
            and isinstance(author, bytes) and len(author) == PUBLIC_KEY_BYTES
            and len(sig) == SIGNATURE_BYTES and _uint(up) and _uint(down) and _uint(created)):
        raise VerifyError("index entry has fields of the wrong type or size")
    Envelope(body, sig).verify(INDEX_DOMAIN, author)
    return IndexEntry(memory_id, bits, author, up, down, created, sig, body)


# --- bucket values -------------------------------------------------------------------

def _newest(e: IndexEntry) -> tuple[int, bytes, bytes]:
    """Which of an author's signings for one memory stands: its latest claim."""
    return e.created_ms, e.body, e.signature


def _share_order(salt: bytes, entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    """Entries (one per slot) round-robin across authors, first kept first.

    Level n holds every author's n-th entry; levels go in order, so nobody's
    n-th entry can push out anyone's first n. Within an author, entries go
    by a hash of (bucket, memory id); within a level, authors by a hash of
    (bucket, author). Claims (up, down, created) take no part.
    """
    by_author: dict[bytes, list[IndexEntry]] = {}
    for e in entries:
        by_author.setdefault(e.author, []).append(e)
    ranked: list[tuple[int, bytes, bytes, IndexEntry]] = []
    for author, mine in by_author.items():
        turn = hashlib.sha256(_SHARE_PREFIX + b"/author" + salt + author).digest()
        mine.sort(key=lambda e: hashlib.sha256(
            _SHARE_PREFIX + b"/memory" + salt + e.memory_id).digest() + e.memory_id)
        ranked.extend((level, turn, author, e) for level, e in enumerate(mine))
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def merge_buckets(a: Iterable[IndexEntry], b: Iterable[IndexEntry],
                  cap: int = MAX_BUCKET_ENTRIES, *, salt: bytes = b"") -> list[IndexEntry]:
    """Union by (memory id, author); over `cap`, shares round-robin by author.

    `salt` is the bucket's key, so the hash orders differ between buckets
    (an author last in turn in one bucket is not last everywhere). The
    result is sorted by (memory id, author): canonical whatever the salt
    while under the cap.

    Fairness: with A authors present, each keeps at least min(its entries,
    cap // A), whatever anyone claims or how many entries anyone sends.
    A memory id is held once per author: someone else's entry for your
    memory takes a place in *their* share, never yours.

    A join, with the cap: which slots stay depends only on the set of slots
    (never on which signing of a slot won), and the round-robin choice is
    path-independent. An entry dropped from a set is dropped from every
    superset (its level only grows there, and so does every level's
    count), and the entries kept keep their levels in any subset that
    holds them; so merging what caps already cut keeps exactly what merging
    everything at once keeps (tests/test_dht_wipe.py checks the laws).
    """
    latest: dict[tuple[bytes, bytes], IndexEntry] = {}
    for entry in (*a, *b):
        mine = latest.get(entry.slot)
        if mine is None or _newest(entry) > _newest(mine):
            latest[entry.slot] = entry
    kept = _share_order(salt, latest.values())[:max(cap, 0)]
    return sorted(kept, key=lambda e: e.slot)


def not_after(entries: Iterable[IndexEntry], now_ms: int) -> list[IndexEntry]:
    """The entries dated no later than `now_ms` + MAX_SKEW_MS; VerifyError if none.

    Entries dated later are dropped, not the whole value: a holder whose
    clock is ahead of ours may rightly hold one, and its other entries are
    still good.
    """
    limit = now_ms + MAX_SKEW_MS
    ok = [e for e in entries if e.created_ms <= limit]
    if not ok:
        raise VerifyError("index entries dated in the future")
    return ok


def encode_bucket(entries: Iterable[IndexEntry], *, salt: bytes = b"") -> bytes:
    """Canonical bucket value: one entry per (memory id, author), at most
    MAX_BUCKET_ENTRIES shared round-robin by author; `salt` = the bucket's key."""
    kept = merge_buckets(entries, (), MAX_BUCKET_ENTRIES, salt=salt)
    if not kept:
        raise ValueError("an empty bucket is not a value")  # a missing key says that
    return KIND_BUCKET + _pack([[e.body, e.signature] for e in kept])


def decode_bucket(data: bytes, max_entries: int = MAX_BUCKET_ENTRIES) -> list[IndexEntry]:
    """Every entry verified, or VerifyError for the whole value."""
    if len(data) > 4 + max_entries * MAX_ENTRY_BYTES:
        raise VerifyError(f"bucket value of {len(data)} bytes is over its cap")
    if data[:1] != KIND_BUCKET:
        raise VerifyError("not a bucket value")
    pairs = _unpack(data[1:], "bucket value", 3 + max_entries * MAX_ENTRY_BYTES,
                    max_len=max(max_entries, 2))
    if not isinstance(pairs, list) or not 0 < len(pairs) <= max_entries:
        raise VerifyError(f"a bucket must be a list of 1 to {max_entries} entries")
    entries = [_decode_entry(p) for p in pairs]
    if len({e.slot for e in entries}) != len(entries):
        raise VerifyError("bucket lists an author's memory twice")
    return entries


# --- content values ------------------------------------------------------------------

# A content value is [memory record, votes]. The votes part was meant to
# carry each memory's vote CRDT with its content, but no spore ever filled it
# (every spore gets every vote by gossip, p2pnode.gossip, and ranks with them
# all: p2pnode.regions): it is written empty, as older spores expect the
# shape, and what an older value carries there is bounded and ignored.

@dataclass(frozen=True)
class Content:
    """A memory record, as the DHT holds it under its content key."""

    memory: MemoryRecord

    @property
    def id(self) -> bytes:
        return self.memory.id

    def encode(self) -> bytes:
        return KIND_CONTENT + _pack([self.memory.wire, []])


def _content_from(memory_wire: object, old_votes: object, expect_id: bytes | None) -> Content:
    if not isinstance(memory_wire, bytes) or not isinstance(old_votes, list):
        raise VerifyError("content must be [memory record, [votes]]")
    if len(old_votes) > MAX_VOTES or not all(
            isinstance(v, bytes) and len(v) <= MAX_VOTE_BYTES for v in old_votes):
        raise VerifyError(f"content carries more than {MAX_VOTES} votes, or one that is "
                          f"not bytes of at most {MAX_VOTE_BYTES}")
    memory = decode_memory(memory_wire)
    if expect_id is not None and memory.id != expect_id:
        raise VerifyError("memory record does not hash to its content key")
    return Content(memory)


def encode_content(memory_wire: bytes) -> bytes:
    """Canonical content value of a memory record (verified)."""
    return _content_from(memory_wire, [], None).encode()


def decode_content(data: bytes, expect_id: bytes) -> Content:
    """Verify a content value stored under `expect_id`, or raise VerifyError
    (the votes an older spore's value may carry are ignored)."""
    if len(data) > MAX_CONTENT_BYTES:
        raise VerifyError(f"content value of {len(data)} bytes is over its cap")
    if data[:1] != KIND_CONTENT:
        raise VerifyError("not a content value")
    parts = _unpack(data[1:], "content value", MAX_CONTENT_BYTES)
    if not isinstance(parts, list) or len(parts) != 2:
        raise VerifyError("content must be [memory record, [votes]]")
    return _content_from(parts[0], parts[1], _key(expect_id))


def merge_content(a: Content, b: Content) -> Content:
    """Both of one record: that record."""
    if a.memory.wire != b.memory.wire:
        raise VerifyError("cannot merge contents of two different memories")
    return a


# --- values as the network layer sees them ----------------------------------------

def _kind_of(data: bytes) -> str:
    tag = data[:1]
    if tag == KIND_BUCKET:
        return "bucket"
    if tag == KIND_CONTENT:
        return "content"
    raise VerifyError("value has no known kind tag")


def _bucket_entries(data: bytes, now_ms: int | None) -> list[IndexEntry]:
    entries = decode_bucket(data)
    return entries if now_ms is None else not_after(entries, now_ms)


def validate_value(key32: bytes, data: bytes, *, now_ms: int | None = None
                   ) -> tuple[str, bytes]:
    """("bucket" | "content", canonical bytes) of a value offered for `key32`.

    A bucket's entries cannot be checked against its key here (that needs
    the full embeddings and the swarm's planes); a content value must hash
    to its key. With `now_ms` (a holder storing it), bucket entries dated
    after now + MAX_SKEW_MS are dropped.
    """
    _key(key32)
    kind = _kind_of(data)
    if kind == "content":
        return kind, decode_content(data, key32).encode()
    return kind, encode_bucket(_bucket_entries(data, now_ms), salt=key32)


def merge_values(key32: bytes, old: bytes, new: bytes, *, now_ms: int | None = None) -> bytes:
    """Join of two values for one key, canonical; VerifyError if `new` is refused.

    A content value proves its key (it hashes to it) and a bucket cannot, so
    content replaces a bucket squatting on a memory id, while a bucket
    offered over content is refused. `now_ms` checks the dates of `new` as
    validate_value does (`old` was checked when it was stored).
    """
    old_kind, new_kind = _kind_of(old), _kind_of(new)
    if old_kind != new_kind:
        if new_kind == "content":
            return validate_value(key32, new)[1]
        raise VerifyError("a bucket value cannot replace content")
    if new_kind == "content":
        merged = merge_content(decode_content(old, key32), decode_content(new, key32))
        return merged.encode()
    _key(key32)
    merged_entries = merge_buckets(decode_bucket(old), _bucket_entries(new, now_ms), salt=key32)
    return encode_bucket(merged_entries, salt=key32)
