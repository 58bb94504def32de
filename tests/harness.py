"""Spores in one process: the ask and rate paths tested without daemons.

Each spore is the real thing as the daemon wires it (p2pnode.daemon.assemble:
`Members`, `Swarm`, `GossipStore`, the agents if asked for, then `Spore`, in
dependency order; started by p2pnode.daemon.start_parts), with real
SQLite files in its own state directory. What is replaced is what a test
must control: the encoder (`FakeEncoder`, deterministic, the same contract
as agents.encoder's where tests/test_encoder.py checks it:
tests/test_fake_encoder.py runs those checks on it), the UDP network (the
DHT runs over `dht.fake.FakeNetwork`) and the gossip transport (a round is
`p2pnode.gossip.exchange` calling the other store's `answer_sync` and
`answer_items` directly, then each side's `Spore.on_gossip`, as PeerService
does over HTTP: assembled without one). Agents on request: each spore's own
colony, without the peer transport that lets others' agents score
(tests/test_agents_swarm.py).

    async with Harness(tmp_path) as h:
        a, b = await h.spores(2)
        await a.spore.teach([TeachItem("…")])
        await h.settle()                  # publishing done, gossip converged
        out = await b.spore.ask("…")
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from dht.fake import FakeNetwork
from p2pnode import dna as dna_mod
from p2pnode import membership as ms
from p2pnode.colony import AGENTS_DB
from p2pnode.daemon import GOSSIP_DB, AgentSettings, Parts, assemble, start_parts
from p2pnode.gossip import exchange
from p2pnode.identity import Identity, load_or_create
from p2pnode.members import PASS_FILE
from p2pnode.node import Spore
from p2pnode.storage import DB_FILE, Storage
from p2pnode.swarm import SwarmSettings

__all__ = ["FakeEncoder", "Harness", "Node", "alone"]

DIM = 384
MAX_TOKENS = 256
# Words that carry no topic: without them two paraphrases share their
# content words, as the real encoder's neighbours do.
_STOP = frozenset({"a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for",
                   "from", "how", "i", "in", "is", "it", "my", "of", "on", "or", "the", "to",
                   "what", "when", "where", "which", "who", "why", "with", "you", "your"})
_WORD = re.compile(r"[^\W_]+")


@functools.lru_cache(maxsize=65_536)
def _direction(feature: str, dim: int) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng(seed).standard_normal(dim)


class FakeEncoder:
    """A bag of word stems (their first 5 letters, stop words left out), each
    a fixed random direction: unit float32 rows, a function of the text alone
    (not of its batch), paraphrases sharing their content words close,
    unrelated texts near orthogonal, texts cut at MAX_TOKENS words."""

    model_name = "fake-bag-of-stems"
    model_sha256 = hashlib.sha256(b"sporemind fake encoder v1").hexdigest()

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.calls = 0

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            out[i] = self._one(text)
        return out

    def _one(self, text: str) -> npt.NDArray[np.float32]:
        words = _WORD.findall(text.casefold())[:MAX_TOKENS]
        stems = [w[:5] for w in words if w not in _STOP] or ["\0empty"]
        v = np.zeros(self.dim)
        for stem, n in zip(*np.unique(stems, return_counts=True), strict=True):
            v += (1.0 + np.log(n)) * _direction(str(stem), self.dim)
        unit: npt.NDArray[np.float32] = (v / np.linalg.norm(v)).astype(np.float32)
        return unit


@dataclass
class Node:
    """One in-process spore: its parts, its state directory, its storage."""

    parts: Parts
    storage: Storage
    state_dir: Path
    host: str

    @property
    def spore(self) -> Spore:
        return self.parts.spore

    @property
    def key(self) -> bytes:
        return self.parts.spore.identity.public_key


class Harness:
    """Spores of one invite swarm, founded by the first, the others invited
    by it and joined to the DHT through it."""

    def __init__(self, tmp: Path, *, seed: int = 7) -> None:
        self.tmp = tmp
        self.encoder = FakeEncoder()
        self.net = FakeNetwork(rng=random.Random(seed))
        self.founder: Identity | None = None  # the first spore's key, once started
        self.dna: dna_mod.Dna | None = None
        self.nodes: list[Node] = []
        self._numbers = itertools.count(1)

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for node in list(self.nodes):
            await self.stop(node)

    async def spores(self, n: int) -> list[Node]:
        nodes = [await self.start() for _ in range(n)]
        await self.formed()
        return nodes

    async def formed(self) -> None:
        """Every spore's DHT table holds every other, as the daemon's join
        rounds make it in time (they admit the gossip peers' addresses). A
        value published before the tables filled could sit only on spores a
        reader does not count among a key's replicas, and a small swarm's
        ranking missed it (a test that failed 1 run in 15 under load). Gossip
        first: a spore's DHT admits only the members whose pass it holds."""
        await self.converge()
        for node in self.nodes:
            dht = node.parts.swarm.dht
            admitted = await dht.admit([n.parts.swarm.dht.address for n in self.nodes
                                        if n is not node])
            assert admitted == len(self.nodes) - 1, f"{node.host}: {admitted} admitted"
            assert len(dht.contacts()) == len(self.nodes) - 1, dht.contacts()

    async def start(self, state_dir: Path | None = None, *, gossip_file: bool = False,
                    agents: bool = False) -> Node:
        """A new spore (the founder's key for the first one), or one restarted
        from `state_dir`; joined to the swarm through the first spore. Its
        gossip store is kept in memory, or with `gossip_file` in its state
        directory as the daemon keeps it. With `agents`, its own colony (no
        peer transport: the agents of other spores take no part)."""
        number = next(self._numbers)
        state = state_dir or self.tmp / f"spore{number}"
        state.mkdir(parents=True, exist_ok=True)
        identity, fresh = load_or_create(state)
        if self.dna is None:
            self.founder, self.dna = identity, dna_mod.found(
                identity, swarm="harness", encoder_name=FakeEncoder.model_name,
                encoder_sha256=FakeEncoder.model_sha256, dim=DIM,
                created_ms=int(time.time() * 1000))
        elif fresh:
            self._invite(identity, state)
        host = f"10.0.0.{number}"
        storage = Storage(state / DB_FILE)
        assert self.dna is not None
        parts = assemble(identity=identity, dna=self.dna, chain=[self.dna],
                         encoder=self.encoder,  # type: ignore[arg-type]
                         storage=storage, state_dir=state, max_text_bytes=65_536,
                         settings=SwarmSettings(host=host, port=7151),
                         bind=self.net.bind,
                         gossip_path=state / GOSSIP_DB if gossip_file else None,
                         agents=AgentSettings(path=state / AGENTS_DB, max_agents=8,
                                              seed_agents=4) if agents else None)
        await start_parts(parts)
        node = Node(parts, storage, state, host)
        if self.nodes:
            await self.join(node, self.nodes[0])
        self.nodes.append(node)
        return node

    async def join(self, node: Node, through: Node) -> None:
        """Join as a daemon does: gossip first (the founder learns our pass,
        without which its DHT refuses our handshake), then the DHT, through
        `through` as a live gossip peer (Swarm.join_round)."""
        await self.converge([node, through])
        await node.parts.swarm.join_round([through.parts.swarm.dht.address])
        assert node.parts.swarm.dht.contacts(), "the DHT handshake was refused"

    def _invite(self, identity: Identity, state: Path) -> None:
        assert self.founder is not None and self.dna is not None
        cert = ms.issue(self.founder, swarm=self.dna.swarm_id, member=identity.public_key,
                        may_invite=False, issued_ms=int(time.time() * 1000))
        (state / PASS_FILE).write_bytes(ms.invited_pass(None, cert, identity).wire)

    async def stop(self, node: Node) -> None:
        """Stop a spore as the daemon does (its files stay for a restart)."""
        await node.spore.drain()
        if node.parts.agents is not None:
            await node.parts.agents.stop()
            node.parts.agents.colony.close()
        await node.parts.swarm.stop()
        node.spore.close()
        node.storage.close()
        node.parts.gossip.close()
        self.nodes.remove(node)

    # --- gossip ------------------------------------------------------------------------

    async def gossip_round(self, a: Node, b: Node) -> int:
        """One push-pull round, `a` the initiator; returns the items either took."""
        taken: list[int] = []

        async def call(route: str, body: bytes) -> bytes:
            if route == "sync":
                return b.parts.gossip.answer_sync(body)
            reply, accepted = b.parts.gossip.answer_delta(body)
            taken.append(len(accepted))
            if accepted:
                await b.spore.on_gossip(accepted)
            return reply

        stats = await exchange(a.parts.gossip, call)
        if stats.accepted:
            await a.spore.on_gossip(stats.accepted)
        return len(stats.accepted) + sum(taken)

    async def converge(self, nodes: Sequence[Node] | None = None, max_rounds: int = 20) -> None:
        """Gossip between every pair until a whole pass moves nothing, then
        weigh every voice again (what each daemon's keep_trust does)."""
        nodes = list(nodes or self.nodes)
        for _ in range(max_rounds):
            moved = 0
            for a, b in itertools.permutations(nodes, 2):
                moved += await self.gossip_round(a, b)
            if not moved:
                for node in nodes:
                    await node.spore.refresh_trust()
                return
        raise AssertionError(f"gossip did not converge in {max_rounds} rounds")

    async def settle(self) -> None:
        """Background publishing done, then gossip converged."""
        await asyncio.gather(*(n.spore.drain() for n in self.nodes))
        await self.converge()


def _alone_state(state: Path) -> tuple[Identity, dna_mod.Dna]:
    """The key and DNA of a spore on its own, made on first use."""
    state.mkdir(parents=True, exist_ok=True)
    identity, _ = load_or_create(state)
    dna = dna_mod.load(state)
    if dna is None:
        dna = dna_mod.found(identity, swarm="alone", encoder_name=FakeEncoder.model_name,
                            encoder_sha256=FakeEncoder.model_sha256, dim=DIM,
                            created_ms=int(time.time() * 1000))
        dna_mod.save(state, dna)
    return identity, dna


@contextlib.asynccontextmanager
async def alone(state: Path, encoder: FakeEncoder | None = None) -> AsyncIterator[Spore]:
    """A spore on its own (no swarm, no gossip: DESIGN.md 8, "works alone"),
    from `state` (made on first use; its DNA kept there)."""
    identity, dna = _alone_state(state)
    storage = Storage(state / DB_FILE)
    spore = Spore(identity=identity, dna=dna, storage=storage,
                  encoder=encoder or FakeEncoder(),  # type: ignore[arg-type]
                  max_text_bytes=65_536, state_dir=state)
    try:
        await spore.load()
        yield spore
    finally:
        await spore.drain()
        spore.close()
        storage.close()
