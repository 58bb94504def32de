"""One DHT node in its own process, on 127.0.0.1 UDP, for scripts/bench/dht_procs.py.

    .venv/bin/python scripts/bench/_dht_node.py --kind ours|stock [--port 0]
        [--peer 127.0.0.1:PORT ...] [--watch-stdin]

`ours` is a SporeDHT built as scripts/bench/dht_stock.py builds its nodes
(signed toy values, memory store, DhtConfig lifted for loopback) with a fresh
identity; `stock` is kademlia.network.Server with ksize 20. The node binds,
bootstraps from the given peers, prints one line "READY <port>" on stdout,
and then serves until SIGTERM or SIGINT, or with --watch-stdin until stdin
closes (the driver died without cleaning up). Warnings go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dht_stock import CONFIG, DNA, HOST, RULES  # noqa: E402
from kademlia.network import Server  # noqa: E402

from dht.fake import MemoryStore  # noqa: E402
from dht.server import SporeDHT  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402

__all__ = ["KINDS", "STOCK_KSIZE", "start_ours", "start_stock"]

STOCK_KSIZE = 20  # as the stock latency bench: ksize is also the replication
KINDS = ("ours", "stock")
log = logging.getLogger("dht_node")

Addr = tuple[str, int]
Stop = Callable[[], Awaitable[None]]


async def start_ours(port: int, peers: list[Addr]) -> tuple[SporeDHT, int]:
    """A bootstrapped SporeDHT on HOST:port; returns it and its port."""
    node = SporeDHT(identity=Identity.generate(), dna_hash=DNA, store=MemoryStore(RULES),
                    rules=RULES, config=CONFIG)
    _, bound = await node.start(HOST, port)
    if peers and await node.bootstrap(peers) == 0:
        log.warning("ours on %d: no bootstrap peer answered", bound)
    return node, bound


async def start_stock(port: int, peers: list[Addr]) -> tuple[Server, int]:
    """A bootstrapped stock kademlia Server on HOST:port; returns it and its port."""
    node = Server(ksize=STOCK_KSIZE)
    await node.listen(port, HOST)
    bound = int(node.transport.get_extra_info("sockname")[1])
    if peers and not await node.bootstrap(peers):
        log.warning("stock on %d: bootstrap found no node", bound)
    return node, bound


async def _start(kind: str, port: int, peers: list[Addr]) -> tuple[int, Stop]:
    if kind == "ours":
        ours, bound = await start_ours(port, peers)
        return bound, ours.stop
    stock, bound = await start_stock(port, peers)

    async def stop_stock() -> None:
        stock.stop()

    return bound, stop_stock


def _watch_for_exit(stopping: asyncio.Event, watch_stdin: bool) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if not watch_stdin:
        return

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # EOF: the driver is gone
            loop.remove_reader(sys.stdin.fileno())
            stopping.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)


async def serve(kind: str, port: int, peers: list[Addr], watch_stdin: bool) -> None:
    stopping = asyncio.Event()
    _watch_for_exit(stopping, watch_stdin)
    bound, stop = await _start(kind, port, peers)
    print(f"READY {bound}", flush=True)
    await stopping.wait()
    await stop()


def parse_addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--port", type=int, default=0, help="UDP port; 0: any free port")
    ap.add_argument("--peer", type=parse_addr, action="append", default=[],
                    help="host:port to bootstrap from (repeatable)")
    ap.add_argument("--watch-stdin", action="store_true",
                    help="also stop when stdin reaches end of file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"{args.kind} %(name)s: %(message)s")
    asyncio.run(serve(args.kind, args.port, args.peer, args.watch_stdin))


if __name__ == "__main__":
    main()
