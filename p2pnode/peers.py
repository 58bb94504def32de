"""The peer side of a spore: signed HTTP between spores, and the gossip loop.

Peers talk HTTP on TCP at the same host and port as their DHT's UDP socket
(open both: TCP and UDP 7151), so a DHT contact is also a gossip address.
Every request and every answer is signed (p2pnode.peerauth); a request of
another swarm, a replay, a forgery or an oversized body is refused with 403
or 413 before anything is read from or written to our state, logged and
counted, and the reason shows in `spore peers`. Headers are checked before a
body is read, a body still arriving is read under a deadline with few places
per source (ServeLimits), and only a request that verified takes a place to
be served: slow or unsigned senders never starve signed ones (503 means busy).
What one source address may make us do, whatever keys it signs with, is
budgeted (Intake): requests a second (fewer for the costly agent routes) and
gossip items a second (by key too), checked before the work they pay for;
past a budget, 429 `rate_limited`, counted.

Every `interval_s` (with jitter) the loop picks a random live peer and runs
one push-pull round (p2pnode.gossip.exchange) under a deadline, so a slow or
dead peer never stalls it; peers that keep failing are suspected, dropped,
and probed now and then until they answer again. An address that only a peer
card names is a candidate, probed now and then, and a target once a round
with it verifies (p2pnode.gossip.Membership). News — an item new to the
store, taught here or brought by a peer — starts a round at once (at most one
per fifth of the interval), so a rating spreads in a few round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from crdt import sync, wire
from dht.guard import TokenBuckets
from p2pnode import dna as dna_mod
from p2pnode.errors import SporeError, VerifyError
from p2pnode.gossip import (
    KIND_AGENT,
    KIND_DNA,
    KIND_PASS,
    KIND_PEER,
    KIND_VOTE,
    MAX_BODY,
    Accepted,
    GossipStore,
    Member,
    Membership,
    Validator,
    agent_key,
    decode_delta_request,
    exchange,
    vote_key,
)
from p2pnode.identity import Identity, node_id
from p2pnode.peerauth import Refused, Verifier, sign_reply, sign_request, verify_reply
from p2pnode.records import (
    MAX_DIM,
    RecordError,
    decode_agent_card,
    decode_peer,
    decode_vote,
    make_peer,
)

log = logging.getLogger("spore.peers")

PATH = "/peer/v1/"
# aiohttp closes a connection whose headers never complete only at its
# keep-alive timeout (default: about an hour): 50 such slow connections held
# 50 sockets. Also the idle time before a kept-alive connection is closed.
HEADER_DEADLINE_S = 10.0
MAX_CONCURRENT = 8  # verified peer requests served at once; more get 503
MAX_ROUNDS_IN_FLIGHT = 3  # our own rounds running at once
NUDGE_GAP = 0.2  # of the interval: the least time between rounds started by news
REQUEST_HEADERS, REPLY_HEADERS = 576, 375  # bytes of HTTP headers, measured (aiohttp)
UNSPECIFIED = ("0.0.0.0", "::")  # a card that says so is reached by the address seen
REFUSAL_LOG_S = 60.0  # one log line per refused address and reason per minute

# What a refusal answers (else 403): busy ones are worth retrying, not a verdict.
REFUSAL_STATUS = {"too_large": 413, "slow_body": 408, "busy": 503, "busy_key": 503,
                  "busy_source": 503, "busy_reading": 503, "busy_compute": 503,
                  "rate_limited": 429}
SOURCES_KEPT = 4096  # sources (and keys) whose intake budgets are kept; the least recent go
# The costly routes (p2pnode.agentnet's) per source address, whatever keys
# sign: requests a second, and at once. Honest, 7 spores behind one address
# (scripts/bench/learning.py): 14 score requests in one second at most, 4.6 a
# second over ten; 11 adoptions (an agent genome checked each) in 85 s.
ROUTE_RATES = {"score": (8.0, 32.0), "feedback": (8.0, 32.0), "adopt": (0.2, 32.0),
               "join": (0.2, 4.0), "reach": (0.1, 3.0)}
MEMBER_HEADER = "Spore-Member"  # the sender's pass (hex), for a receiver that lacks it
MAX_PASS_HEX = 8192
MAX_JOIN_BODY = 4096
# (join request body, source address) → reply body; raises VerifyError with a reason
JoinRoute = Callable[[bytes, str], Awaitable[bytes]]
Standing = Callable[[bytes], "str | None"]  # public key → None if a member, else why not

# (requester's key, its source address, the port it claims) → "ok", "no_answer" or
# "other_node": what a DHT ping of that address found (p2pnode.daemon wires it)
Ping = Callable[[bytes, str, int], Awaitable[str]]
REACH_TIMEOUT_S = 1.5  # the TCP connect of a reach-back check

OnAccepted = Callable[[list[Accepted]], Awaitable[None]]
Route = Callable[[bytes, bytes], Awaitable[bytes]]  # (sender's public key, body) → reply


def validators(swarm: bytes, current_dna: Callable[[], dna_mod.Dna],
               standing: Standing = lambda key: None) -> dict[bytes, Validator]:
    """How each kind of gossiped item is checked, for the swarm `swarm`: every
    field by its record's decoder (vectors at the current DNA's dimension,
    times against the store's `now_ms`), then its key, its swarm and its
    writer's standing (only members in good standing write: p2pnode.members
    adds the passes and revocations that decide it). Every refusal is a
    VerifyError with a `reason` (a counter key). The DNA travels as its
    chain of versions, so a spore that missed some still verifies the newest."""

    def member(key: bytes, what: str) -> None:
        if (why := standing(key)) is not None:
            raise RecordError(f"{what}_{why}", f"{what} by {key.hex()[:16]}…: {why}")

    def dim() -> int | None:
        encoder = current_dna().fields.get("encoder")
        d = encoder.get("dim") if isinstance(encoder, dict) else None
        return d if type(d) is int and 0 < d <= MAX_DIM else None

    def dna_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        if key != KIND_DNA:
            raise RecordError("dna_key", "DNA under a wrong key")
        try:
            # Verified link by link from the genesis, whose hash is the swarm id.
            chain = dna_mod.decode_chain(item, swarm)
        except VerifyError as exc:
            raise RecordError("dna_chain", f"DNA chain: {exc}") from exc
        candidate = chain[-1]
        if not 0 < candidate.version < 1 << 31:  # dna_stamp must stay below 2**63
            raise RecordError("dna_version_range", "DNA version out of range")
        return dna_stamp(candidate), chain

    def peer_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        card = decode_peer(item, now_ms=now_ms)
        if key != KIND_PEER + card.node_id:
            raise RecordError("peer_key", "peer card under a wrong key")
        if card.swarm != swarm:
            raise RecordError("peer_swarm", "peer card of another swarm")
        member(card.public_key, "peer")
        return card.seq, card

    def vote_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        vote = decode_vote(item, dim=dim())
        if key != vote_key(vote.memory_id, vote.voter, vote.region):
            raise RecordError("vote_key", "vote under a wrong key")
        member(vote.voter, "vote")
        return vote.seq, vote

    def agent_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        card = decode_agent_card(item, dim=dim(), now_ms=now_ms)
        if key != agent_key(card.host, card.agent_id):
            raise RecordError("agent_key", "agent card under a wrong key")
        if card.swarm != swarm:
            raise RecordError("agent_swarm", "agent card of another swarm")
        member(card.host, "agent")
        return card.seq, card

    return {KIND_DNA: dna_item, KIND_PEER: peer_item, KIND_VOTE: vote_item,
            KIND_AGENT: agent_item}


def dna_stamp(dna: dna_mod.Dna) -> int:
    """Merge order of DNA versions: the newer, then (a same-version tie between
    two founders) the smaller hash, as dna.successor decides."""
    return (dna.version << 32) | (0xFFFFFFFF - int.from_bytes(dna.hash[:4], "big"))


@dataclass(frozen=True, kw_only=True)
class ServeLimits:
    """What unverified peers may hold of this spore. A request's headers are
    checked before its body is read, its body is read under a deadline, and
    only a request that verified takes one of the `work` places: a slow or
    unsigned sender never holds what honest ones need."""

    work: int = MAX_CONCURRENT  # verified requests served at once; more get 503
    reads: int = 64  # bodies still arriving, read at once (a whole one needs no place)
    reads_per_source: int = 4  # of those, from one IPv4 address or IPv6 /64
    read_deadline_s: float = 5.0  # a body still arriving then: 408, connection closed
    # What one source may make us do whatever keys it signs with, as token
    # buckets (a second, at once); over it: 429 rate_limited (Intake). Honest
    # peaks, 7 spores behind one address gossiping every 0.5 s while rating
    # (scripts/bench/learning.py): 39 requests and 107 pushed items in one
    # second, 22 and 40 a second over ten.
    requests: tuple[float, float] = (64.0, 256.0)  # signed requests, any route
    items: tuple[float, float] = (64.0, 512.0)  # gossip items pushed to us (by key too)
    routes: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(ROUTE_RATES))

    def __post_init__(self) -> None:
        if self.items[1] < sync.MAX_DELTA_ITEMS:
            raise ValueError(f"an items burst under {sync.MAX_DELTA_ITEMS} refuses full deltas")


class Intake:
    """What any one sender may make this spore do: requests a second by
    source (an IPv4 address or IPv6 /64: fresh keys are free, addresses are
    not), more for the costly routes (ServeLimits.routes), and gossip items
    a second by source and by key. Checked before the work it pays for (a
    request's before its body is read, items' before their signatures), so
    a refusal costs little; each one is `Refused("rate_limited")`."""

    def __init__(self, limits: ServeLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._requests = TokenBuckets(*limits.requests, SOURCES_KEPT, clock)
        self._items = TokenBuckets(*limits.items, SOURCES_KEPT, clock)
        self._items_by_key = TokenBuckets(*limits.items, SOURCES_KEPT, clock)
        self._routes = {route: TokenBuckets(per_s, burst, SOURCES_KEPT, clock)
                        for route, (per_s, burst) in limits.routes.items()}

    def request(self, source: str, route: str) -> None:
        if not self._requests.take(source):
            raise Refused("rate_limited", f"over {self._requests.rate:g} requests a second "
                          "from this address")
        bucket = self._routes.get(route)
        if bucket is not None and not bucket.take(source):
            raise Refused("rate_limited", f"over {bucket.rate:g} {route} requests a second "
                          "from this address")

    def items(self, source: str, key: bytes, n: int) -> None:
        if not (self._items.take(source, n) and self._items_by_key.take(key.hex(), n)):
            raise Refused("rate_limited", f"over {self._items.rate:g} gossip items a second "
                          "from this address or key")


class PeerService:
    def __init__(self, *, identity: Identity, swarm: bytes, store: GossipStore,
                 seeds: list[tuple[str, int]], interval_s: float,
                 contacts: Callable[[], list[tuple[str, int]]], on_accepted: OnAccepted,
                 host: str = "", port: int = 0,
                 capacity: Callable[[], int] = lambda: 0, timeout_s: float = 2.0,
                 rng: random.Random | None = None, limits: ServeLimits = ServeLimits(),
                 trace: aiohttp.TraceConfig | None = None,
                 standing: Standing = lambda key: None,
                 own_pass: Callable[[], bytes | None] = lambda: None,
                 join: JoinRoute | None = None, ping: Ping | None = None) -> None:
        """`host` and `port`: where it serves (TCP), when known now; the daemon
        builds it before its DHT is bound and gives the DHT's address to
        `start` instead (port 0: not known yet). Until started it serves
        nothing, runs no round and publishes no card. `join`: an invitation's
        redemption (unsigned); `ping`: serves the reach-back check (`spore
        doctor`); either None: that route is not served."""
        self.identity, self.swarm, self.store = identity, swarm, store
        self.host, self.port, self.interval_s, self.timeout_s = host, port, interval_s, timeout_s
        self.contacts, self.on_accepted, self.capacity = contacts, on_accepted, capacity
        self.rng = rng or random.Random()
        self.verifier = Verifier(swarm)
        self.limits = limits
        self.intake = Intake(limits)
        # Who may be served and answered: members in good standing (p2pnode.
        # membership). A sender's pass in MEMBER_HEADER makes it one here at
        # once; our own pass goes with every request we make.
        self.standing, self.own_pass = standing, own_pass
        self.join, self.ping = join, ping
        self._reaching = asyncio.Semaphore(1)
        # Seeds and DHT contacts are gossip targets at once; addresses only a
        # peer card names are candidates until a round with them verifies.
        self.members = Membership((host, port), self.rng)
        for h, p in seeds:
            self.members.know(h, p)
        self.blocked: set[tuple[str, int]] = set()  # operator's partition (`/v1/gossip/block`)
        self.counters: dict[str, int] = {}
        self.refusals: dict[str, dict[str, Any]] = {}  # address and key → why we refused it
        self._refusal_logged: dict[tuple[str, str], float] = {}  # (address, reason) → when
        self.routes: dict[str, Route] = {}  # more signed routes (the agents': score, …)
        self._busy = asyncio.Semaphore(limits.work)
        self._reading: dict[str, int] = {}  # source → bodies being read from it
        # News (an item new to the store, ours or a peer's) starts a round at
        # once instead of at the next tick: a vote reaches the swarm in a few
        # round trips, not a few intervals. The ticks remain the anti-entropy.
        self._news = asyncio.Event()
        store.on_change = self._news.set
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.card_seq = 0
        self._learnt_cards = -1  # the store's count of peer card changes, when last read
        self._trace = trace
        self._advertise, self._card_capacity = "", -1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- life cycle ------------------------------------------------------------------

    async def start(self, advertise_host: str, *, listen: tuple[str, int] | None = None
                    ) -> None:
        """Serve at `listen` (host, port: the DHT's bound address, TCP beside
        its UDP), or at the address given when built, and publish our card
        naming `advertise_host`."""
        if listen is not None:
            self.host, self.port = listen
            self.members.me = listen
        if not self.port:
            raise SporeError("the peer service has no address to listen on")
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH + "{route}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     keepalive_timeout=HEADER_DEADLINE_S)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise SporeError(f"TCP port {self.port} on {self.host} (peer HTTP, beside the "
                                 "DHT's UDP) is already in use; choose another --dht-port"
                                 ) from exc
            raise SporeError(f"cannot listen on TCP {self.host}:{self.port}: {exc}") from exc
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=MAX_CONCURRENT),
            trace_configs=[self._trace] if self._trace is not None else None)
        self.publish_card(advertise_host)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def publish_card(self, advertise_host: str | None = None) -> None:
        """Our signed peer card, with a seq that grows (wall clock ms, or +1)."""
        if advertise_host is not None:
            self._advertise = advertise_host
        self.card_seq = max(self.card_seq + 1, int(time.time() * 1000))
        self._card_capacity = self.capacity()
        card = make_peer(self.identity, swarm=self.swarm, host=self._advertise, port=self.port,
                         capacity=self._card_capacity, seq=self.card_seq)
        self.store.offer({KIND_PEER + card.node_id: card.wire})

    @property
    def advertised(self) -> str:
        """The host our card names (empty before start); a wildcard names the
        address a peer sees us by, so give a reachable guess instead."""
        if self._advertise not in UNSPECIFIED:
            return self._advertise
        return _reachable_guess()

    def address(self) -> tuple[str, int] | None:
        """Where peers reach us (the host our card names, our port), or None
        before start: what an invitation names (p2pnode.members)."""
        return (self.advertised, self.port) if self._advertise else None

    def capacity_changed(self) -> None:
        """Publish a new card when the spare capacity it advertises is out of date."""
        if self._advertise and self.capacity() != self._card_capacity:
            self.publish_card()

    async def run(self) -> None:
        """The gossip loop (cancel to stop): a round starts every interval, whether
        or not the last ones ended, up to MAX_ROUNDS_IN_FLIGHT; a dead peer holds
        one of them until its deadline, never the loop."""
        rounds: set[asyncio.Task[bool]] = set()
        last = -math.inf
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that races with the event (the daemon then never stops).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s * self.rng.uniform(0.75, 1.25)):
                        await self._news.wait()
                    self.count("rounds_for_news")
                self._news.clear()
                # a burst of news is one round per gap, not one per item
                gap = last + self.interval_s * NUDGE_GAP - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                last = time.monotonic()
                if len(rounds) >= MAX_ROUNDS_IN_FLIGHT:
                    self.count("rounds_skipped_busy")
                    continue
                task = asyncio.ensure_future(self.round())
                rounds.add(task)
                task.add_done_callback(rounds.discard)
        finally:
            for task in rounds:
                task.cancel()

    # --- one round, as the initiator -------------------------------------------------

    def _learn(self) -> None:
        for host, port in self.contacts():  # they answered the DHT's signed challenge
            self.members.know(host, port)
        seen = self.store.changes.get(KIND_PEER, 0)
        if seen == self._learnt_cards:  # no new peer card since the last round
            return
        self._learnt_cards = seen
        named: list[tuple[str, int]] = []
        for _, item in self.store.with_prefix(KIND_PEER):
            try:
                card = decode_peer(item)  # verified when it came in; cheap (memoised)
            except VerifyError:
                continue
            if card.public_key != self.identity.public_key and card.host not in UNSPECIFIED:
                named.append((card.host, card.port))
        self.members.propose(named)  # a card may name any address: candidates only

    async def round(self) -> bool:
        """One push-pull round with a random peer; True if it completed. Its
        deadline bounds the whole round: connecting, sending and reading both
        requests (a tarpit holds it that long at most). None before start:
        no peer is blamed for a round we could not make."""
        if self._session is None:
            self.count("rounds_not_started")
            return False
        self._learn()
        member = self.members.pick(self.blocked)
        if member is None:
            self.count("idle_rounds")
            return False
        probe = member.candidate
        if probe:
            self.count("candidate_probes")
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                stats = await exchange(
                    self.store, lambda route, body: self._call(member, route, body, deadline))
        except Refused as exc:
            member.refused = exc.reason
            self.count(f"refused_by_peer_{exc.reason}")
            log.warning("gossip peer %s:%d refused us (%s): %s", member.host, member.port,
                        exc.reason, exc)
            return False
        except (TimeoutError, aiohttp.ClientError, OSError, VerifyError, sync.DecodeError,
                SporeError) as exc:
            self.members.failed(member, f"{type(exc).__name__}: {exc}")
            self.count("failed_rounds")
            return False
        self.members.ok(member, time.monotonic())
        if probe:
            self.count("candidates_verified")
        self.count("rounds")
        self.count("same_rounds" if stats.same else "sync_rounds")
        self.count("items_pushed", stats.sent)
        self.count("items_pulled", len(stats.accepted))
        if stats.accepted:
            await self.on_accepted(stats.accepted)
        return True

    async def request(self, host: str, port: int, route: str, body: bytes,
                      timeout_s: float) -> bytes:
        """One signed request to a peer's route, with a deadline (raises on failure)."""
        member = self.members.find(host, port) or Member(host, port)  # never listed by this
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with asyncio.timeout_at(deadline):
            return await self._call(member, route, body, deadline)

    async def _call(self, member: Member, route: str, body: bytes, deadline: float) -> bytes:
        if self._session is None:
            raise SporeError("the peer service is not started")
        nonce = os.urandom(16)
        path = PATH + route
        headers = sign_request(self.identity, self.swarm, "POST", path, body,
                               int(time.time() * 1000), nonce)
        if (mine := self.own_pass()) is not None:
            headers[MEMBER_HEADER] = mine.hex()
        self.count("bytes_sent", len(body) + REQUEST_HEADERS)
        url = f"http://{_host(member.host)}:{member.port}{path}"
        # aiohttp's own timer too, so connect and read stop at the deadline
        # even where the caller's is not the one that fires.
        left = aiohttp.ClientTimeout(total=max(deadline - asyncio.get_running_loop().time(),
                                               0.001))
        async with self._session.post(url, data=body, headers=headers, timeout=left) as resp:
            reply = await read_bounded(resp.content, MAX_BODY)
            self.count("bytes_received", len(reply) + REPLY_HEADERS)
            if resp.status == 403:
                try:
                    why = json.loads(reply)
                except ValueError:
                    why = {}
                raise Refused(str(why.get("reason", "forbidden"))[:40],
                              str(why.get("error", "refused"))[:200])
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=f"peer answered {resp.status}")
            replier = verify_reply(resp.headers, nonce, reply)
            if (why := self.standing(replier)) is not None:  # never talk on with an outsider
                raise Refused(f"peer_{why}", f"the peer's key {replier.hex()[:16]}… is not a "
                              f"member in good standing ({why})")
            return reply

    # --- serving ---------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        peer = _who(request)
        if route == "join" and self.join is not None:
            return await self._serve_join(request, peer)
        if route not in ("sync", "delta") and route not in self.routes and (
                route != "reach" or self.ping is None):
            raise web.HTTPNotFound()
        try:
            key, body = await self._verified(request, route, peer)
        except Refused as exc:
            response = self._refuse(peer, exc)
            if not request.content.is_eof():  # never wait for the rest of a refused body
                await _close_after(request, response)
            return response
        if self._blocked_key(key):
            return self._refuse(peer, Refused("blocked", "partitioned by the operator"))
        self._heard_from(key)
        self.refusals.pop(peer, None)  # a refusal lasts until a request verifies
        if self._busy.locked():
            self.count("busy")
            return web.json_response({"error": "busy", "reason": "busy"}, status=503)
        async with self._busy:
            return await self._answer(request, route, key, body, peer)

    async def _verified(self, request: web.Request, route: str, peer: str
                        ) -> tuple[bytes, bytes]:
        """(sender's key, body) of a request that verified, else Refused: its
        source's budget and the headers are checked before the body is read,
        the body under a deadline."""
        source = _source(request.remote or "?")
        self.intake.request(source, route)
        claim = self.verifier.precheck(request.headers, int(time.time() * 1000))
        self._check_member(claim.key, request.headers)  # before any state changes
        if (request.content_length or 0) > MAX_BODY:
            raise Refused("too_large", f"body over {MAX_BODY} bytes")
        body = await self._read(request, source)
        return self.verifier.check(request.headers, request.method, request.path, body,
                                   int(time.time() * 1000)), body

    async def _read(self, request: web.Request, source: str) -> bytes:
        """The body. One that has all arrived is read at once; one still on
        its way holds a reading place (few per source) until the deadline."""
        if request.content.is_eof():
            return await _read_body(request)
        if self._reading.get(source, 0) >= self.limits.reads_per_source:
            raise Refused("busy_source", f"{self.limits.reads_per_source} bodies from this "
                          "address are being read already")
        if sum(self._reading.values()) >= self.limits.reads:
            raise Refused("busy_reading", f"{self.limits.reads} bodies are being read already")
        self._reading[source] = self._reading.get(source, 0) + 1
        try:
            async with asyncio.timeout(self.limits.read_deadline_s):
                return await _read_body(request)
        except TimeoutError:
            raise Refused("slow_body", f"the body took over {self.limits.read_deadline_s:g} s"
                          ) from None
        finally:
            self._reading[source] -= 1
            if not self._reading[source]:
                del self._reading[source]

    async def _answer(self, request: web.Request, route: str, key: bytes, body: bytes,
                      peer: str) -> web.Response:
        accepted: list[Accepted] = []
        try:
            if route == "sync":
                reply = self.store.answer_sync(body)
            elif route == "delta":
                items, want = decode_delta_request(body)
                # Items that cost nothing to refuse (held already, or refused
                # for want of room by their hash) take nothing of the budget.
                self.intake.items(_source(request.remote or "?"), key,
                                  self.store.work_in(items))
                reply, accepted = self.store.answer_items(items, want)
            elif route == "reach":
                reply = await self._reach(key, body, request.remote or "")
            else:
                reply = await self.routes[route](key, body)
        except (sync.DecodeError, VerifyError) as exc:
            reason = str(getattr(exc, "reason", "malformed"))
            return self._refuse(peer, Refused(reason, str(exc)), REFUSAL_STATUS.get(reason, 400))
        self.count(f"served_{route}")
        if accepted:
            self.count("items_pulled", len(accepted))
            self._spawn(self.on_accepted(accepted))
        nonce = bytes.fromhex(request.headers["Spore-Nonce"])
        self.count("bytes_received", len(body) + REQUEST_HEADERS)
        self.count("bytes_sent", len(reply) + REPLY_HEADERS)
        return web.Response(body=reply, headers=sign_reply(self.identity, nonce, reply),
                            content_type="application/octet-stream")

    async def _reach(self, key: bytes, body: bytes, source: str) -> bytes:
        """The reach-back check (Petals' anchor): can we contact the requester
        at the port it claims? Only ever its request's own source address, one
        check at a time (503 busy), few a minute per source (ROUTE_RATES); the
        answer, signed like every reply, carries our clock for its check too."""
        assert self.ping is not None
        arrived_ms = int(time.time() * 1000)
        port = decode_reach_request(body)
        if self._reaching.locked():
            raise Refused("busy", "a reach-back check is under way")
        async with self._reaching:
            udp = await self.ping(key, source, port)
            tcp = False
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(REACH_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(source, port)
                    writer.close()
                    tcp = True
        self.count("reach_checks")
        return wire.pack({"address": source, "port": port, "udp": udp, "tcp": tcp,
                          "now_ms": arrived_ms})

    def _check_member(self, key: bytes, headers: Mapping[str, str]) -> None:
        """Refused unless `key` is a member in good standing; a pass it sends
        along (checked like any gossiped pass) makes it one."""
        why = self.standing(key)
        if why == "not_member" and (shown := headers.get(MEMBER_HEADER)) is not None:
            if len(shown) > MAX_PASS_HEX:
                raise Refused("malformed", f"header {MEMBER_HEADER} over {MAX_PASS_HEX} chars")
            try:
                data = bytes.fromhex(shown)
            except ValueError:
                raise Refused("malformed", f"header {MEMBER_HEADER} is not hex") from None
            if self.store.offer({KIND_PASS + key: data}):
                self.count("passes_shown")
            why = self.standing(key)
        if why is not None:
            raise Refused(why, f"key {key.hex()[:16]}… is not a member in good standing "
                          f"of this swarm ({why})")

    async def _serve_join(self, request: web.Request, peer: str) -> web.Response:
        """An invitation redeemed: unsigned (the joiner is no member yet), so
        rate-limited by address, small and read under the deadline."""
        assert self.join is not None
        try:
            self.intake.request(_source(request.remote or "?"), "join")
            if (request.content_length or 0) > MAX_JOIN_BODY:
                raise Refused("too_large", f"a join request is under {MAX_JOIN_BODY} bytes")
            async with asyncio.timeout(self.limits.read_deadline_s):
                body = await read_bounded(request.content, MAX_JOIN_BODY)
            reply = await self.join(body, peer)
        except TimeoutError:
            return self._refuse(peer, Refused("slow_body", "the join request took too long"))
        except Refused as exc:
            return self._refuse(peer, exc)
        except VerifyError as exc:
            return self._refuse(peer, Refused(str(getattr(exc, "reason", "malformed")),
                                              str(exc)))
        self.count("served_join")
        return web.Response(body=reply, content_type="application/octet-stream")

    def _refuse(self, peer: str, exc: Refused, status: int | None = None) -> web.Response:
        self.count(f"refused_{exc.reason}")
        now = time.monotonic()
        # One line per source address and reason a minute, however many keys
        # it signs with (fresh keys are free).
        said = (peer.split(" ")[0], exc.reason)
        if now - self._refusal_logged.get(said, -math.inf) > REFUSAL_LOG_S:
            self._refusal_logged[said] = now
            log.warning("refused a peer request from %s (%s): %s", peer, exc.reason, exc)
            if len(self._refusal_logged) > 1024:
                self._refusal_logged.pop(next(iter(self._refusal_logged)))
        self.refusals.pop(peer, None)  # newest last
        self.refusals[peer] = {"reason": exc.reason, "detail": str(exc), "at": now}
        if len(self.refusals) > 1024:
            self.refusals.pop(next(iter(self.refusals)))
        return web.json_response({"error": str(exc), "reason": exc.reason},
                                 status=status or REFUSAL_STATUS.get(exc.reason, 403))

    def _heard_from(self, public_key: bytes) -> None:
        """A member that gossips to us is alive (a dropped one is re-admitted).
        Its card's address is not proven by that (a signer may name any
        address), so an address not yet a member only becomes a candidate."""
        item = self.store.get(KIND_PEER + node_id(public_key))
        if item is None:
            return
        card = decode_peer(item)
        if card.host in UNSPECIFIED:
            return
        member = self.members.find(card.host, card.port)
        if member is not None and not member.candidate:
            self.members.ok(member, time.monotonic())
        else:
            self.members.propose([(card.host, card.port)])

    def _blocked_key(self, public_key: bytes) -> bool:
        if not self.blocked:
            return False
        item = self.store.get(KIND_PEER + node_id(public_key))
        if item is None:
            return False
        card = decode_peer(item)
        return (card.host, card.port) in self.blocked

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- faces -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"items": len(self.store.items), "root": self.store.digest().root.hex(),
                "members": self.members.snapshot(),
                "refused": {a: {"reason": r["reason"], "detail": r["detail"]}
                            for a, r in self.refusals.items()},
                "blocked": [f"{h}:{p}" for h, p in sorted(self.blocked)],
                "counters": {**self.counters, **self.store.counters}}


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or VerifyError past `limit` bytes. (`stream.read(n)`
    returns what has arrived so far, up to n: a reply longer than one TCP
    read was cut short, its hash differed, and honest peers refused each
    other's signatures under load — agent genomes are ~400 KB.)"""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(min(1 << 16, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise VerifyError(f"a peer reply over {limit} bytes")
    return b"".join(chunks)


def encode_reach_request(port: int) -> bytes:
    """A reach-back request: only the port; the address is where it comes from."""
    return wire.pack([port])


def decode_reach_request(body: bytes) -> int:
    """The port a reach-back request claims (raises wire.DecodeError)."""
    fields = wire.as_list(wire.unpack(body, 16, "reach request"), "reach request", 1, exact=1)
    return wire.as_int(fields[0], "reach request port", 1, 65535)


def decode_reach_reply(body: bytes) -> dict[str, Any]:
    """A reach-back answer: address, port, udp ("ok", "no_answer", "other_node"),
    tcp (bool), now_ms (the peer's clock when the request arrived); raises
    wire.DecodeError."""
    obj = wire.unpack(body, 512, "reach reply", max_len=8, max_str=64)
    if not isinstance(obj, dict) or not {"address", "port", "udp", "tcp", "now_ms"} <= set(obj):
        raise wire.DecodeError("reach reply: expected address, port, udp, tcp, now_ms")
    if obj["udp"] not in ("ok", "no_answer", "other_node") or type(obj["tcp"]) is not bool:
        raise wire.DecodeError("reach reply: udp or tcp out of range")
    wire.as_int(obj["port"], "reach reply port", 1, 65535)
    wire.as_int(obj["now_ms"], "reach reply time", 0, (1 << 63) - 1)
    return obj


def _reachable_guess() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
        return str(s.getsockname()[0])
    return socket.gethostname()


def _who(request: web.Request) -> str:
    """Whom a refusal is recorded against: the source address and the key the
    request claims (spores behind one address are told apart, so one that
    verifies does not clear another's refusal)."""
    claimed = request.headers.get("Spore-Key", "")[:16]
    if claimed and all(c in "0123456789abcdef" for c in claimed):
        return f"{request.remote or '?'} key {claimed}…"
    return request.remote or "?"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _source(address: str) -> str:
    """Who a reading place is counted against: an IPv4 address, or an IPv6
    /64 (what one host is usually given: its addresses are one source)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused("too_large", f"body over {MAX_BODY} bytes") from None


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response`, then close the connection: aiohttp would otherwise
    keep reading (and discarding) the rest of the body for its lingering time."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
