"""The attacker of scripts/bench/hostile.py: one process, one asyncio loop.

A *member*: it holds the victim's DNA and signs well-formed requests with the
project's own modules (p2pnode.peerauth, p2pnode.records, dht.codec, crdt.sync,
agents.genome). Run by hostile.py, never by hand::

    python _attack.py CONFIG.json     (JSON lines on stdout, commands on stdin)

1. It binds its DHT nodes (one per source address, 127.0.0.2…) and its tarpits,
   joins the victim's DHT like any spore, and prints {"ready": …}.
2. On the line {"go": …} from stdin it runs every attack at once, each at its
   own rate, for `seconds`, and prints {"attacks": …}: per attack what was sent
   and what the victim answered (a refusal is the defender's success: it is
   counted by its reason, never raised).
3. On "quit" (or end of stdin) it leaves, closing everything it opened.

Attacks: votes and peer cards pushed in signed gossip deltas; agent adoptions
and score requests; signed STOREs of forged bucket entries over UDP; slow bodies
(signed headers, Content-Length 500000, then a byte a second). Every request is
signed by a fresh key, so per-key budgets do not stop it; the sources are
several loopback addresses, so per-address ones only partly do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from agents.genome import Weights, make_lineage, to_onnx  # noqa: E402
from crdt import sync  # noqa: E402
from dht import codec  # noqa: E402
from dht.protocol import WHO_ARE_YOU  # noqa: E402
from dht.server import DhtConfig, SporeDHT  # noqa: E402
from dht.values import ValueStore  # noqa: E402
from p2pnode import dna as dna_mod  # noqa: E402
from p2pnode.gossip import KIND_PEER, vote_key  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402
from p2pnode.peerauth import sign_request  # noqa: E402
from p2pnode.records import make_peer, make_vote  # noqa: E402
from p2pnode.regions import region_key  # noqa: E402
from p2pnode.swarm import RULES  # noqa: E402

ATTACKS = ("votes", "cards", "adopt", "score", "dht", "slow")
PATH = "/peer/v1/"
SLOW_BODY = 500_000  # announced; under the gossip body cap, so only the deadline stops it
CARD_CAPACITY = 256  # the most guests a spore may offer (config's cap): placement's first pick
KEYS_EACH = 16  # bucket keys an ask reads first, per question
IN_FLIGHT = 64  # requests of one attack outstanding at once; past that: "attacker_backlog"
GRACE_S = 6.0  # for requests still out when the attack ends
_REASON = re.compile(rb'"reason":\s*"([A-Za-z0-9_]{1,60})"')


def fresh() -> Identity:
    return Identity.from_seed(os.urandom(32))


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Tally:
    """What one attack sent and what the victim answered."""

    sent: int = 0  # requests (datagrams, connections)
    items: int = 0  # records they carried
    delivered: int = 0  # records in requests the victim answered 200
    outcomes: Counter[str] = field(default_factory=Counter)

    def out(self) -> dict[str, Any]:
        return {"sent": self.sent, "items": self.items, "delivered": self.delivered,
                "outcomes": dict(self.outcomes.most_common())}


@dataclass(frozen=True)
class Plan:
    """What the bench learnt of the victim: its questions and memories."""

    qvec: list[bytes]  # per question: compact embedding of its words (a vote's question)
    qf16: np.ndarray  # per question: float16 embedding (a score request's query)
    sketch: np.ndarray  # per question: the 384 sketch projections (an index entry's bits)
    keys: np.ndarray  # per question: the bucket keys an ask of it reads (uint8 [Q, K, 32])
    memories: list[bytes]  # the victim's memory ids

    @classmethod
    def load(cls, path: Path) -> Plan:
        z = np.load(path)
        return cls([bytes(r) for r in z["qvec"]], z["qf16"], z["sketch"], z["keys"],
                   [bytes(r) for r in z["memories"]])


class Attacker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.host, self.port = cfg["host"], int(cfg["peer_port"])
        self.dht_addr = (cfg["host"], int(cfg["dht_port"]))
        dna = dna_mod.decode(Path(cfg["dna"]).read_bytes())
        self.swarm = dna.swarm_id
        self.plan = Plan.load(Path(cfg["plan"]))
        self.sources: list[str] = cfg["sources"]
        self.rates: dict[str, float] = cfg["rates"]
        self.batch: dict[str, int] = cfg["batch"]
        self.rng = np.random.default_rng(int(cfg.get("seed", 7)))
        self.tallies = {a: Tally() for a in ATTACKS}
        self.sessions: list[aiohttp.ClientSession] = []
        self.nodes: list[SporeDHT] = []
        self.stores: list[ValueStore] = []
        self._joining: set[SporeDHT] = set()
        self.tarpits: list[asyncio.Server] = []
        self.tarpit_ports: list[int] = []
        self.tarpit_hits = 0
        self._held: list[asyncio.StreamWriter] = []
        self._released = asyncio.Event()
        self.targets: list[tuple[int, bytes]] = []  # (question, its answer before the attack)
        self._turn = 0
        self._genomes: list[bytes] = []

    # --- setting up ------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        for ip in self.sources:
            conn = aiohttp.TCPConnector(local_addr=(ip, 0), limit=IN_FLIGHT)
            self.sessions.append(aiohttp.ClientSession(
                connector=conn, timeout=aiohttp.ClientTimeout(total=10)))
        for _ in range(int(self.cfg.get("tarpits", 8))):
            server = await asyncio.start_server(self._tarpit, "127.0.0.1", 0)
            self.tarpits.append(server)
            self.tarpit_ports.append(server.sockets[0].getsockname()[1])
        admitted = 0
        for i, ip in enumerate(self.sources[: int(self.cfg.get("dht_nodes", 4))]):
            store = ValueStore(Path(self.cfg["tmp"]) / f"dht{i}.sqlite3")
            self.stores.append(store)
            node = SporeDHT(identity=fresh(), dna_hash=self.swarm, rules=RULES, store=store,
                            config=DhtConfig(max_contacts_per_ip=64))
            await node.start(ip, 0)
            self.nodes.append(node)
            admitted += await self._join(node)
        rng = np.random.default_rng(1)
        good = to_onnx(Weights.initial(rng))
        w = Weights.initial(rng)
        bad = to_onnx(Weights(w.w1 * 1e6, w.b1, w.w2, w.b2))  # weights far over the cap
        self._genomes = [good, good, good, bad]
        return {"ready": True, "dht_nodes": len(self.nodes), "dht_admitted": admitted,
                "tarpits": self.tarpit_ports, "sources": self.sources}

    async def _join(self, node: SporeDHT, tries: int = 10) -> bool:
        """Handshake with the victim (a busy one may miss a try)."""
        for _ in range(tries):
            with contextlib.suppress(Exception):
                if await node.bootstrap([self.dht_addr]) > 0:
                    return True
            await asyncio.sleep(1.0)
        return False

    async def stop(self) -> None:
        self._released.set()
        for w in self._held:
            w.close()
        for server in self.tarpits:
            server.close()
        for session in self.sessions:
            await session.close()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.stop()
        for store in self.stores:
            store.close()

    async def _tarpit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept, then never answer: whoever trusted a card's address waits."""
        self.tarpit_hits += 1
        self._held.append(writer)
        await self._released.wait()

    # --- running ---------------------------------------------------------------------

    async def run(self, seconds: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        jobs: list[Awaitable[None]] = []
        makers: dict[str, Callable[[], Awaitable[None]]] = {
            "votes": self._votes, "cards": self._cards, "adopt": self._adopt,
            "score": self._score, "dht": self._store}
        for name, one in makers.items():
            if self.rates.get(name, 0) > 0:
                rate = self.rates[name] / max(self.batch.get(name, 1), 1)
                jobs.append(self._paced(name, rate, until, one))
        slow = int(self.rates.get("slow", 0))
        jobs += [self._slow_body(self.sources[i % len(self.sources)], until)
                 for i in range(slow)]
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*jobs)
        return {"attacks": {a: t.out() for a, t in self.tallies.items()},
                "tarpit_hits": self.tarpit_hits,
                "seconds": round(time.perf_counter() - started, 1),
                "cpu_s": round(time.process_time() - cpu, 1)}

    async def _paced(self, name: str, rate: float, until: float,
                     one: Callable[[], Awaitable[None]]) -> None:
        """`one()` `rate` times a second until `until`; at most IN_FLIGHT at once."""
        loop = asyncio.get_running_loop()
        tally, tasks = self.tallies[name], set[asyncio.Task[None]]()
        step, at = 1.0 / rate, loop.time()
        while (now := loop.time()) < until:
            if len(tasks) < IN_FLIGHT:
                task = asyncio.ensure_future(self._guarded(tally, one))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                tally.outcomes["attacker_backlog"] += 1
            at = max(at + step, now - 1.0)  # behind by over a second: do not burst
            await asyncio.sleep(max(0.0, at - loop.time()))
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=GRACE_S)
            for task in late:
                task.cancel()
            tally.outcomes["unanswered_at_end"] += len(late)

    @staticmethod
    async def _guarded(tally: Tally, one: Callable[[], Awaitable[None]]) -> None:
        try:
            await one()
        except Exception as exc:  # our mistake: counted, the attack goes on
            tally.outcomes[f"attacker_error:{type(exc).__name__}"] += 1

    def _session(self) -> aiohttp.ClientSession:
        self._turn += 1
        return self.sessions[self._turn % len(self.sessions)]

    async def _post(self, name: str, route: str, body: bytes, signer: Identity,
                    items: int = 1) -> None:
        tally = self.tallies[name]
        tally.sent += 1
        tally.items += items
        path = PATH + route
        headers = sign_request(signer, self.swarm, "POST", path, body, now_ms(), os.urandom(16))
        headers["Content-Type"] = "application/octet-stream"
        url = f"http://{self.host}:{self.port}{path}"
        try:
            async with self._session().post(url, data=body, headers=headers) as resp:
                reply = await resp.read()
                status = resp.status
        except TimeoutError:
            tally.outcomes["timeout"] += 1
            return
        except (aiohttp.ClientError, OSError) as exc:
            tally.outcomes[f"error:{type(exc).__name__}"] += 1
            return
        if status == 200:
            tally.outcomes["ok"] += 1
            tally.delivered += items
            return
        found = _REASON.search(reply)
        tally.outcomes[f"refused:{found.group(1).decode()}" if found else f"http:{status}"] += 1

    # --- the attacks -----------------------------------------------------------------

    def _question(self) -> int:
        return int(self.rng.integers(len(self.plan.qvec)))

    async def _votes(self) -> None:
        """Fresh voters burying each question's answer (the victim's own top-1
        before the attack) and lifting a wrong memory, in that question's region."""
        items: dict[bytes, bytes] = {}
        for _ in range(self.batch.get("votes", 1)):
            if self.targets:
                qi, answer = self.targets[int(self.rng.integers(len(self.targets)))]
            else:
                qi, answer = self._question(), self.plan.memories[0]
            down = bool(self.rng.integers(2))
            memory = answer if down else self.plan.memories[
                int(self.rng.integers(len(self.plan.memories)))]
            voter, qvec = fresh(), self.plan.qvec[qi]
            region = region_key(qvec)
            vote = make_vote(voter, memory_id=memory, region=region, qvec=qvec,
                             up=int(not down), down=int(down), seq=1)
            items[vote_key(memory, voter.public_key, region)] = vote.wire
        body = sync.pack([sync.encode_delta(items), []])
        await self._post("votes", "delta", body, fresh(), len(items))

    async def _cards(self) -> None:
        """Peer cards of fresh keys naming our tarpits, with room for every child."""
        items: dict[bytes, bytes] = {}
        for _ in range(self.batch.get("cards", 1)):
            port = self.tarpit_ports[int(self.rng.integers(len(self.tarpit_ports)))]
            card = make_peer(fresh(), swarm=self.swarm, host="127.0.0.1", port=port,
                             capacity=CARD_CAPACITY, seq=now_ms())
            items[KIND_PEER + card.node_id] = card.wire
        body = sync.pack([sync.encode_delta(items), []])
        await self._post("cards", "delta", body, fresh(), len(items))

    async def _adopt(self) -> None:
        """A child of a fresh key: a valid genome three times in four, else one
        whose weights are far over the cap (the guard must read it all)."""
        sender = fresh()
        genome = self._genomes[int(self.rng.integers(len(self._genomes)))]
        lineage = make_lineage(sender, genome=genome, created_ms=now_ms())
        spec = self.plan.qf16[self._question()].tobytes()
        body = msgpack.packb([lineage.wire, genome, spec], use_bin_type=True)
        await self._post("adopt", "adopt", body, sender)

    async def _score(self) -> None:
        """The most candidates a score request may carry, for a real question."""
        cands = self.rng.standard_normal((64, self.plan.qf16.shape[1])).astype(np.float32)
        cands /= np.linalg.norm(cands, axis=1, keepdims=True)
        body = msgpack.packb([os.urandom(16), self.plan.qf16[self._question()].tobytes(),
                              cands.astype(np.float16).tobytes()], use_bin_type=True)
        await self._post("score", "score", body, fresh())

    async def _store(self) -> None:
        """A bucket value of entries from fresh authors naming memories nobody
        has, with the bits of a victim's question: half under that question's
        bucket keys (its asks read them), half under random keys (disk)."""
        tally = self.tallies["dht"]
        if not self.nodes:
            tally.outcomes["no_dht_node"] += 1
            return
        node = self.nodes[self._turn % len(self.nodes)]
        self._turn += 1
        qi = self._question()
        if self.rng.integers(2):
            keys = self.plan.keys[qi]
            key = bytes(keys[int(self.rng.integers(len(keys)))])
        else:
            key = os.urandom(32)
        entries = [codec.make_entry(fresh(), os.urandom(32), self.plan.sketch[qi], 0, 0, now_ms())
                   for _ in range(self.batch.get("dht", 1))]
        value = codec.encode_bucket(entries, salt=key)
        tally.sent += 1
        tally.items += len(entries)
        ok, answer = await node.proto.request(self.dht_addr, "store", [key, value])
        if not ok:
            tally.outcomes["no_answer"] += 1
        elif answer is True:
            tally.outcomes["stored"] += 1
            tally.delivered += len(entries)
        elif answer is False:
            tally.outcomes["rejected"] += 1
        elif answer == WHO_ARE_YOU:  # it forgot us: handshake again, as any spore would
            tally.outcomes["unadmitted"] += 1
            node.proto.forgotten_by(self.dht_addr)
            if node not in self._joining:
                self._joining.add(node)
                with contextlib.suppress(Exception):
                    await node.proto.ensure(self.dht_addr)
                self._joining.discard(node)
        else:
            tally.outcomes["other_answer"] += 1

    async def _slow_body(self, source: str, until: float) -> None:
        """One connection at a time from `source`, each announcing SLOW_BODY
        bytes under signed headers and sending one a second, until the victim
        answers or closes (then the next) or the attack ends."""
        loop = asyncio.get_running_loop()
        tally = self.tallies["slow"]
        while loop.time() < until:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.host, self.port, local_addr=(source, 0)), 5)
            except (OSError, TimeoutError) as exc:
                tally.outcomes[f"connect_error:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            tally.sent += 1
            try:
                outcome = await self._trickle(reader, writer, until)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1)
            tally.outcomes[outcome] += 1
            if outcome.startswith("refused"):  # turned away at once: try again soon, not now
                await asyncio.sleep(0.5)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       until: float) -> str:
        loop = asyncio.get_running_loop()
        path = PATH + "delta"
        signed = sign_request(fresh(), self.swarm, "POST", path, bytes(SLOW_BODY), now_ms(),
                              os.urandom(16))
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {SLOW_BODY}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n")
        reply = asyncio.ensure_future(reader.read(4096))
        try:
            writer.write(head.encode())
            while loop.time() < until:
                done, _ = await asyncio.wait({reply}, timeout=1.0)
                if done:
                    return _answer_of(reply.result())
                writer.write(b"\0")
                await writer.drain()
            return "held_to_end"
        except (ConnectionError, OSError):
            return "reset"
        finally:
            reply.cancel()


