"""A member who holds the DNA and signs well-formed requests with our own code
attacks the agents' peer routes (score, feedback, adopt) — NOTES.md, "Lessons
from attacking the daemon": forged ratings, adoption floods, claimed times,
a peer's number used as a size, one bad card in the registry.

In process: AgentNets with real genomes, their routes called directly (two of
them joined by an in-process transport with the peer service's contract).
Then the same attacks over signed HTTP against a real daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest

from agents.evolution import credits
from agents.genome import DIM, Weights, make_lineage, new_agent, to_onnx
from agents.guard import Rejected, decode_score_reply
from p2pnode import dna as dna_mod
from p2pnode.agentnet import AgentNet
from p2pnode.colony import Birth, Colony, check_guest
from p2pnode.errors import VerifyError
from p2pnode.gossip import KIND_AGENT, KIND_PEER, GossipStore, agent_key
from p2pnode.identity import Identity, node_id
from p2pnode.peerauth import sign_request
from p2pnode.peers import validators
from p2pnode.records import make_agent_card, make_peer
from tests.conftest import Daemon, make_daemon, pass_header

VICTIM = Identity.from_seed(b"hostile: victim")
ASKER = Identity.from_seed(b"hostile: honest asker")
ATTACKER = Identity.from_seed(b"hostile: attacker")
DNA = dna_mod.found(VICTIM, swarm="hostile", encoder_name="e", encoder_sha256="00" * 32,
                    dim=DIM, created_ms=1)
RNG = np.random.default_rng(11)


def unit(n: int = 1) -> np.ndarray:
    x = RNG.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def f16(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype=np.float16).tobytes()


def pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class Clock:
    """Monotonic seconds that move only when told: rate limits and expiry, exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_net(identity: Identity, store: GossipStore | None = None, *, max_agents: int = 16,
             seed_agents: int = 4, clock: Clock | None = None) -> AgentNet:
    colony = Colony(identity=identity, path=None, max_agents=max_agents,
                    seed_agents=seed_agents, rng=np.random.default_rng(1))
    return AgentNet(colony=colony, identity=identity, swarm=DNA.swarm_id,
                    store=store or GossipStore(validators(DNA.swarm_id, lambda: DNA)),
                    compute=inline, dna=lambda: DNA, clock=clock or Clock())


def run(scenario: Callable[[AgentNet], Awaitable[None]], **kw: Any) -> AgentNet:
    """`scenario` against a started victim (in process, no peers)."""
    net = make_net(VICTIM, **kw)

    async def main() -> None:
        await net.start(None)
        try:
            await scenario(net)
        finally:
            await net.stop()

    asyncio.run(main())
    return net


def standing(net: AgentNet) -> dict[bytes, tuple[float, int]]:
    return {i: (a.fitness, a.interactions) for i, a in net.colony.agents.items()}


async def refused(route: Callable[[bytes, bytes], Awaitable[bytes]], sender: bytes,
                  body: bytes) -> str:
    with pytest.raises(VerifyError) as info:
        await route(sender, body)
    return str(getattr(info.value, "reason", ""))


GENOME = to_onnx(Weights.initial(np.random.default_rng(100)))


def child_of(who: Identity, created_ms: int, i: int = 0) -> tuple[bytes, bytes, bytes]:
    """A well-formed child of `who`'s, as placement sends it: (lineage, genome,
    specialty). The i-th has its own id (one genome: building one costs time)."""
    lineage = make_lineage(who, genome=GENOME, created_ms=created_ms,
                           parent=make_lineage(who, genome=GENOME, created_ms=i))
    return lineage.wire, GENOME, f16(unit()[0])


def adoption(who: Identity, created_ms: int, i: int = 0) -> bytes:
    return pack(list(child_of(who, created_ms, i)))


# --- feedback ---------------------------------------------------------------------------


