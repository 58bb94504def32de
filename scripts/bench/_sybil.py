"""The Sybil attacker of scripts/bench/sybil.py and tests/test_sybil.py.

One process, one asyncio loop, built from the project's own modules (as
scripts/bench/_attack.py): it holds a swarm's DNA file, mints K identities
paying the swarm's puzzle (p2pnode.membership.solve / ticket_pass; CPU time
measured with time.process_time), then until SIGTERM:

* every `pull_s` seconds it pulls one victim's gossip (signed /peer/v1/sync,
  then /peer/v1/delta for the vote entries it has not seen) and learns the
  honest votes: (memory, question region, question vector, up or down);
* for each (memory, region) an honest voter rated, it answers with K votes
  against it (down what was rated up, up what was rated down), one per
  identity, same region and question vector;
* it pushes its passes and votes in signed /peer/v1/delta requests, spread
  over the victims, at most `items_per_s` items a second to each (under the
  victims' intake of 64 items a second by source), a pass before its holder's
  first vote on each victim; the signer rotates over its identities, each
  request carrying the signer's pass in the `Spore-Member` header.

Everything is sent from `source` (default 127.0.0.2: one address, not the
honest spores' 127.0.0.1). Its outcome (JSON) goes to `out` on exit.

    python scripts/bench/_sybil.py CONFIG.json

CONFIG: {"dna": path of dna.bin, "victims": [[host, peer_port], ...], "k": 50,
"bits": puzzle bits (default: the DNA's), "out": path, "source": "127.0.0.2",
"pull_s": 0.5, "items_per_s": 60, "batch": 200, "targets": [{"memory": hex,
"vec": [question embedding], "up": bool}, ...] to attack without pulling}. Prints one JSON line
{"ready": ..., "mint_cpu_s": ...} once the identities are minted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crdt import sync  # noqa: E402
from dht import compact  # noqa: E402
from p2pnode import dna as dna_mod  # noqa: E402
from p2pnode import membership as ms  # noqa: E402
from p2pnode.gossip import KIND_VOTE, MAX_BODY, MAX_WANT, vote_key  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402
from p2pnode.peerauth import sign_request  # noqa: E402
from p2pnode.peers import MEMBER_HEADER, PATH  # noqa: E402
from p2pnode.records import RecordError, decode_vote, make_vote  # noqa: E402
from p2pnode.regions import region_key  # noqa: E402

_REASON = re.compile(rb'"reason":\s*"([A-Za-z0-9_]{1,60})"')
TIMEOUT_S = 20.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Target:
    """One (memory, question region) an honest voter rated: what we say against it."""

    memory: bytes
    region: bytes
    qvec: bytes
    author: bytes
    up: bool  # our stance (the opposite of the honest one)
    seq: int = 1


@dataclass
class Victim:
    host: str
    port: int
    passed: set[int] = field(default_factory=set)  # our identities whose pass it was sent
    budget: float = 0.0  # items we may send now (a token bucket)
    at: float = 0.0


class Sybil:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        dna = _load_dna(cfg["dna"])
        self.swarm = dna.swarm_id
        self.bits = int(cfg.get("bits") or dna.puzzle_bits)
        self.k = int(cfg["k"])
        self.victims = [Victim(str(h), int(p)) for h, p in cfg["victims"]]
        self.source = str(cfg.get("source", "127.0.0.2"))
        self.pull_s = float(cfg.get("pull_s", 0.5))
        self.rate = float(cfg.get("items_per_s", 60.0))
        self.batch = int(cfg.get("batch", 200))
        self.ids: list[Identity] = []
        self.passes: list[bytes] = []
        self.mine: set[bytes] = set()
        self.mint_cpu_s = self.mint_wall_s = 0.0
        self.seen: dict[bytes, bytes] = {}  # key -> item hash, of every item listed to us
        self.targets: dict[tuple[bytes, bytes], Target] = {}
        self.queue: deque[tuple[int, bytes, bytes]] = deque()  # (identity, key, vote wire)
        self.outcomes: Counter[str] = Counter()
        self.pulls: Counter[str] = Counter()
        self.items_sent = self.items_ok = self.votes_made = self.passes_sent = 0
        self.honest_votes_seen = 0
        self.started = 0.0
        self._turn = 0
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # --- identities ------------------------------------------------------------------

    def mint(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(self.k):
            ident = Identity.from_seed(os.urandom(32))
            ticket = ms.solve(ident, self.swarm, self.bits, now_ms())
            self.ids.append(ident)
            self.passes.append(ms.ticket_pass(ticket, ident).wire)
        self.mint_cpu_s = time.process_time() - cpu
        self.mint_wall_s = time.perf_counter() - wall
        self.mine = {i.public_key for i in self.ids}

    # --- the wire --------------------------------------------------------------------

    async def _post(self, victim: Victim, route: str, body: bytes, signer: int
                    ) -> tuple[str, bytes]:
        """(outcome, reply body): "ok", "refused:<reason>", "http:<code>", "error:<type>"."""
        assert self._session is not None
        path = PATH + route
        headers = sign_request(self.ids[signer], self.swarm, "POST", path, body, now_ms(),
                               os.urandom(16))
        headers[MEMBER_HEADER] = self.passes[signer].hex()
        headers["Content-Type"] = "application/octet-stream"
        url = f"http://{victim.host}:{victim.port}{path}"
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                reply = await resp.read()
                status = resp.status
        except TimeoutError:
            return "timeout", b""
        except (aiohttp.ClientError, OSError) as exc:
            return f"error:{type(exc).__name__}", b""
        if status == 200:
            return "ok", reply
        found = _REASON.search(reply)
        return (f"refused:{found.group(1).decode()}" if found else f"http:{status}"), b""

    def _signer(self) -> int:
        self._turn = (self._turn + 1) % self.k
        return self._turn

    # --- learning the honest votes ----------------------------------------------------

    async def _pull(self, victim: Victim) -> None:
        digest = sync.encode_digest(sync.summarize(self.seen))
        outcome, reply = await self._post(victim, "sync", digest, self._signer())
        self.pulls[f"sync:{outcome}"] += 1
        if outcome != "ok" or not reply:
            return
        raw = sync.as_list(sync.unpack(reply, MAX_BODY, "sync reply"), "sync reply", 2, 2)
        listing = sync.decode_listing(sync.as_bytes(raw[1], "listing", MAX_BODY))
        want = [k for k, h in listing.items() if k[:1] == KIND_VOTE and self.seen.get(k) != h]
        for k, h in listing.items():
            if k[:1] != KIND_VOTE:
                self.seen[k] = h
        for at in range(0, len(want), MAX_WANT):
            body = sync.pack([sync.encode_delta({}), want[at:at + MAX_WANT]])
            outcome, reply = await self._post(victim, "delta", body, self._signer())
            self.pulls[f"delta:{outcome}"] += 1
            if outcome != "ok":
                return
            for key, item in sync.decode_delta(reply).items():
                self.seen[key] = sync.item_hash(item)
                self._learn(item)

    def _learn(self, item: bytes) -> None:
        try:
            vote = decode_vote(item)
        except RecordError:
            return
        if vote.voter in self.mine or vote.up == vote.down:
            return
        self.honest_votes_seen += 1
        self._against(vote.memory_id, vote.region, vote.qvec, vote.author,
                      up=vote.down > vote.up)

    def _against(self, memory: bytes, region: bytes, qvec: bytes, author: bytes, *,
                 up: bool) -> None:
        """K votes saying `up` on (memory, region), queued (once per stance)."""
        old = self.targets.get((memory, region))
        if old is not None and old.up == up:
            return
        target = Target(memory, region, qvec, author, up, seq=1 if old is None else old.seq + 1)
        self.targets[(memory, region)] = target
        for i, ident in enumerate(self.ids):
            v = make_vote(ident, memory_id=memory, region=region, qvec=qvec, up=int(up),
                          down=int(not up), seq=target.seq, author=author)
            vkey = vote_key(memory, ident.public_key, region)
            self.queue.append((i, vkey, v.wire))
            self.seen[vkey] = sync.item_hash(v.wire)
        self.votes_made += self.k

    def blind(self, targets: list[dict[str, Any]]) -> None:
        """Targets given (no pull needed): {"memory": hex, "vec": question
        embedding, "up": bool}; the region is the question's, as a spore makes it."""
        for t in targets:
            codes, scales = compact.to_int8(np.asarray([t["vec"]], np.float32))
            qvec = compact.pack(codes[0], float(scales[0]))
            self._against(bytes.fromhex(t["memory"]), region_key(qvec), qvec, b"",
                          up=bool(t["up"]))

    async def _learner(self) -> None:
        turn = 0
        while not self._stop.is_set():
            victim = self.victims[turn % len(self.victims)]
            turn += 1
            try:
                await self._pull(victim)
            except (sync.DecodeError, ValueError) as exc:
                self.pulls[f"malformed:{type(exc).__name__}"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pull_s)

    # --- pushing ---------------------------------------------------------------------

    async def _pusher(self) -> None:
        loop = asyncio.get_running_loop()
        turn = 0
        for v in self.victims:
            v.at = loop.time()
        while not self._stop.is_set():
            if not self.queue:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)
                continue
            victim = self.victims[turn % len(self.victims)]
            turn += 1
            t = loop.time()
            victim.budget = min(victim.budget + (t - victim.at) * self.rate, 4 * self.batch)
            victim.at = t
            items: dict[bytes, bytes] = {}
            n_passes = 0
            while self.queue and len(items) < min(self.batch, int(victim.budget)):
                i, key, wire = self.queue[0]
                need = i not in victim.passed
                if len(items) + 1 + need > min(self.batch, int(victim.budget)):
                    break
                self.queue.popleft()
                if need:
                    items[ms.pass_key(self.ids[i].public_key)] = self.passes[i]
                    victim.passed.add(i)
                    n_passes += 1
                items[key] = wire
            if not items:
                if all(v.budget < 2 for v in self.victims):
                    await asyncio.sleep(0.05)
                continue
            victim.budget -= len(items)
            body = sync.pack([sync.encode_delta(items), []])
            outcome, _ = await self._post(victim, "delta", body, self._signer())
            self.outcomes[outcome] += 1
            self.items_sent += len(items)
            self.passes_sent += n_passes
            if outcome == "ok":
                self.items_ok += len(items)

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        connector = aiohttp.TCPConnector(local_addr=(self.source, 0), limit=64)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        self.started = time.perf_counter()
        try:
            await asyncio.gather(self._learner(), self._pusher())
        finally:
            await self._session.close()
        return self.report()

    def report(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        return {"k": self.k, "bits": self.bits, "mint_cpu_s": self.mint_cpu_s,
                "mint_wall_s": self.mint_wall_s, "run_s": elapsed,
                "targets": len(self.targets), "honest_votes_seen": self.honest_votes_seen,
                "votes_made": self.votes_made, "items_sent": self.items_sent,
                "passes_sent": self.passes_sent, "items_ok": self.items_ok,
                "items_per_s": self.items_sent / max(elapsed, 1e-9),
                "backlog": len(self.queue), "requests": dict(self.outcomes),
                "pulls": dict(self.pulls), "source": self.source,
                "items_per_s_per_victim_cap": self.rate}


def _load_dna(path: str) -> dna_mod.Dna:
    return dna_mod.decode(Path(path).read_bytes())


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    sybil = Sybil(cfg)
    sybil.mint()
    sybil.blind(cfg.get("targets", []))
    print(json.dumps({"ready": True, "k": sybil.k, "bits": sybil.bits,
                      "mint_cpu_s": sybil.mint_cpu_s}), flush=True)
    out = asyncio.run(sybil.run())
    Path(cfg["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
