"""The daemon's composition (p2pnode.daemon.assemble, start_parts): every part
built before anything starts, the peer service before the DHT is bound, and
started in order on the DHT's address. Real SQLite files, a real UDP DHT and
real peer HTTP on 127.0.0.1; the encoder is the harness's fake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from crdt import sync
from p2pnode import dna as dna_mod
from p2pnode import joining
from p2pnode.colony import AGENTS_DB
from p2pnode.daemon import GOSSIP_DB, AgentSettings, Parts, PeerSettings, assemble, start_parts
from p2pnode.errors import SporeError
from p2pnode.gossip import KIND_PEER, GossipStore
from p2pnode.identity import Identity, load_or_create, node_id
from p2pnode.peers import PeerService, validators
from p2pnode.records import decode_peer
from p2pnode.storage import DB_FILE, Storage
from p2pnode.swarm import SwarmSettings
from tests.conftest import free_udp_port
from tests.harness import DIM, FakeEncoder

DNA = dna_mod.found(Identity.from_seed(b"assemble: founder"), swarm="assemble",
                    encoder_name="e", encoder_sha256="00" * 32, dim=DIM, created_ms=1)


async def _nothing(_: list[Any]) -> None:
    return None


def _run(test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), 30)
    asyncio.run(main())


def test_a_peer_service_built_before_its_address_serves_nothing_until_started() -> None:
    """Built as the daemon builds it, before the DHT is bound: no round, no
    card, no address to hand out; started on the address given then."""
    port = free_udp_port()

    async def scenario() -> None:
        store = GossipStore(validators(DNA.swarm_id, lambda: DNA))
        svc = PeerService(identity=Identity.from_seed(b"assemble: early"), swarm=DNA.swarm_id,
                          store=store, seeds=[("127.0.0.1", 9)], interval_s=60,
                          contacts=list, on_accepted=_nothing)
        assert svc.address() is None
        assert await svc.round() is False
        assert svc.counters == {"rounds_not_started": 1}  # the seed is not blamed
        seed = svc.members.find("127.0.0.1", 9)
        assert seed is not None and seed.state == "unknown" and seed.failures == 0
        assert not store.with_prefix(KIND_PEER)
        with pytest.raises(SporeError, match="no address to listen on"):
            await svc.start("127.0.0.1")
        try:
            await svc.start("127.0.0.1", listen=("127.0.0.1", port))
            assert (svc.host, svc.port, svc.members.me) == ("127.0.0.1", port,
                                                             ("127.0.0.1", port))
            assert svc.address() == ("127.0.0.1", port)
            [(_, item)] = store.with_prefix(KIND_PEER)
            assert (decode_peer(item).host, decode_peer(item).port) == ("127.0.0.1", port)
        finally:
            await svc.stop()

    _run(scenario)


def _assembled(state: Path, founder: Identity, dna: dna_mod.Dna, port: int) -> Parts:
    return assemble(identity=founder, dna=dna, chain=[dna],
                    encoder=FakeEncoder(),  # type: ignore[arg-type]
                    storage=Storage(state / DB_FILE), state_dir=state, max_text_bytes=65_536,
                    settings=SwarmSettings(host="127.0.0.1", port=port),
                    gossip_path=state / GOSSIP_DB,
                    peers=PeerSettings(seeds=(), interval_s=60.0),
                    agents=AgentSettings(path=state / AGENTS_DB, max_agents=8, seed_agents=2))


async def _stop(parts: Parts) -> None:
    """As the daemon stops them (p2pnode.daemon._serve_locked)."""
    await parts.spore.drain()
    assert parts.agents is not None and parts.peers is not None
    await parts.agents.stop()
    parts.agents.colony.close()
    await parts.peers.stop()
    await parts.swarm.stop()
    parts.spore.close()
    parts.spore.storage.close()
    parts.gossip.close()


def test_assembled_parts_are_built_first_then_started_on_the_dht_address(
        tmp_path: Path) -> None:
    """The spore holds the peer service and agents it was built with; nothing
    listens or publishes until start_parts, which puts the peer service on
    the DHT's port (a signed sync answered there), its card advertising the
    colony's guest room, the agents' routes served, invitations naming it."""
    state = tmp_path / "founder"
    state.mkdir()
    founder, _ = load_or_create(state)
    dna = dna_mod.found(founder, swarm="assemble", encoder_name=FakeEncoder.model_name,
                        encoder_sha256=FakeEncoder.model_sha256, dim=DIM,
                        created_ms=int(time.time() * 1000))
    port = free_udp_port()

    async def scenario() -> None:
        parts = _assembled(state, founder, dna, port)
        peers, agents = parts.peers, parts.agents
        assert peers is not None and agents is not None
        assert parts.spore.peers is peers and parts.spore.agents is agents
        assert agents.peers is peers and peers.join is not None and peers.ping is not None
        assert peers.address() is None and not agents.colony.agents  # nothing started
        client = PeerService(identity=founder, swarm=dna.swarm_id,
                             store=GossipStore(validators(dna.swarm_id, lambda: dna)),
                             host="127.0.0.1", port=free_udp_port(), seeds=[], interval_s=60,
                             contacts=list, on_accepted=_nothing)
        try:
            assert await start_parts(parts) == ("127.0.0.1", port)
            assert peers.address() == ("127.0.0.1", port)
            assert len(agents.colony.agents) == 2 and {"score", "adopt"} <= set(peers.routes)
            card = decode_peer(parts.gossip.get(KIND_PEER + node_id(founder.public_key)) or b"")
            assert (card.host, card.port) == ("127.0.0.1", port)
            assert card.capacity == agents.colony.guest_room > 0
            invitation = await parts.spore.invite(may_invite=False, ttl_s=600)
            code = joining.decode_invitation(invitation["code"])
            assert (code.host, code.port) == ("127.0.0.1", port)
            await client.start("127.0.0.1")
            reply = await client.request("127.0.0.1", port, "sync",
                                         sync.encode_digest(sync.summarize({})), 5)
            assert reply and peers.counters.get("served_sync") == 1
        finally:
            await client.stop()
            await _stop(parts)

    _run(scenario)