def test_forged_feedback_moves_no_fitness_and_is_counted() -> None:
    async def scenario(net: AgentNet) -> None:
        before = standing(net)
        feedback = net.routes["feedback"]
        for _ in range(25):  # well-formed, signed, and about no scoring of ours
            body = pack([os.urandom(16), 0, True, f16(unit()[0])])
            assert await refused(feedback, ATTACKER.public_key, body) == "unscored"
        # The shape that used to work: our agent ids with the credit the sender claims.
        old = pack([f16(unit()[0]), f16(unit()[0]), True, [[a, 1.0] for a in net.colony.agents]])
        assert await refused(feedback, ATTACKER.public_key, old) == "malformed"
        assert standing(net) == before

    net = run(scenario)
    assert net.counters["feedback_refused_unscored"] == 25
    assert net.counters["feedback_refused_malformed"] == 1
    assert "feedback_received" not in net.counters and "divided" not in net.colony.counters


def test_a_rating_counts_once_from_the_peer_scored_for_on_the_candidate_scored() -> None:
    async def scenario(net: AgentNet) -> None:
        q, cands = unit()[0], unit(5)
        rid = os.urandom(16)
        reply = await net.routes["score"](ASKER.public_key, pack([rid, f16(q), f16(cands)]))
        ids, _, scores = decode_score_reply(reply, 5)
        assert set(ids) == set(net.colony.agents)
        again = pack([rid, f16(q), f16(cands)])
        assert await refused(net.routes["score"], ASKER.public_key, again) == "repeated_request"
        feedback = net.routes["feedback"]
        rating = pack([rid, 1, True, f16(cands[1])])
        assert await refused(feedback, ATTACKER.public_key, rating) == "unscored"
        wrong = pack([rid, 1, True, f16(cands[2])])
        assert await refused(feedback, ASKER.public_key, wrong) == "wrong_candidate"
        before = standing(net)
        assert await feedback(ASKER.public_key, rating) == b""
        # Credited by our own scores, as the asker would have: z-score of row 1.
        expected = dict(zip(ids, credits(scores, 1), strict=True))
        for i, (fitness, interactions) in standing(net).items():
            assert fitness - before[i][0] == pytest.approx(expected[i], abs=1e-3)
            assert interactions == before[i][1] + 1
        assert await refused(feedback, ASKER.public_key, rating) == "already_rated"

    net = run(scenario)
    assert net.counters["feedback_received"] == 1
    assert net.counters["feedback_refused_already_rated"] == 1


BIG = (1 << 64) - 1


@pytest.mark.parametrize("body", [
    pack([BIG, 0, True, b"\0" * 768]),  # an integer where the 16-byte id goes
    pack([b"r" * 16, BIG, True, b"\0" * 768]),  # a row far past the candidates
    pack([b"r" * 16, 0, 1, b"\0" * 768]),  # 1 is not True
    pack([b"r" * 16, 0, True, BIG]),  # an integer where the embedding goes
    pack([b"\0" * 768, b"\0" * 768, True, [[BIG, 0.5]] * 256]),  # the old bytes(n) attack
    pack([b"r" * 16, 0, True, np.full(DIM, np.inf, np.float16).tobytes()]),
    pack({"a": 1}), b"\xc1", b"",
], ids=["int-id", "int-row", "int-up", "int-memory", "bytes-n", "inf", "map", "bad", "empty"])
def test_a_peer_number_is_never_a_size(body: bytes) -> None:
    async def scenario(net: AgentNet) -> None:
        start = time.perf_counter()
        reason = await refused(net.routes["feedback"], ATTACKER.public_key, body)
        assert time.perf_counter() - start < 1.0
        assert reason in ("malformed", "not_finite")

    run(scenario)


