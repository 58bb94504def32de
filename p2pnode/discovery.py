"""LAN discovery by mDNS (DNS-SD), opt-in: `[dht] discover = true` or SPORE_DISCOVER=1.

What a spore advertises, as service `_sporemind._udp.local.`: an instance
name drawn at random each time it starts, its DHT port (UDP, and peer HTTP
on TCP at the same number), its IPv4 addresses, and a TXT record with `v=1`
and `swarm` = a hash of the swarm id (`swarm_tag`). Never the DNA, never
the node's key or id: those go only to a peer that opens the DHT's signed
handshake, as with `--peer`.

What it does with what it hears: nothing is trusted. Any host on the LAN
can answer anything, so an advertised address is only a *candidate*: it must
carry our swarm's tag and point into a network this device is on (so an
answer can direct us at nobody beyond the local networks), and it is then
tried through the same verified DHT handshake as a `--peer` (signed
challenge, DNA hash, membership) by the daemon's `try_candidate`. The
candidates kept are few (`DiscoveryLimits.candidates`, a full book takes a
newcomer only in place of one that failed), names are resolved a few a tick
(sampled at random from the mDNS cache, so a flood of names cannot starve
an honest one for good), handshakes are rate-limited, and a failed address
waits longer each time before it is tried again.

The checks (`swarm_tag`, `advertised`, `Candidates`) are pure; `LanDiscovery`
is the thin shell around `zeroconf` (the `lan` extra: `pip install
'sporemind[lan]'`), imported only when discovery is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dht.guard import TokenBuckets
from p2pnode.errors import SporeError, VerifyError

__all__ = ["SERVICE_TYPE", "Candidates", "DiscoveryLimits", "Ignored", "LanDiscovery",
           "advertised", "local_networks", "swarm_tag"]

log = logging.getLogger("spore.discovery")

SERVICE_TYPE = "_sporemind._udp.local."
TAG_DOMAIN = b"sporemind/lan-swarm-tag/v1\x00"
VERSION = b"1"
MAX_NAME = 255  # a DNS name's length
Addr = tuple[str, int]
Network = ipaddress.IPv4Network
TryCandidate = Callable[[Addr], Awaitable[bool]]  # True when the handshake admitted it


@dataclass(frozen=True, kw_only=True)
class DiscoveryLimits:
    candidates: int = 32  # addresses kept to try
    names_per_tick: int = 4  # advertised names resolved a tick, sampled at random
    names_kept: int = 1024  # names whose last resolution is remembered
    reresolve_s: float = 30.0  # a name is resolved again after this
    tries: tuple[float, float] = (2.0, 8.0)  # handshakes with candidates a second, at once
    retry_s: float = 15.0  # a failed address is tried again after this, doubling each time
    max_retry_s: float = 600.0
    recheck_s: float = 60.0  # an admitted address is looked at again after this
    addresses_per_service: int = 4  # on-link addresses taken from one advertisement
    tick_s: float = 1.0
    resolve_timeout_s: float = 1.0
    rescan_s: float = 30.0  # this device's addresses looked at again (Wi-Fi up, a new lease)


def swarm_tag(swarm_id: bytes) -> str:
    """What the advertisement says of the swarm: a hash of its id, so the LAN
    learns which spores are of one swarm and nothing else (not the id the
    DHT handshake checks, nor the DNA)."""
    return hashlib.sha256(TAG_DOMAIN + swarm_id).hexdigest()[:32]


class Ignored(VerifyError):
    """An advertisement we do not take; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def advertised(name: str, properties: Mapping[bytes, bytes | None], addresses: Iterable[str],
               port: int | None, *, tag: str, networks: Sequence[Network],
               limit: int = 4) -> list[Addr]:
    """The candidate (IPv4, port)s an advertisement names, or Ignored: our
    service, version and swarm tag, a port, and addresses inside a network
    this device is on (loopback, multicast, broadcast and unspecified never),
    at most `limit` of them."""
    if len(name) > MAX_NAME or not name.endswith("." + SERVICE_TYPE):
        raise Ignored("bad_name", "not a name of our service")
    if properties.get(b"v") != VERSION:
        raise Ignored("bad_version", "no or another version in TXT")
    if properties.get(b"swarm") != tag.encode():
        raise Ignored("other_swarm", "another swarm's tag, or none")
    if type(port) is not int or not 0 < port < 65536:
        raise Ignored("bad_port", "no port, or not in 1..65535")
    out: list[Addr] = []
    for text in addresses:
        try:
            ip = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if on_link(ip, networks) and (str(ip), port) not in out:
            out.append((str(ip), port))
        if len(out) == limit:
            break
    if not out:
        raise Ignored("off_link", "no address in a network this device is on")
    return out


