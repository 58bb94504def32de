"""Gossip among in-process nodes: the real stores and rounds, a fake network.

Every node is a real `GossipStore` with the real validators of signed items;
a round is the real `exchange`, whose `call` reaches the other store's
`answer_sync` / `answer_delta` directly and counts the bytes of both ways.
Rounds are synchronous: in each, every node, in a random order, runs one
push-pull exchange with one uniformly random other node (a node that learnt
the item earlier in the same round already passes it on, as in the daemon,
whose rounds are not aligned). Randomness comes in as an argument.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from dht import compact
from p2pnode import dna as dna_mod
from p2pnode.gossip import KIND_DNA, KIND_PEER, Call, GossipStore, exchange, vote_key
from p2pnode.identity import Identity
from p2pnode.peers import validators
from p2pnode.records import make_peer, make_vote

# HTTP headers of one signed peer request and of its signed reply, as measured
# with aiohttp 3.14 on loopback (Spore-* headers, Host, User-Agent, Date…);
# TCP/IP framing is not counted.
REQUEST_HEADERS, REPLY_HEADERS = 600, 375
QUIET_ROUNDS = 2  # rounds measured after convergence, when nothing changes
MAX_ROUNDS = 200

FOUNDER = Identity.from_seed(b"gossip bench founder")
VOTER = Identity.from_seed(b"gossip bench voter")
REGION = bytes(32)


def bench_dna() -> dna_mod.Dna:
    return dna_mod.found(FOUNDER, swarm="gossip-bench", encoder_name="e",
                         encoder_sha256="00" * 32, dim=4, created_ms=1, seed=bytes(16))


QVEC = compact.pack(np.ones(4, np.int8), 0.25)  # a question vector at the DNA's dim
VOTERS = [Identity.from_seed(b"gossip bench voter %d" % i) for i in range(16)]


def vote_item(memory_id: bytes, voter: Identity = VOTER) -> tuple[bytes, bytes]:
    vote = make_vote(voter, memory_id=memory_id, region=REGION, qvec=QVEC, up=1, down=0, seq=1)
    return vote_key(memory_id, voter.public_key, REGION), vote.wire


@dataclass
class Meter:
    bytes: int = 0
    exchanges: int = 0


def direct(responder: GossipStore, meter: Meter) -> Call:
    """The fake network: a call is the responder's method, bytes counted."""
    async def call(route: str, body: bytes) -> bytes:
        reply = (responder.answer_sync(body) if route == "sync"
                 else responder.answer_delta(body)[0])
        meter.bytes += len(body) + REQUEST_HEADERS + len(reply) + REPLY_HEADERS
        return reply
    return call


def converged_swarm(n: int, extra_memories: int = 0) -> list[GossipStore]:
    """`n` stores that all hold the DNA, every node's peer card and
    `extra_memories` votes; the items are validated once, then copied."""
    dna = bench_dna()
    template = GossipStore(validators(dna.swarm_id, lambda: dna))
    template.offer({KIND_DNA: dna_mod.chain_wire([dna])})
    for i in range(n):
        card = make_peer(Identity.from_seed(b"node %d" % i), swarm=dna.swarm_id,
                         host="127.0.0.1", port=10_000 + i, capacity=0, seq=1)
        template.offer({KIND_PEER + card.node_id: card.wire})
    # 4,096 votes a voter at most (p2pnode.gossip.Caps)
    template.offer(dict(vote_item(b"m" + i.to_bytes(31, "big"), VOTERS[i % len(VOTERS)])
                        for i in range(extra_memories)))
    stores = []
    for _ in range(n):
        store = GossipStore(validators(dna.swarm_id, lambda: dna))
        store.items, store.hashes = dict(template.items), dict(template.hashes)
        store.reindex()
        stores.append(store)
    return stores


async def one_round(stores: list[GossipStore], rng: random.Random, meter: Meter) -> None:
    n = len(stores)
    for i in rng.sample(range(n), n):
        j = rng.randrange(n - 1)
        j += j >= i
        await exchange(stores[i], direct(stores[j], meter))
        meter.exchanges += 1


@dataclass
class Spread:
    """One item spreading from one node, round by round."""

    fractions: list[float] = field(default_factory=list)  # after round 0, 1, 2…
    spreading_bytes: list[int] = field(default_factory=list)  # all nodes, per round
    quiet_bytes: list[int] = field(default_factory=list)

    def rounds_to(self, share: float) -> int:
        return next(r for r, f in enumerate(self.fractions) if f >= share - 1e-12)


async def spread_one(stores: list[GossipStore], rng: random.Random) -> Spread:
    """Inject a new signed vote at a random node and gossip until all hold it."""
    key, item = vote_item(rng.randbytes(32))
    origin = stores[rng.randrange(len(stores))]
    if not origin.offer({key: item}):
        raise RuntimeError("the injected vote was refused")
    out = Spread(fractions=[_share(stores, key)])
    while out.fractions[-1] < 1.0:
        if len(out.fractions) > MAX_ROUNDS:
            raise RuntimeError(f"no convergence in {MAX_ROUNDS} rounds: {out.fractions}")
        meter = Meter()
        await one_round(stores, rng, meter)
        out.fractions.append(_share(stores, key))
        out.spreading_bytes.append(meter.bytes)
    for _ in range(QUIET_ROUNDS):
        meter = Meter()
        await one_round(stores, rng, meter)
        out.quiet_bytes.append(meter.bytes)
    return out


def _share(stores: Iterable[GossipStore], key: bytes) -> float:
    held = [key in s.items for s in stores]
    return sum(held) / len(held)


# --- the epidemic model ---------------------------------------------------------------


def model_share(n: int, rounds: float) -> float:
    """converged(x) = 1 / (1 + (N+1) e^(-1.5x)): the epidemic model, fanout 3."""
    return 1 / (1 + (n + 1) * math.exp(-1.5 * rounds))


def model_rounds(n: int, share: float) -> float:
    """The x at which the model reaches `share` (its inverse)."""
    return math.log((n + 1) * share / (1 - share)) / 1.5


def model_rounds_all(n: int) -> float:
    """The model's "100%": the x at which it holds N - 0.5 of N nodes."""
    return model_rounds(n, (n - 0.5) / n)


def goal_rounds(n: int) -> int:
    """The issue's goal: 100% within ceil(log2 N) + 3 rounds."""
    return math.ceil(math.log2(n)) + 3