def test_score_requests_are_bounded_and_rate_limited() -> None:
    async def scenario(net: AgentNet) -> None:
        score, q = net.routes["score"], f16(unit()[0])
        shapes = [pack([os.urandom(16), q, f16(unit(65))]),  # over 64 candidates
                  pack([os.urandom(16), q, b""]),  # none
                  pack([os.urandom(16), q, f16(unit(2)), 2]),  # a field too many
                  pack([os.urandom(16), np.full(DIM, np.nan, np.float16).tobytes(), f16(unit(2))])]
        reasons = [await refused(score, ATTACKER.public_key, b) for b in shapes]
        assert reasons == ["malformed", "malformed", "malformed", "not_finite"]
        clock = net.clock
        assert isinstance(clock, Clock)

        async def flood(n: int) -> Counter[str]:
            got: Counter[str] = Counter()
            for _ in range(n):
                try:
                    await score(ATTACKER.public_key, pack([os.urandom(16), q, f16(unit(2))]))
                    got["scored"] += 1
                except VerifyError as exc:
                    got[str(getattr(exc, "reason", ""))] += 1
            return got

        # A burst of 40, of which the 4 refused shapes took theirs too.
        assert await flood(60) == {"scored": 36, "rate_limited": 24}
        await score(ASKER.public_key, pack([os.urandom(16), q, f16(unit(2))]))  # others may
        for _ in range(5):  # then 20 a second
            clock.now += 1.0
            assert await flood(25) == {"scored": 20, "rate_limited": 5}
        assert len(net.scorings) == 128 + 1  # remembered per peer: bounded
        clock.now += 1801.0  # and they expire
        assert await refused(net.routes["feedback"], ASKER.public_key,
                             pack([os.urandom(16), 0, True, q])) == "unscored"
        assert len(net.scorings) == 0

    net = run(scenario)
    assert net.counters["score_refused_rate_limited"] == 24 + 5 * 5


# --- adoption ---------------------------------------------------------------------------


def test_an_adoption_flood_evicts_none_of_ours() -> None:
    got: Counter[str] = Counter()

    async def scenario(net: AgentNet) -> None:
        ours = set(net.colony.agents)
        for i in range(20):
            try:
                await net.routes["adopt"](ATTACKER.public_key, adoption(ATTACKER, now_ms(), i))
                got["adopted"] += 1
            except VerifyError as exc:
                got[str(getattr(exc, "reason", ""))] += 1
        assert ours <= set(net.colony.agents)
        assert len(net.colony.agents) == len(ours) + 4

    net = run(scenario)
    assert got == {"adopted": 4, "rate_limited": 16}
    assert net.counters["adopt_refused_rate_limited"] == 16


def test_a_full_spore_adopts_no_guest_over_its_own_agents() -> None:
    async def scenario(net: AgentNet) -> None:
        ours = set(net.colony.agents)
        for a in net.colony.agents.values():
            a.fitness = -3.0  # rated down here: still never evicted by a guest
        body = adoption(ATTACKER, now_ms())
        assert await refused(net.routes["adopt"], ATTACKER.public_key, body) == "no_room"
        assert set(net.colony.agents) == ours

    net = run(scenario, max_agents=4)
    assert net.counters["adopt_refused_no_room"] == 1


@pytest.mark.parametrize(("created_ms", "reason"), [
    (4 * 10**18, "from_the_future"), (now_ms() + 3_600_000, "from_the_future"),
    (1 << 63, "lineage"), (BIG, "lineage"),
], ids=["4e18", "an_hour_ahead", "2**63", "2**64-1"])  # the same ids in every worker
def test_a_guest_born_in_the_future_is_refused(created_ms: int, reason: str) -> None:
    async def scenario(net: AgentNet) -> None:
        ours = standing(net)
        body = adoption(ATTACKER, created_ms)
        assert await refused(net.routes["adopt"], ATTACKER.public_key, body) == reason
        assert standing(net) == ours

    net = run(scenario)
    assert net.counters[f"adopt_refused_{reason}"] == 1


def test_adoption_refuses_what_is_not_the_senders_or_not_sane() -> None:
    senders = [Identity.from_seed(b"hostile: sender %d" % i) for i in range(4)]
    lineages = [child_of(who, now_ms())[:2] for who in senders]
    nan = np.full(DIM, np.nan, np.float16).tobytes()
    big = Weights(*(np.full_like(a, 1e6) for a in Weights.initial(RNG).arrays()))
    big_agent = new_agent(senders[3], big, created_ms=now_ms())
    cases = [
        (ASKER, pack([*lineages[0], b""]), "not_creator"),  # another's child
        (senders[0], pack([*lineages[0], nan]), "bad_specialty"),
        (senders[1], pack([*lineages[1], b"x" * 7]), "bad_specialty"),
        (senders[2], pack([lineages[2][0], BIG, b""]), "malformed"),
        (senders[3], pack([big_agent.lineage.wire, to_onnx(big), b""]), "weights"),
    ]

    async def scenario(net: AgentNet) -> None:
        for who, body, reason in cases:
            assert await refused(net.routes["adopt"], who.public_key, body) == reason
        assert not any(net.colony.is_guest(a) for a in net.colony.agents.values())

    net = run(scenario)
    assert net.counters["genome_rejected_weights"] == 1