def on_link(ip: ipaddress.IPv4Address, networks: Sequence[Network]) -> bool:
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    for net in networks:
        if ip in net and (net.prefixlen >= 31 or ip not in (net.network_address,
                                                            net.broadcast_address)):
            return True
    return False


@dataclass
class _Candidate:
    next_at: float
    failures: int = 0
    admitted: bool = False


class Candidates:
    """The addresses to try, bounded. A full book takes a newcomer only in
    place of one that failed (the most failed first): what an advertisement
    says can never push out an address that answered, and nobody picks the
    order by what it claims."""

    def __init__(self, limits: DiscoveryLimits) -> None:
        self.limits = limits
        self._book: OrderedDict[Addr, _Candidate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._book)

    def offer(self, addrs: Iterable[Addr], now: float) -> tuple[int, int]:
        """(new ones kept, new ones refused for want of room)."""
        kept = refused = 0
        for addr in addrs:
            if addr in self._book:
                continue
            if len(self._book) >= self.limits.candidates and not self._make_room():
                refused += 1
                continue
            self._book[addr] = _Candidate(next_at=now)
            kept += 1
        return kept, refused

    def _make_room(self) -> bool:
        failed = [a for a, c in self._book.items() if c.failures and not c.admitted]
        if not failed:
            return False
        worst = max(failed, key=lambda a: self._book[a].failures)
        del self._book[worst]
        return True

    def due(self, now: float) -> list[Addr]:
        return [a for a, c in self._book.items() if c.next_at <= now]

    def tried(self, addr: Addr, admitted: bool, now: float) -> bool:
        """Note a try's outcome; True when `addr` is newly admitted."""
        c = self._book.get(addr)
        if c is None:
            return False
        newly, c.admitted = admitted and not c.admitted, admitted
        if admitted:
            c.failures, c.next_at = 0, now + self.limits.recheck_s
        else:
            c.failures += 1
            c.next_at = now + min(self.limits.max_retry_s,
                                  self.limits.retry_s * 2.0 ** min(c.failures - 1, 30))
        return newly

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"address": f"{h}:{p}", "admitted": c.admitted, "failures": c.failures}
                for (h, p), c in self._book.items()]


