"""Forgetting across spores, in one process (tests/harness.py): the author's
tombstone spreads by gossip and every spore drops the memory (storage, index,
DHT replicas) and never answers with it again; a store of its content is
refused afterwards; a non-author only hides it on its own spore; a tombstone
for someone else's memory, from a revoked member, from the future, or a
flood of them from fresh identities, forgets nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dht import codec
from p2pnode.errors import NotFound, VerifyError
from p2pnode.forgetting import tombstone_validator
from p2pnode.gossip import KIND_FORGET, Caps, GossipStore, forget_key
from p2pnode.identity import Identity
from p2pnode.node import TeachItem
from p2pnode.records import MAX_SKEW_MS, RecordError, decode_tombstone, make_tombstone
from tests.harness import Harness, Node, alone
from tests.test_ask_inprocess import FIRST, OTHER, QUESTION, SECOND, run, taught, texts


def now_ms() -> int:
    return int(time.time() * 1000)


def held_by_dht(node: Node, memory_id: bytes) -> bool:
    """Whether the node's DHT store keeps the memory's content or an entry for it."""
    store = node.parts.swarm.store
    for key in store.keys():  # noqa: SIM118
        value = store.get(key)
        if value is None:
            continue
        if value[:1] == codec.KIND_CONTENT and key == memory_id:
            return True
        if value[:1] == codec.KIND_BUCKET and any(
                e.memory_id == memory_id for e in codec.decode_bucket(value)):
            return True
    return False


async def answers(node: Node, question: str = QUESTION) -> list[str]:
    return texts((await node.spore.ask(question, 5))["sources"])


def test_the_authors_forget_spreads_and_every_spore_drops_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            _, teacher, asker, _ = await h.spores(4)
            ids = await taught(h, teacher)
            gone = ids[FIRST]
            out = await asker.spore.ask(QUESTION)  # adopted by the asker: held there too
            assert out["answer"] == FIRST
            assert sum(held_by_dht(n, gone) for n in h.nodes) >= 2
            done = await teacher.spore.forgetting.forget(gone)
            assert done["forgotten"] == "everywhere" and done["spread"] is True
            assert FIRST not in await answers(teacher)  # at once on the author's spore
            await h.settle()
            for node in h.nodes:
                assert FIRST not in await answers(node), node.host
                assert SECOND in await answers(node)  # the others stay
                assert not held_by_dht(node, gone), node.host
                assert await node.spore.on_db(node.storage.memory_by_id, gone) is None
                with pytest.raises(NotFound, match="forgotten"):
                    await node.spore.memory(gone)
            # a restart keeps it forgotten (storage's marks, the gossip store's tombstones)
            state = asker.state_dir
            await h.stop(asker)
            again = await h.start(state)
            assert FIRST not in await answers(again)
    run(scenario)


def test_a_record_kept_by_someone_is_refused_everywhere_after_the_forget(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            _, teacher, other = await h.spores(3)
            ids = await taught(h, teacher)
            wire = await teacher.spore.on_db(teacher.storage.memory_record, ids[FIRST])
            assert wire is not None
            await teacher.spore.forgetting.forget(ids[FIRST])
            await h.settle()
            content = codec.encode_content(wire)
            for node in h.nodes:  # a holder's DHT store refuses it
                with pytest.raises(VerifyError, match="forgotten"):
                    node.parts.swarm.store.put(ids[FIRST], content, b"x" * 20, now_ms())
            # a published copy through the DHT is refused too (a misbehaving peer's put)
            got = await other.parts.swarm.publish([(ids[FIRST], content)])
            assert got == 0
            assert not any(held_by_dht(n, ids[FIRST]) for n in h.nodes)
    run(scenario)


def test_a_non_author_only_hides_a_memory_on_its_own_spore(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            _, teacher, other = await h.spores(3)
            ids = await taught(h, teacher)
            done = await other.spore.forgetting.forget(ids[FIRST])
            assert done["forgotten"] == "here" and done["author"] == teacher.key.hex()
            assert FIRST not in await answers(other)
            await h.settle()
            assert not other.parts.gossip.with_prefix(KIND_FORGET)  # nothing gossiped
            for node in h.nodes:
                if node is not other:
                    assert (await node.spore.ask(QUESTION))["answer"] == FIRST
            assert (await other.spore.forgetting.forget(ids[FIRST]))["forgotten"] == "already"
            with pytest.raises(NotFound):
                await other.spore.forgetting.forget(b"\x01" * 32)
    run(scenario)


def test_a_tombstone_for_someone_elses_memory_forgets_nothing(tmp_path: Path) -> None:
    """Signed by a member for a memory another member wrote: gossip carries it
    (under its signer's own key) but no spore honours it, and the author's own
    tombstone is not crowded out by it."""
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            _, teacher, liar = await h.spores(3)
            ids = await taught(h, teacher)
            forged = make_tombstone(liar.spore.identity, memory_id=ids[FIRST],
                                    swarm=h.dna.swarm_id, forgotten_ms=now_ms())  # type: ignore[union-attr]
            assert liar.parts.gossip.offer({forget_key(ids[FIRST], liar.key): forged.wire})
            # a tombstone under the author's key, signed by someone else: refused
            assert not liar.parts.gossip.offer({forget_key(ids[FIRST], teacher.key): forged.wire})
            assert liar.parts.gossip.counters["refused_tombstone_key"] == 1
            await h.settle()
            for node in h.nodes:
                assert (await node.spore.ask(QUESTION))["answer"] == FIRST, node.host
                assert len(node.parts.gossip.with_prefix(KIND_FORGET)) == 1
            await teacher.spore.forgetting.forget(ids[FIRST])
            await h.settle()
            for node in h.nodes:
                assert FIRST not in await answers(node)
    run(scenario)


def test_tombstones_of_a_revoked_member_or_an_outsider_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher, other = await h.spores(3)
            ids = await taught(h, teacher)
            outsider = Identity.generate()
            t = make_tombstone(outsider, memory_id=ids[SECOND], swarm=h.dna.swarm_id,  # type: ignore[union-attr]
                               forgotten_ms=now_ms())
            assert not other.parts.gossip.offer({forget_key(ids[SECOND], outsider.public_key):
                                                 t.wire})
            assert other.parts.gossip.counters["refused_tombstone_not_member"] == 1
            await founder.spore.revoke(teacher.key.hex(), "test")
            await h.converge()  # the teacher learns it is revoked too
            done = await teacher.spore.forgetting.forget(ids[FIRST])
            assert done["spread"] is False  # its own store refuses a revoked writer
            await h.settle()
            assert FIRST not in await answers(teacher)  # the author forgot it itself
            for node in (founder, other):
                assert FIRST in await answers(node)
                assert not node.parts.gossip.with_prefix(KIND_FORGET)
            # offered to a member's store directly: refused for its standing
            wire = make_tombstone(teacher.spore.identity, memory_id=ids[FIRST],
                                  swarm=h.dna.swarm_id, forgotten_ms=now_ms()).wire  # type: ignore[union-attr]
            assert not other.parts.gossip.offer({forget_key(ids[FIRST], teacher.key): wire})
            assert other.parts.gossip.counters["refused_tombstone_revoked"] >= 1
    run(scenario)


def test_a_tombstone_from_the_future_or_malformed_is_refused() -> None:
    me = Identity.from_seed(b"author")
    ok = make_tombstone(me, memory_id=b"m" * 32, swarm=b"s" * 32, forgotten_ms=now_ms())
    assert decode_tombstone(ok.wire, now_ms=now_ms()).author == me.public_key
    late = make_tombstone(me, memory_id=b"m" * 32, swarm=b"s" * 32,
                          forgotten_ms=now_ms() + MAX_SKEW_MS + 60_000)
    with pytest.raises(RecordError) as exc:
        decode_tombstone(late.wire, now_ms=now_ms())
    assert exc.value.reason == "forgotten_ms_future"
    for bad, reason in [
        (make_tombstone(me, memory_id=b"m" * 31, swarm=b"s" * 32, forgotten_ms=1),
         "memory_id_size"),
        (make_tombstone(me, memory_id=b"m" * 32, swarm=b"s" * 33, forgotten_ms=1),
         "swarm_size"),
        (make_tombstone(me, memory_id=b"m" * 32, swarm=b"s" * 32, forgotten_ms=1 << 63),
         "forgotten_ms_range"),
    ]:
        with pytest.raises(RecordError) as exc:
            decode_tombstone(bad.wire)
        assert exc.value.reason == reason
    forged = ok.wire.replace(b"m" * 32, b"n" * 32)
    with pytest.raises(RecordError) as exc:
        decode_tombstone(forged)
    assert exc.value.reason == "record_signature"
    with pytest.raises(RecordError) as exc:
        decode_tombstone(b"\x92" + b"\xc5\xff\xff" + b"x" * 70_000)
    assert exc.value.reason == "record_too_large"


def test_a_flood_of_tombstones_from_fresh_identities_stays_within_its_quota() -> None:
    """An open swarm's fresh keys are members but not trusted: they share the
    low quota, a few each, and evict nothing; a trusted author still writes."""
    swarm = b"s" * 32
    caps = Caps(tombstones=512, low_tombstones=64, low_tombstones_per_author=4)
    store = GossipStore({KIND_FORGET: tombstone_validator(swarm, lambda key: None)},
                        caps=caps)
    author = Identity.from_seed(b"trusted")
    store.trusted = lambda key: key == author.public_key
    for i in range(100):
        fresh = Identity.from_seed(f"sybil {i}".encode())
        for j in range(8):
            t = make_tombstone(fresh, memory_id=bytes([i, j]) * 16, swarm=swarm,
                               forgotten_ms=now_ms())
            store.offer({forget_key(t.memory_id, fresh.public_key): t.wire})
    held = store.with_prefix(KIND_FORGET)
    assert len(held) == caps.low_tombstones
    assert store.counters["refused_quota"] == 100 * 8 - caps.low_tombstones
    assert all(sum(decode_tombstone(v).author == a for _, v in held) <= 4
               for a in {decode_tombstone(v).author for _, v in held})
    mine = make_tombstone(author, memory_id=b"a" * 32, swarm=swarm, forgotten_ms=now_ms())
    assert store.offer({forget_key(mine.memory_id, author.public_key): mine.wire})


def test_a_spore_alone_forgets_its_own_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with alone(tmp_path / "solo") as spore:
            [(mid, _), _] = await spore.teach([TeachItem(FIRST), TeachItem(OTHER)])
            assert (await spore.ask(QUESTION))["answer"] == FIRST
            assert (await spore.forgetting.forget(mid))["forgotten"] == "everywhere"
            assert FIRST not in texts((await spore.ask(QUESTION, 5))["sources"])
            # taught again: a new memory (a new id), the old one stays forgotten
            [(again, new)] = await spore.teach([TeachItem(FIRST)])
            assert new and again != mid
        async with alone(tmp_path / "solo") as spore:  # restarted: still forgotten
            assert spore.forgetting.tombstoned(mid, spore.identity.public_key)
            with pytest.raises(NotFound, match="forgotten"):
                await spore.memory(mid)
    run(scenario)
