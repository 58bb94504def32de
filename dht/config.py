"""What a DHT node is built from and what it answers with: its errors, its
configuration, the value rules and store it is given, the UDP transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kademlia.node import Node

from dht.guard import MAX_ARRAY
from p2pnode.errors import ConfigError, SporeError

__all__ = ["RCVBUF", "Bind", "Contact", "DhtConfig", "DhtError", "Lookup", "NotEnoughReplicas",
           "ProtocolFactory", "ValueRules", "ValueStoreLike", "bind_udp"]

RCVBUF = 2 << 20  # UDP receive buffer asked for (the kernel caps it at rmem_max)


class DhtError(SporeError):
    """The DHT could not do what was asked (not started, cannot bind, too few replicas)."""


class NotEnoughReplicas(DhtError):
    """A put reached fewer holders than the write quorum."""


@dataclass(frozen=True, kw_only=True)
class DhtConfig:
    """Everything tunable about one DHT node; built once by the caller."""

    ksize: int = 20  # routing bucket size and lookup width
    alpha: int = 3  # lookup parallelism
    replicas: int = 3  # holders of each value (from the swarm DNA)
    write_quorum: int = 2  # acknowledgements a put needs
    read_width: int = 6  # closest nodes a get asks
    value_k: int = 8  # lookup width for puts and gets: they need the read_width closest
    rpc_timeout_s: float = 1.5  # a LAN answers in milliseconds
    rate_per_s: float = 500.0  # requests per source IP
    rate_burst: float = 1000.0
    max_contacts_per_ip: int = 4
    max_contacts: int = 4096  # admitted contacts in all
    max_outstanding: int = 1024  # our requests awaiting an answer
    max_tasks: int = 256  # handshakes and repairs running at once
    max_sources: int = 8192  # addresses whose rate and credit we remember
    dead_ttl_s: float = 30.0  # lookups skip an address this long after it timed out
    refresh_interval_s: float = 3600.0  # lonely-bucket refresh
    republish_interval_s: float = 3600.0  # for the caller's republish loop

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= self.ksize <= MAX_ARRAY:
            raise ConfigError(f"dht: need 1 <= replicas <= ksize <= {MAX_ARRAY}")
        if not 1 <= self.write_quorum <= self.replicas <= self.read_width:
            raise ConfigError("dht: need 1 <= write_quorum <= replicas <= read_width")
        if not self.read_width <= self.value_k <= self.ksize:
            raise ConfigError("dht: need read_width <= value_k <= ksize")
        if min(self.alpha, self.max_contacts_per_ip, self.max_contacts, self.max_tasks) < 1:
            raise ConfigError("dht: alpha and the contact and task caps must be >= 1")
        if self.rpc_timeout_s <= 0 or self.rate_per_s <= 0 or self.rate_burst < 1:
            raise ConfigError("dht: rpc_timeout_s and rate_per_s must be > 0, rate_burst >= 1")


@dataclass(frozen=True)
class ValueRules:
    """What the values are (dht.codec in the daemon, a toy in tests)."""

    validate: Callable[[bytes, bytes], tuple[str, bytes]]  # raises VerifyError
    merge: Callable[[bytes, bytes, bytes], bytes]  # (key32, old, new), raises VerifyError
    key_id: Callable[[bytes], bytes]  # key32 → 20-byte DHT id
    node_id: Callable[[bytes], bytes]  # public key → 20-byte node id
    # public key → None if it may take part, else the reason it may not (the
    # swarm's membership: p2pnode.membership); checked at the handshake and
    # at every request, so a member revoked later is dropped at its next one.
    admit: Callable[[bytes], str | None] = lambda public_key: None


class ValueStoreLike(Protocol):
    """The local holder's store (dht.values.ValueStore): validates and merges on put."""

    def get(self, key32: bytes, /) -> bytes | None: ...

    def put(self, key32: bytes, data: bytes, publisher: bytes, now_ms: int, /) -> bool: ...


@dataclass(frozen=True)
class Contact:
    node_id: str  # hex
    ip: str
    port: int
    last_seen_s: float | None  # seconds since we last heard from it


@dataclass(frozen=True)
class Lookup:
    nodes: list[Node] = field(default_factory=list)  # the k closest that answered
    hops: int = 0  # rounds of alpha parallel requests


ProtocolFactory = Callable[[], asyncio.DatagramProtocol]
Bind = Callable[[ProtocolFactory, str, int], Awaitable[Any]]


async def bind_udp(factory: ProtocolFactory, host: str, port: int) -> Any:
    """The real transport: a UDP socket on host:port."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
    except OSError as exc:
        raise DhtError(f"cannot bind the DHT to UDP {host}:{port}: {exc.strerror}") from exc
    sock = transport.get_extra_info("socket")
    if sock is not None:  # a burst of answers must not overflow the default 208 KiB
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    return transport
