"""Which swarm candidates an ask fetches (p2pnode.swarm): index entries are
their writers' claims, so no author may take the fetch budget, and a forger's
entry for another author's memory never stands in for the author's own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dht import codec
from p2pnode import dna as dna_mod
from p2pnode.identity import Identity
from p2pnode.records import make_memory
from p2pnode.swarm import Lookup, Swarm, SwarmSettings

DIM = 384
FOUNDER, ALICE, MALLORY = (Identity.from_seed(s) for s in (b"founder", b"alice", b"mallory"))
DNA = dna_mod.found(FOUNDER, swarm="fetch", encoder_name="e", encoder_sha256="00" * 32,
                    dim=DIM, created_ms=1)


def _swarm(tmp: Path) -> Swarm:
    return Swarm(identity=FOUNDER, dna=DNA, state_dir=tmp, dim=DIM, settings=SwarmSettings())


def _entry(s: Swarm, who: Identity, emb: np.ndarray, memory_id: bytes | None = None
           ) -> codec.IndexEntry:
    return codec.make_entry(who, memory_id or os.urandom(32), s.sketch @ emb, 0, 0, 1)


def _unit(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=DIM).astype(np.float32)
    return x / np.linalg.norm(x)


def test_one_author_cannot_take_the_fetch_budget_but_a_lone_one_fills_it(
        tmp_path: Path) -> None:
    s = _swarm(tmp_path)
    rng = np.random.default_rng(1)
    q = _unit(rng)
    honest = [_entry(s, ALICE, 0.5 * q + _unit(rng)) for _ in range(8)]
    forged = [_entry(s, MALLORY, q) for _ in range(40)]  # claims the question's own bits
    entries = {e.memory_id: [e] for e in honest + forged}
    chosen = s._fetch_order(q, entries, 12)
    assert len(chosen) == 12
    assert sum(a == MALLORY.public_key for _, a in chosen) == 6
    assert {m for m, _ in chosen} >= {e.memory_id for e in honest[:6]} or \
        sum(a == ALICE.public_key for _, a in chosen) == 6
    alone = {e.memory_id: [e] for e in forged}
    assert len(s._fetch_order(q, alone, 12)) == 12  # nobody else waits: no cap
    s.store.close()


def test_a_forged_entry_for_another_authors_memory_does_not_reject_it(tmp_path: Path) -> None:
    s = _swarm(tmp_path)
    rng = np.random.default_rng(2)
    q = _unit(rng)
    rec = make_memory(ALICE, question="", answer="the real answer", embedding=q, created_ms=1,
                      origin="taught", dna_hash=DNA.swarm_id)
    content = codec.encode_content(rec.wire)
    both = {ALICE.public_key, MALLORY.public_key}
    found = s._content(rec.id, content, q, both)
    assert found is not None and found.record.author == ALICE.public_key
    assert s._content(rec.id, content, q, {MALLORY.public_key}) is None  # no author's entry
    s.store.close()


def test_what_is_worth_fetching_leaves_out_what_is_held_or_rejected(tmp_path: Path) -> None:
    """The fetch stage's choice (Swarm.worth_fetching): given the index
    entries a lookup found, what is held here or rejected for the question
    is not fetched, its place goes to the next; memories recalled by votes
    come too, once; a spore alone (no fetch budget) fetches nothing."""
    s = _swarm(tmp_path)
    rng = np.random.default_rng(3)
    q = _unit(rng)
    entries = [_entry(s, ALICE, q + 0.1 * i * _unit(rng)) for i in range(30)]
    found = Lookup({e.memory_id: [e] for e in entries}, 12)
    held, rejected = {entries[0].memory_id}, {entries[1].memory_id, entries[2].memory_id}
    recalled = [entries[29].memory_id, os.urandom(32), entries[0].memory_id]
    wanted = s.worth_fetching(q, found, 3, held=held, rejected=rejected,
                              recalled=[*recalled, recalled[1]])
    ids = [w.memory_id for w in wanted]
    assert len(ids) == len(set(ids))
    assert not (held | rejected) & set(ids)
    rest = {e.memory_id: [e] for e in entries[3:]}  # the next ones by sketch
    assert ids[:12] == [m for m, _ in s._fetch_order(q, rest, 12)]
    assert all(w.authors == frozenset({ALICE.public_key}) for w in wanted[:12])
    assert [w.memory_id for w in wanted[12:]] == recalled[:2]  # the held one is not fetched
    assert all(w.authors is None for w in wanted[12:])
    assert s.counters["skipped_rejected"] == 2
    assert s.worth_fetching(q, Lookup(found.entries, 0), 3) == []
    s.store.close()
