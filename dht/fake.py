"""An in-memory datagram network: thousands of DHT nodes in one process.

As far as SporeDHT can tell, an endpoint is a UDP socket (sendto, close,
is_closing, get_extra_info("sockname")) and datagrams arrive through the
event loop as they would from the kernel, so one contract suite runs on both
(STYLE.md 7). Loss, latency and partitions are controls; the randomness
behind them is passed in.

    net = FakeNetwork(rng=random.Random(7), loss=0.01, latency_s=0.002)
    dht = SporeDHT(..., bind=net.bind)
    await dht.start("10.0.0.1", 0)
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from dht.config import ValueRules
from p2pnode.errors import VerifyError

__all__ = ["MAX_UDP_PAYLOAD", "TOY_RULES", "FakeNetwork", "FakeTransport", "MemoryStore",
           "toy_merge", "toy_validate"]

Addr = tuple[str, int]
MAX_UDP_PAYLOAD = 65_507  # what one IPv4 datagram can carry
_FIRST_PORT = 20_000


class FakeTransport:
    """One bound address on a FakeNetwork."""

    def __init__(self, net: FakeNetwork, addr: Addr, protocol: asyncio.DatagramProtocol) -> None:
        self.net, self.addr, self.protocol = net, addr, protocol
        self._closed = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Addr | None = None) -> None:
        if self._closed or addr is None:
            return  # what asyncio does after close: drop silently
        self.net.send(self.addr, (addr[0], addr[1]), bytes(data))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.net.unbind(self.addr)
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.addr if name == "sockname" else default


class FakeNetwork:
    """Endpoints by address, and the rules datagrams travel by."""

    def __init__(self, *, rng: random.Random | None = None, loss: float = 0.0,
                 latency_s: float = 0.0, jitter_s: float = 0.0) -> None:
        self.rng = rng or random.Random(0)
        self.loss, self.latency_s, self.jitter_s = loss, latency_s, jitter_s
        self.counters: Counter[str] = Counter()
        self._endpoints: dict[Addr, FakeTransport] = {}
        self._side: dict[Addr, int] = {}  # empty: no partition
        self._next_port: dict[str, int] = {}

    def endpoint(self, host: str, port: int, protocol: asyncio.DatagramProtocol) -> FakeTransport:
        """Bind `protocol` to host:port (0: a free port) and hand it its transport."""
        if port == 0:
            port = self._free_port(host)
        if (host, port) in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"fake address {host}:{port} is in use")
        transport = FakeTransport(self, (host, port), protocol)
        self._endpoints[(host, port)] = transport
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport

    async def bind(self, factory: Callable[[], asyncio.DatagramProtocol], host: str,
                   port: int) -> FakeTransport:
        """The `bind` SporeDHT takes: same shape as dht.server.bind_udp."""
        return self.endpoint(host, port, factory())

    def unbind(self, addr: Addr) -> None:
        self._endpoints.pop(addr, None)

    def partition(self, *groups: Iterable[Addr]) -> None:
        """Only addresses in the same group talk; those in none talk among themselves."""
        self._side = {addr: i for i, group in enumerate(groups) for addr in group}

    def heal(self) -> None:
        self._side = {}

    def send(self, src: Addr, dst: Addr, data: bytes) -> None:
        self.counters["sent"] += 1
        self.counters["bytes_sent"] += len(data)
        if len(data) > MAX_UDP_PAYLOAD:
            self.counters["too_large"] += 1
        elif self.loss and self.rng.random() < self.loss:
            self.counters["lost"] += 1
        elif self._side and self._side.get(src, -1) != self._side.get(dst, -1):
            self.counters["partitioned"] += 1
        else:
            delay = self.latency_s + (self.rng.random() * self.jitter_s if self.jitter_s else 0.0)
            loop = asyncio.get_running_loop()
            if delay > 0:
                loop.call_later(delay, self._arrive, src, dst, data)
            else:
                loop.call_soon(self._arrive, src, dst, data)

    def _arrive(self, src: Addr, dst: Addr, data: bytes) -> None:
        # Looked up on arrival: an endpoint closed in flight loses the datagram.
        endpoint = self._endpoints.get(dst)
        if endpoint is None:
            self.counters["unreachable"] += 1
            return
        self.counters["delivered"] += 1
        endpoint.protocol.datagram_received(data, src)

    def _free_port(self, host: str) -> int:
        port = self._next_port.get(host, _FIRST_PORT)
        while (host, port) in self._endpoints:
            port += 1
        self._next_port[host] = port + 1
        return port


# --- toy values and an in-memory store, for contract tests and simulations --------

def toy_validate(key32: bytes, data: bytes) -> tuple[str, bytes]:
    """Values are b"ok:" + anything (cheap, so thousands of nodes fit one process)."""
    if len(key32) != 32:
        raise VerifyError("a key must be 32 bytes")
    if not data.startswith(b"ok:"):
        raise VerifyError("forged value without the ok prefix")
    return "toy", data


def toy_merge(key32: bytes, old: bytes, new: bytes) -> bytes:
    return max(old, new)


TOY_RULES = ValueRules(validate=toy_validate, merge=toy_merge,
                       key_id=lambda k: hashlib.sha256(b"key" + k).digest()[:20],
                       node_id=lambda pub: hashlib.sha256(b"node" + pub).digest()[:20])


class MemoryStore:
    """The ValueStore contract in a dict: validates, merges, says whether it changed."""

    __slots__ = ("rules", "values")

    def __init__(self, rules: ValueRules = TOY_RULES) -> None:
        self.rules = rules
        self.values: dict[bytes, bytes] = {}

    def get(self, key32: bytes) -> bytes | None:
        return self.values.get(key32)

    def put(self, key32: bytes, data: bytes, publisher: bytes, now_ms: int) -> bool:
        self.rules.validate(key32, data)
        old = self.values.get(key32)
        self.values[key32] = data if old is None else self.rules.merge(key32, old, data)
        return old != self.values[key32]