def guest(who: Identity, i: int = 0, created_ms: int | None = None) -> Birth:
    lineage, genome, spec = child_of(who, now_ms() if created_ms is None else created_ms, i)
    return check_guest(lineage, genome, spec)


def test_guests_die_first_by_what_this_spore_measured() -> None:
    colony = Colony(identity=VICTIM, path=None, max_agents=8, seed_agents=5,
                    rng=np.random.default_rng(2))  # 2 guests a peer, 4 in all
    colony.start(now_ms(), 0.01)
    ours = set(colony.agents)
    for a in colony.agents.values():
        a.fitness = -1.0
    peers = [Identity.from_seed(b"peer %d" % i) for i in range(5)]
    claims = guest(peers[0], 0)
    claims.agent.fitness, claims.agent.fitness_ms = 1e5, 1 << 62  # claims count for nothing
    assert colony.adopt(claims, now_ms(), "p0") == (True, [])
    assert claims.agent.fitness == 0.0 and claims.agent.fitness_ms <= now_ms()
    assert colony.adopt(guest(peers[0], 1), now_ms(), "p0")[0]
    with pytest.raises(Rejected) as cap:
        colony.adopt(guest(peers[0], 2), now_ms(), "p0")
    assert cap.value.reason == "guest_cap"
    assert colony.adopt(guest(peers[1], 3, created_ms=0), now_ms(), "p1")[0]
    with pytest.raises(Rejected) as full:  # pool full: only a worse guest could make room
        colony.adopt(guest(peers[2], 4), now_ms(), "p2")
    assert full.value.reason == "no_room" and ours <= set(colony.agents)
    rated_down = next(a for a in colony.agents.values() if a.lineage.creator == peers[1].public_key)
    rated_down.fitness = -0.5  # measured here
    kept, dead = colony.adopt(guest(peers[2], 5), now_ms(), "p2")
    assert kept and [a.agent_id for a in dead] == [rated_down.agent_id]
    assert ours <= set(colony.agents) and len(colony.agents) == 8
    assert colony.guest_room == 0


# --- ranking among spores, in process -----------------------------------------------------


class Transport:
    """The peer service's contract as AgentNet uses it, in process: live members,
    a request to a member's route (signed by construction: the caller's key)."""

    def __init__(self, me: Identity, spores: dict[tuple[str, int], AgentNet]) -> None:
        self.me, self.spores = me, spores
        self.routes: dict[str, Any] = {}
        self.capacity: Callable[[], int] = lambda: 0
        self.members = SimpleNamespace(
            live=lambda: [SimpleNamespace(host=h, port=p) for h, p in spores])

    async def request(self, host: str, port: int, route: str, body: bytes,
                      timeout_s: float) -> bytes:
        serve = self.spores[(host, port)].routes[route]
        return await asyncio.wait_for(serve(self.me.public_key, body), timeout_s)

    def capacity_changed(self) -> None:
        pass


class StoreWithBadCards(GossipStore):
    """A gossip store that also holds two unreadable agent cards (as one written
    by an older version, or let through by a check that missed something)."""

    def with_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        bad = make_agent_card(ATTACKER, agent_id=b"a" * 32, swarm=DNA.swarm_id, generation=0,
                              parent=b"", fitness=0.0, interactions=0, specialty=b"",
                              alive=True, seq=1)  # a 0-byte specialty
        extra = [(agent_key(ATTACKER.public_key, b"a" * 32), bad.wire),
                 (agent_key(ATTACKER.public_key, b"b" * 32), b"\x92\xc4\x00\xc4\x00")]
        return super().with_prefix(prefix) + (extra if prefix == KIND_AGENT else [])