def local_networks() -> list[Network]:
    """This device's IPv4 networks, loopback left out (needs `ifaddr`, which
    zeroconf brings)."""
    import ifaddr  # the lan extra: imported only when discovery is on

    out: list[Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            with contextlib.suppress(ValueError):
                net = ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
                if not net.ip.is_loopback and net.network not in out:
                    out.append(net.network)
    return out


def _own_addresses(host: str) -> list[str]:
    """The addresses to advertise: the DHT's own if it is bound to one, else
    every non-loopback IPv4 address of this device."""
    import ifaddr

    if host not in ("", "0.0.0.0"):
        return [host]
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback:
                found.append(ip.ip)
    return sorted(set(found))


class LanDiscovery:
    """Advertise this spore and hand the swarm's LAN spores to `try_candidate`.
    `start`, then `stop`; `count` gets counter names (`lan_…`), `report` the
    status after each tick."""

    def __init__(self, *, swarm: bytes, host: str, port: int, try_candidate: TryCandidate,
                 count: Callable[[str], None] = lambda name: None,
                 report: Callable[[dict[str, Any]], None] = lambda status: None,
                 limits: DiscoveryLimits = DiscoveryLimits(),
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.tag, self.host, self.port = swarm_tag(swarm), host, port
        self.try_candidate, self._count, self.limits = try_candidate, count, limits
        self.report = report
        self.clock, self.rng = clock, rng or random.Random()
        self.candidates = Candidates(limits)
        self._tries = TokenBuckets(limits.tries[0], limits.tries[1], 1, clock)
        self._resolved: OrderedDict[str, float] = OrderedDict()  # name → when
        self._addresses: list[str] = []
        self._networks: list[Network] = []
        self._mdns: _Mdns | None = None
        self._names = 0  # names of our service type in the mDNS cache, at the last tick
        self._task: asyncio.Task[None] | None = None
        self._trying: dict[Addr, asyncio.Task[None]] = {}  # handshakes under way
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Raises SporeError when zeroconf is not installed; a network that
        refuses mDNS now is logged and tried again (manual peers go on)."""
        try:
            from zeroconf import Error as ZeroconfError
        except ImportError as exc:
            raise SporeError("LAN discovery ([dht] discover, SPORE_DISCOVER) needs the "
                             "zeroconf package: pip install 'sporemind[lan]' (or turn "
                             "discovery off)") from exc
        try:
            await self._rescan()
        except (OSError, ValueError, ZeroconfError) as exc:
            self._count("lan_errors")
            log.warning("LAN discovery could not start (trying again in %.0f s): %s: %s",
                        self.limits.rescan_s, type(exc).__name__, exc)
        self.report(self.status())
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        trying = list(self._trying.values())
        for task in trying:
            task.cancel()
        await asyncio.gather(*trying, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._mdns is not None:
            await self._mdns.close()
            self._mdns = None

    def status(self) -> dict[str, Any]:
        return {"advertised": [f"{a}:{self.port}" for a in self._addresses],
                "networks": [str(n) for n in self._networks], "tag": self.tag,
                "names_seen": self._names, "candidates": self.candidates.snapshot()}

    async def _run(self) -> None:
        from zeroconf import Error as ZeroconfError

        rescan_at = self.clock() + self.limits.rescan_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.tick_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self.clock() >= rescan_at:
                    rescan_at = self.clock() + self.limits.rescan_s
                    await self._rescan()
                await self._resolve_some()
                self._try_due()
            except (OSError, ValueError, ZeroconfError) as exc:  # logged, and on it goes
                self._count("lan_errors")
                log.warning("LAN discovery: %s: %s", type(exc).__name__, exc)
            self.report(self.status())

    async def _rescan(self) -> None:
        """(Re)start mDNS on this device's current addresses, when they changed."""
        addresses, networks = _own_addresses(self.host), local_networks()
        if addresses == self._addresses and self._mdns is not None:
            self._networks = networks
            return
        if self._mdns is not None:
            await self._mdns.close()
            self._mdns = None
        self._addresses, self._networks = addresses, networks
        if not addresses:
            log.warning("LAN discovery: this device has no IPv4 address beyond loopback "
                        "yet; looking again in %.0f s", self.limits.rescan_s)
            return
        self._mdns = _Mdns(addresses, self.port, self.tag, self._wake.set)
        await self._mdns.open()
        log.info("LAN discovery: advertising %s on udp/tcp port %d (swarm tag %s…)",
                 ", ".join(addresses), self.port, self.tag[:8])

    async def _resolve_some(self) -> None:
        if self._mdns is None:
            return
        now = self.clock()
        seen = [n for n in self._mdns.names() if n != self._mdns.name]
        self._names = len(seen)
        names = [n for n in seen if now - self._resolved.get(n, -1e18) >= self.limits.reresolve_s]
        chosen = self.rng.sample(names, min(len(names), self.limits.names_per_tick))
        for name in chosen:
            self._resolved.pop(name, None)
            self._resolved[name] = now
            if len(self._resolved) > self.limits.names_kept:
                self._resolved.popitem(last=False)
        await asyncio.gather(*(self._resolve(name, now) for name in chosen))

    async def _resolve(self, name: str, now: float) -> None:
        assert self._mdns is not None
        found = await self._mdns.resolve(name, self.limits.resolve_timeout_s)
        if found is None:
            self._count("lan_unresolved")
            return
        try:
            addrs = advertised(name, *found, tag=self.tag, networks=self._networks,
                               limit=self.limits.addresses_per_service)
        except Ignored as exc:
            self._count(f"lan_ignored_{exc.reason}")
            return
        mine = {(a, self.port) for a in self._addresses}
        kept, refused = self.candidates.offer([a for a in addrs if a not in mine], now)
        if kept:
            self._count("lan_candidates")
        if refused:
            self._count("lan_candidates_full")

    def _try_due(self) -> None:
        """Hand due candidates to `try_candidate`, in the background (a dead
        address takes its timeout, not the loop's ticks), within the rate."""
        due = [a for a in self.candidates.due(self.clock()) if a not in self._trying]
        self.rng.shuffle(due)
        for addr in due:
            if len(self._trying) >= self.limits.tries[1] or not self._tries.take("all"):
                self._count("lan_tries_limited")
                break
            task = asyncio.ensure_future(self._try(addr))
            self._trying[addr] = task

    async def _try(self, addr: Addr) -> None:
        try:
            ok = await self.try_candidate(addr)
        except (SporeError, OSError) as exc:  # a failed try, never a task error
            self._count("lan_errors")
            log.debug("LAN discovery: trying %s:%d: %s", *addr, exc)
            ok = False
        finally:
            self._trying.pop(addr, None)
        self._count("lan_admitted" if ok else "lan_refused")
        if self.candidates.tried(addr, ok, self.clock()):
            log.info("LAN discovery: spore at %s:%d admitted", *addr)


class _Mdns:
    """zeroconf, for one set of addresses: our registration, a browser that
    keeps the cache fed, and look-ups of advertised names."""

    def __init__(self, addresses: list[str], port: int, tag: str,
                 on_news: Callable[[], None]) -> None:
        self.addresses, self.port, self.tag, self.on_news = addresses, port, tag, on_news
        instance = f"spore-{secrets.token_hex(6)}"
        self.name = f"{instance}.{SERVICE_TYPE}"
        self.server = f"{instance}.local."
        self._zc: Any = None
        self._browser: Any = None
        self._registering: asyncio.Future[Any] | None = None

    async def open(self) -> None:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import (
            AsyncServiceBrowser,
            AsyncServiceInfo,
            AsyncZeroconf,
        )

        def changed(*, state_change: ServiceStateChange, **_: Any) -> None:
            if state_change is not ServiceStateChange.Removed:
                self.on_news()

        self._zc = AsyncZeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(SERVICE_TYPE, self.name, port=self.port,
                                properties={b"v": VERSION, b"swarm": self.tag.encode()},
                                server=self.server, parsed_addresses=self.addresses)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[changed])
        # Probing for a unique name takes about a second: it goes on in the background.
        self._registering = asyncio.ensure_future(
            await self._zc.async_register_service(info, allow_name_change=True))
        self._registering.add_done_callback(_registered)

    def names(self) -> list[str]:
        """Instance names of our service type in the mDNS cache (zeroconf caps it)."""
        from zeroconf.const import _CLASS_IN, _TYPE_PTR

        records = self._zc.zeroconf.cache.async_all_by_details(SERVICE_TYPE, _TYPE_PTR,
                                                               _CLASS_IN)
        return [r.alias for r in records if isinstance(r.alias, str)]

    async def resolve(self, name: str, timeout_s: float
                      ) -> tuple[Mapping[bytes, bytes | None], list[str], int | None] | None:
        from zeroconf import BadTypeInNameException, IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc.zeroconf, timeout_s * 1000):
                return None
        except (BadTypeInNameException, ValueError, UnicodeError):
            return None
        return info.properties or {}, info.parsed_addresses(IPVersion.V4Only), info.port

    async def close(self) -> None:
        if self._zc is None:
            return
        if self._registering is not None:
            self._registering.cancel()
        with contextlib.suppress(Exception):  # a closing zeroconf may raise anything of its own
            await self._browser.async_cancel()
        await self._zc.async_close()  # unregisters our service (a goodbye packet) too
        self._zc = None


def _registered(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("LAN discovery: advertising failed: %s: %s", type(exc).__name__, exc)
