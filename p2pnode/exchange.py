"""Export and import: a spore's memories as JSON lines, and back.

An export is one JSON object a line, streamed page by page (never the whole
store in memory): a ``header`` (format, version, swarm, encoder), then the
authors' ``tombstone`` records, every ``memory`` record held here, and the
``vote`` records on those memories, each signed record as it is (base64 of
its wire bytes, so an import verifies it) beside what a reader wants to see
(text, provenance: author, origin, time, swarm). With ``rated`` it is
training data instead: this spore's own rated questions (their text never
left it) with the memory's answer and the ratings (``rated`` lines).

An import judges each line alone and trusts only the signed record in it
(the readable fields are ignored): a memory is verified by its decoder
(signature, every field, the swarm's dimension, its time), refused if
forgotten here, and deduplicated by content (storage: its id, and author
with text and origin); a vote goes through the gossip store's validators as
a peer's would; a tombstone too, and is honoured. A line that fails is
refused with its reason and counted; the others go on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dht import compact
from p2pnode.errors import VerifyError
from p2pnode.gossip import KIND_FORGET, KIND_VOTE, forget_key, vote_key
from p2pnode.records import (
    MemoryRecord,
    RecordError,
    Tombstone,
    VoteRecord,
    decode_memory,
    decode_tombstone,
    decode_vote,
)
from p2pnode.storage import FORGOTTEN_ROW

if TYPE_CHECKING:
    from p2pnode.node import Spore

__all__ = ["FORMAT", "MAX_LINE_BYTES", "Summary", "export_lines", "import_lines"]

FORMAT, VERSION = "sporemind-export", 1
MAX_LINE_BYTES = 1 << 20  # a 64 KiB record in base64 with its text readable beside it
PAGE = 256  # memories (or ratings) read from storage at once


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _header(spore: Spore, rated: bool) -> str:
    encoder = spore.dna.fields.get("encoder", {})
    return _line({"kind": "header", "format": FORMAT, "version": VERSION, "rated": rated,
                  "swarm": spore.dna.fields.get("swarm"), "swarm_id": spore.dna.swarm_id.hex(),
                  "encoder_sha256": encoder.get("sha256"), "dim": spore.dim,
                  "node_id": spore.identity.node_id.hex(), "exported_ms": spore.now_ms()})


def _memory_line(rec: MemoryRecord) -> str:
    return _line({"kind": "memory", "id": rec.id.hex(), "record": _b64(rec.wire),
                  "question": rec.question, "text": rec.answer,
                  "provenance": {"author": rec.author.hex(), "origin": rec.origin,
                                 "created_ms": rec.created_ms, "swarm_id": rec.dna_hash.hex()}})


async def export_lines(spore: Spore, *, rated: bool = False) -> AsyncIterator[str]:
    """The export of `spore`, a line at a time (see the module's docstring)."""
    yield _header(spore, rated)
    if rated:
        async for line in _rated_lines(spore):
            yield line
        return
    for _, author, tomb in await spore.on_db(spore.storage.forgotten):
        if tomb is not None and author:
            yield _line({"kind": "tombstone", "record": _b64(tomb)})
    exported: set[bytes] = set()
    after = 0
    while page := await spore.on_db(spore.storage.records_after, after, PAGE):
        after = page[-1][0]
        for _, wire in page:
            try:
                rec = decode_memory(wire)
            except VerifyError:  # stored by an older, laxer version: not exported
                continue
            exported.add(rec.id)
            yield _memory_line(rec)
    for wire in await _vote_wires(spore):
        try:
            vote = decode_vote(wire)
        except VerifyError:
            continue
        if vote.memory_id in exported:
            yield _line({"kind": "vote", "memory_id": vote.memory_id.hex(), "record": _b64(wire)})


async def _vote_wires(spore: Spore) -> list[bytes]:
    held = [] if spore.gossip is None else [w for _, w in spore.gossip.with_prefix(KIND_VOTE)]
    return held + await spore.on_db(spore.storage.vote_records)


async def _rated_lines(spore: Spore) -> AsyncIterator[str]:
    after = 0
    while page := await spore.on_db(spore.storage.rated_after, after, PAGE):
        after = page[-1][0]
        for _, question, memory, up, down, at_ms, answer in page:
            label = "up" if up > down else "down" if down > up else "tie"
            yield _line({"kind": "rated", "question": question, "answer": answer,
                         "memory_id": memory.hex(), "label": label, "up": up, "down": down,
                         "rated_ms": at_ms})


# --- import ----------------------------------------------------------------------------

@dataclass
class Summary:
    """What an import did: memories imported and known already, votes and
    tombstones taken, lines refused by reason."""

    lines: int = 0
    imported: int = 0
    duplicate: int = 0
    votes: int = 0
    tombstones: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def add(self, other: Summary) -> None:
        for name in ("lines", "imported", "duplicate", "votes", "tombstones"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refused.update(other.refused)

    def json(self) -> dict[str, Any]:
        return {"lines": self.lines, "imported": self.imported, "duplicate": self.duplicate,
                "votes": self.votes, "tombstones": self.tombstones,
                "refused": dict(sorted(self.refused.items()))}


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse(line: str) -> tuple[str, dict[str, Any]]:
    """(kind, object) of one line; Refused with a reason otherwise."""
    if len(line) > MAX_LINE_BYTES or len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise Refused("line_too_long")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise Refused("line_malformed") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise Refused("line_malformed")
    return obj["kind"], obj


def _wire(obj: dict[str, Any]) -> bytes:
    record = obj.get("record")
    if not isinstance(record, str):
        raise Refused("record_missing")
    try:
        return base64.b64decode(record, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("record_malformed") from None


@dataclass
class _Batch:
    memories: list[MemoryRecord] = field(default_factory=list)
    votes: list[VoteRecord] = field(default_factory=list)
    tombs: list[Tombstone] = field(default_factory=list)


async def import_lines(spore: Spore, lines: Iterable[str]) -> Summary:
    """Import a batch of lines into `spore` (callers stream a file a batch at a time)."""
    out, batch = Summary(), _Batch()
    now = spore.now_ms()
    for line in lines:
        if not line.strip():
            continue
        out.lines += 1
        try:
            _judge(spore, line, now, batch)
        except Refused as exc:
            out.refused[exc.reason] += 1
        except RecordError as exc:
            out.refused[exc.reason] += 1
        except VerifyError:
            out.refused["record_invalid"] += 1
    await _take_tombstones(spore, batch.tombs, out)
    await _take_memories(spore, batch.memories, out)
    await _take_votes(spore, batch.votes, out)
    return out


def _judge(spore: Spore, line: str, now: int, batch: _Batch) -> None:
    kind, obj = _parse(line)
    if kind == "header":
        if obj.get("format") != FORMAT:
            raise Refused("header_format")
        if obj.get("rated") is True:
            raise Refused("rated_not_importable")
        return
    if kind == "memory":
        rec = decode_memory(_wire(obj), dim=spore.dim, now_ms=now)
        if spore.forgetting.gone(rec.id, rec.author):
            raise Refused("forgotten")
        batch.memories.append(rec)
    elif kind == "vote":
        batch.votes.append(decode_vote(_wire(obj), dim=spore.dim))
    elif kind == "tombstone":
        batch.tombs.append(decode_tombstone(_wire(obj), now_ms=now))
    elif kind == "rated":
        raise Refused("rated_not_importable")
    else:
        raise Refused("kind_unknown")


async def _take_memories(spore: Spore, recs: list[MemoryRecord], out: Summary) -> None:
    if not recs:
        return
    vectors = np.stack([r.vector() for r in recs])
    codes, scales = compact.to_int8(vectors)
    prepared = [(r, codes[i].tobytes(), float(scales[i])) for i, r in enumerate(recs)]
    stored = await spore.on_db(spore.storage.add_memories, prepared)
    fresh = [(i, row) for i, (row, _, new) in enumerate(stored) if new]
    out.imported += len(fresh)
    out.refused["forgotten"] += sum(row == FORGOTTEN_ROW for row, _, _ in stored)
    out.duplicate += sum(not new and row != FORGOTTEN_ROW for row, _, new in stored)
    if not out.refused["forgotten"]:
        del out.refused["forgotten"]
    if fresh:
        rows = np.asarray([row for _, row in fresh], np.int64)
        await spore.on_compute(spore.index.add_compact, rows, codes[[i for i, _ in fresh]],
                               scales[[i for i, _ in fresh]])


async def _take_votes(spore: Spore, votes: list[VoteRecord], out: Summary) -> None:
    """Votes as a peer's: the gossip store's validators judge them (standing,
    key, quotas), accepted ones go into the book. A spore without gossip keeps
    them in storage's votes table, as it keeps its own."""
    if spore.gossip is None:
        for vote in votes:
            if await spore.on_db(spore.storage.put_vote, vote):
                out.votes += 1
                spore._tally_vote(vote)
            else:
                out.duplicate += 1
        return
    items = {vote_key(v.memory_id, v.voter, v.region): v.wire for v in votes}
    await _offer(spore, items, out, "vote")


async def _take_tombstones(spore: Spore, tombs: list[Tombstone], out: Summary) -> None:
    if spore.gossip is None:
        out.tombstones += len(tombs)
        await spore.forgetting.honour(tombs)
        return
    await _offer(spore, {forget_key(t.memory_id, t.author): t.wire for t in tombs}, out,
                 "tombstone")


async def _offer(spore: Spore, items: dict[bytes, bytes], out: Summary, what: str) -> None:
    """Items judged as a peer's would be (reasons counted), then merged."""
    assert spore.gossip is not None
    now = spore.now_ms()
    judge = spore.gossip.validators[KIND_VOTE if what == "vote" else KIND_FORGET]
    fit: dict[bytes, bytes] = {}
    for key, item in items.items():
        try:
            judge(key, item, now)
            fit[key] = item
        except VerifyError as exc:
            out.refused[str(getattr(exc, "reason", f"{what}_invalid"))] += 1
    accepted = spore.gossip.offer(fit)
    taken = {a.key for a in accepted}
    for key, item in fit.items():
        if key in taken:
            continue
        if spore.gossip.get(key) == item:
            out.duplicate += 1
        else:
            out.refused[f"{what}_not_kept"] += 1  # a quota, or a newer one held
    if what == "vote":
        out.votes += len(accepted)
    else:
        out.tombstones += len(accepted)
    if accepted:
        await spore.on_gossip(accepted)