async def until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def test_a_bad_card_never_stops_ranking() -> None:
    store = StoreWithBadCards(validators(DNA.swarm_id, lambda: DNA))
    scorer, asker = make_net(VICTIM, store), make_net(ASKER, store)
    addr = ("10.0.0.2", 7000)
    card = make_peer(VICTIM, swarm=DNA.swarm_id, host=addr[0], port=addr[1], capacity=0, seq=1)
    assert store.offer({KIND_PEER + node_id(VICTIM.public_key): card.wire})
    q, cands = unit()[0], unit(4)

    async def main() -> None:
        await scorer.start(None)
        await asker.start(Transport(ASKER, {addr: scorer}))  # type: ignore[arg-type]
        for a in scorer.colony.agents.values():
            a.specialty = q.copy()  # the scorer's agents are specialists of q
        scorer.publish_cards(list(scorer.colony.agents.values()))
        verdict = await asker.rank(q, cands)
        assert verdict.remote_hosts == 1 and len(verdict.rows) == 8
        assert np.all(np.isfinite(verdict.consensus))
        assert asker.counters["cards_skipped"] == 2
        assert len(asker.registry()) == len(store.with_prefix(KIND_AGENT)) - 2
        asker.remember("an answer", q, cands[0], verdict, 0)
        assert await asker.feedback("an answer", True) == 8
        await until(lambda: scorer.counters.get("feedback_received", 0) == 1)
        assert all(a.interactions == 1 for a in scorer.colony.agents.values())
        await asker.rank(q, cands)  # counted once, not at every ranking
        assert asker.counters["cards_skipped"] == 2
        await asker.stop()
        await scorer.stop()

    asyncio.run(main())


# --- over signed HTTP, against a real daemon ----------------------------------------------


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = make_daemon(tmp_path_factory.mktemp("victim"))
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def post(d: Daemon, who: Identity, route: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """A signed peer request; 503 (serving others) is tried again."""
    swarm = bytes.fromhex(d.json("GET", "/v1/status")["swarm_id"])
    path = f"/peer/v1/{route}"
    for _ in range(100):
        headers = sign_request(who, swarm, "POST", path, body, now_ms(),
                               os.urandom(16)) | pass_header(d, who)  # a member attacks
        req = urllib.request.Request(f"http://{d.dht}{path}", data=body, method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, {}
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return exc.code, json.loads(exc.read() or b"{}")
        time.sleep(0.05)  # a retry's pause, not a wait for a condition
    raise AssertionError("the daemon stayed busy")


def test_a_real_daemon_refuses_the_attacks_and_keeps_its_agents(victim: Daemon) -> None:
    def here() -> dict[str, tuple[float, int]]:
        return {a["id"]: (a["fitness"], a["interactions"])
                for a in victim.json("GET", "/v1/agents")["here"]}

    ours = here()
    assert len(ours) == 4
    for _ in range(25):
        body = pack([os.urandom(16), 0, True, f16(unit()[0])])
        assert post(victim, ATTACKER, "feedback", body)[1]["reason"] == "unscored"
    start = time.monotonic()
    code, why = post(victim, ATTACKER, "feedback", pack([b"\0" * 768, b"\0" * 768, True,
                                                         [[BIG, 0.5]] * 256]))
    assert time.monotonic() - start < 1.0 and code == 400 and why["reason"] == "malformed"
    got: Counter[str] = Counter()
    for i in range(20):
        code, why = post(victim, ATTACKER, "adopt", adoption(ATTACKER, now_ms(), i))
        got["adopted" if code == 200 else why["reason"]] += 1
    # A burst of 4 and one more every 10 s (a slow machine may see one), 4 guests a peer.
    assert got["adopted"] == 4 and got["rate_limited"] >= 14
    assert got["adopted"] + got["rate_limited"] + got["guest_cap"] == 20
    late = Identity.from_seed(b"hostile: time traveller")
    code, why = post(victim, late, "adopt", adoption(late, 4 * 10**18))
    assert why["reason"] == "from_the_future"
    after = here()
    assert {i: after[i] for i in ours} == ours  # none evicted, no fitness moved
    counters = victim.json("GET", "/v1/status")["agents"]["counters"]
    assert counters["feedback_refused_unscored"] == 25
    assert counters["feedback_refused_malformed"] == 1
    assert counters["adopt_refused_rate_limited"] == got["rate_limited"]
    assert counters["adopt_refused_from_the_future"] == 1
    assert victim.json("GET", "/v1/agents")["counters"] == counters