def _answer_of(data: bytes) -> str:
    if not data:
        return "closed"
    found = _REASON.search(data)
    if found:
        return f"refused:{found.group(1).decode()}"
    status = data.split(b" ", 2)[1:2]
    return f"http:{status[0].decode(errors='replace')}" if status else "garbage"


# --- the parent's side (hostile.py): what the attacker knows, and its process -----------

def write_plan(path: Path, dna: dna_mod.Dna, questions: list[str], memories: list[bytes]
               ) -> None:
    """What a member can compute of the victim's questions, in wire forms: the
    compact embedding a vote on each carries, its sketch bits, its bucket keys."""
    from agents.encoder import load_encoder  # the parent's: the attacker runs no encoder
    from dht import compact
    from dht.index import sketch_planes
    from dht.keys import bucket_keys, hyperplanes
    from p2pnode.regions import question_text

    encoder = load_encoder(threads=1)
    q = encoder.embed([question_text(x) or x for x in questions]).astype(np.float32)
    codes, scales = compact.to_int8(q)
    qvec = [np.frombuffer(compact.pack(c, float(sc)), np.uint8)
            for c, sc in zip(codes, scales, strict=True)]
    dim = q.shape[1]
    sketch = q @ sketch_planes(dna.lsh.seed, 8 * codec.BITS_BYTES, dim).reshape(-1, dim).T
    planes = hyperplanes(dna.lsh, dim)
    keys = [[np.frombuffer(k, np.uint8) for k in bucket_keys(v, dna.lsh, planes)[:KEYS_EACH]]
            for v in q]
    np.savez(path, qvec=np.array(qvec), qf16=q.astype(np.float16), keys=np.array(keys),
             sketch=sketch.astype(np.float32),
             memories=np.array([np.frombuffer(m, np.uint8) for m in memories]))


class AttackerProc:
    """This module as a child process: JSON lines both ways."""

    def __init__(self, config: Path, log: Path) -> None:
        with log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, str(config)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):  # it is gone: receive() says so
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            return json.loads(self._lines.get(timeout=timeout))  # type: ignore[no-any-return]
        except queue.Empty:
            return {"error": f"no word from the attacker in {timeout:g} s",
                    "exit": self.proc.poll()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send({"quit": True})
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()


async def main(cfg: dict[str, Any]) -> None:
    attacker = Attacker(cfg)
    loop = asyncio.get_running_loop()

    def say(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    try:
        say(await attacker.start())
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            msg = json.loads(line)
            if "go" in msg:
                attacker.targets = [(int(q), bytes.fromhex(m)) for q, m in msg.get("targets", [])]
                say(await attacker.run(float(msg["go"])))
            elif "quit" in msg:
                break
    finally:
        await attacker.stop()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
