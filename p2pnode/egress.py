"""An audit tap on everything a spore sends to other spores.

With `SPORE_CAPTURE_EGRESS=/path/file` every UDP datagram the DHT sends and
every peer HTTP request (headers and body) is appended to that file as
``kind(4 bytes) length(4 bytes, big-endian) bytes``, so an operator — or a
test — can check what leaves the device (e.g. that no question text does).
Off by default; it costs a write per message.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from dht.config import Bind, ProtocolFactory


class Egress:
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "ab")  # noqa: SIM115 (kept open while the daemon runs)
        self._lock = threading.Lock()

    def write(self, kind: bytes, data: bytes) -> None:
        with self._lock:
            self._fh.write(kind[:4].ljust(4) + struct.pack(">I", len(data)) + data)
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read(path: Path) -> list[tuple[bytes, bytes]]:
    """The (kind, bytes) records of a capture file."""
    raw, out, i = path.read_bytes(), [], 0
    while i + 8 <= len(raw):
        (n,) = struct.unpack(">I", raw[i + 4:i + 8])
        out.append((raw[i:i + 4].strip(), raw[i + 8:i + 8 + n]))
        i += 8 + n
    return out


class _Tapped:
    """A datagram transport that copies what it sends to the tap."""

    def __init__(self, transport: Any, egress: Egress) -> None:
        self._transport, self._egress = transport, egress

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._egress.write(b"udp", data)
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def tapped_bind(bind: Bind, egress: Egress) -> Bind:
    """A bind whose protocol sends through the tap (the protocol keeps the
    transport asyncio handed it: that one is replaced)."""

    async def bind_and_tap(factory: ProtocolFactory, host: str, port: int) -> Any:
        made: list[Any] = []

        def make() -> Any:
            made.append(factory())
            return made[-1]

        tapped = _Tapped(await bind(make, host, port), egress)
        for protocol in made:
            protocol.transport = tapped
        return tapped
    return bind_and_tap


def trace_config(egress: Egress) -> aiohttp.TraceConfig:
    """Copies each peer HTTP request's headers and body chunks to the tap."""

    async def on_start(session: Any, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestStartParams) -> None:
        head = f"{params.method} {params.url}\n" + "\n".join(
            f"{k}: {v}" for k, v in params.headers.items())
        egress.write(b"http", head.encode())

    async def on_chunk(session: Any, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestChunkSentParams) -> None:
        egress.write(b"body", bytes(params.chunk))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_chunk_sent.append(on_chunk)
    return trace
