"""The daemon: the composition root that wires the rooms together and serves.

`prepare_state` founds the spore's identity and swarm on first run; `serve`
runs the services in one TaskGroup until SIGTERM/SIGINT, then drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from agents import model_build
from agents.encoder import Encoder, EncoderError, file_sha256, load_encoder, release_free_heap
from dht.server import Bind, bind_udp
from p2pnode import dna as dna_mod
from p2pnode.agentnet import AgentNet
from p2pnode.api import ApiRunner, make_app
from p2pnode.colony import AGENTS_DB, Colony
from p2pnode.config import EMBEDDED, Config, Listen, dht_listen
from p2pnode.discovery import LanDiscovery
from p2pnode.egress import Egress, tapped_bind, trace_config
from p2pnode.embedded import EmbeddedProvider
from p2pnode.errors import SporeError, StateError
from p2pnode.gossip import KIND_DNA, GossipStore
from p2pnode.identity import Identity, load_or_create
from p2pnode.lock import StateLock
from p2pnode.members import Members
from p2pnode.membership import pass_key
from p2pnode.node import Spore
from p2pnode.peers import HEADER_DEADLINE_S, PeerService, Ping, validators
from p2pnode.providers import Chain, Limits, OpenAIProvider, Provider
from p2pnode.service import Notifier
from p2pnode.storage import DB_FILE, Storage
from p2pnode.swarm import RULES, Swarm, SwarmSettings

log = logging.getLogger("spore")
TOKEN_FILE = "api.token"
ENCODER_NAME = "all-MiniLM-L6-v2-int8-rq"
ENCODER_DIM = 384
REPUBLISH_TICK_S = 2.0
FAULT_LOG_S = 300.0  # a store fault in a background service is logged this often
GOSSIP_DB = "gossip.sqlite3"
DRAIN_S = 10.0  # background publishing allowed to finish on stop
TRIM_EVERY_S = 5.0  # malloc arenas trimmed this often (_keep_heap_trimmed)


def ensure_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {state_dir}: {exc.strerror} "
                         "(set SPORE_STATE_DIR or --state-dir to a writable place)") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateError(f"the state directory {state_dir} is not writable by this user "
                         "(fix its permissions, or set SPORE_STATE_DIR / --state-dir)")


def prepare_state(cfg: Config, swarm: str | None = None, *, membership: str = "invite",
                  puzzle_bits: int | None = None) -> tuple[Identity, dna_mod.Dna, bool]:
    """Identity and DNA, created on first run (founding a swarm `membership`
    "invite" or "open"). Returns (identity, dna, founded now)."""
    ensure_state_dir(cfg.state_dir)
    identity, _ = load_or_create(cfg.state_dir)
    dna = dna_mod.load(cfg.state_dir)
    if dna is not None:
        return identity, dna, False
    try:
        sha = file_sha256(model_build.ensure_model())
    except (EncoderError, OSError) as exc:
        raise StateError(f"cannot hash the encoder: {exc}") from exc
    dna = dna_mod.found(identity, swarm=swarm or f"solo-{identity.node_id.hex()[:8]}",
                        encoder_name=ENCODER_NAME, encoder_sha256=sha, dim=ENCODER_DIM,
                        created_ms=int(time.time() * 1000), membership=membership,
                        puzzle_bits=puzzle_bits)
    dna_mod.save_chain(cfg.state_dir, [dna])
    dna_mod.save(cfg.state_dir, dna)
    return identity, dna, True


def encoder_health(state_dir: Path) -> tuple[str, int]:
    """(sha256, dim) of the installed encoder once it loaded and embedded a
    sentence into a unit vector, and matched the swarm DNA's (if there is
    one yet); else StateError saying what is wrong (`spore doctor`)."""
    try:
        encoder = load_encoder(None, 1)
        vec = encoder.embed(["spore doctor checks the encoder"])
    except EncoderError as exc:
        raise StateError(f"the encoder does not load or embed: {exc}") from exc
    norm = float((vec[0] ** 2).sum()) ** 0.5
    if vec.shape != (1, encoder.dim) or abs(norm - 1.0) > 1e-3:
        raise StateError(f"the encoder embeds wrongly (shape {vec.shape}, norm {norm:.3f})")
    dna = dna_mod.load(state_dir)
    if dna is not None:
        dna_mod.check_encoder(dna, encoder.model_sha256, encoder.dim)
    return encoder.model_sha256, encoder.dim


def _api_token(cfg: Config) -> str:
    """The API token, kept (0600) in the state directory: DNA changes need it
    always (a web page can reach a loopback API), and beyond loopback every
    route but /healthz."""
    path = cfg.state_dir / TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def run(cfg: Config) -> None:
    """Run a spore in the foreground until SIGTERM or SIGINT."""
    asyncio.run(serve(cfg))


async def serve(cfg: Config) -> None:
    ensure_state_dir(cfg.state_dir)
    lock = StateLock(cfg.state_dir)
    lock.acquire()
    try:
        await _serve_locked(cfg)
    finally:
        lock.release()


async def _serve_locked(cfg: Config) -> None:
    notifier = Notifier(cfg.notify_socket)
    identity, dna, founded = prepare_state(cfg)
    if founded:
        log.info("founded swarm %s (dna %s)", dna.fields["swarm"], dna.hash.hex()[:16])
    try:
        encoder = await asyncio.to_thread(load_encoder, None, cfg.encoder_threads)
    except EncoderError as exc:
        raise StateError(str(exc)) from exc
    dna_mod.check_encoder(dna, encoder.model_sha256, encoder.dim)
    storage = Storage(cfg.state_dir / DB_FILE)
    egress = Egress(Path(cfg.capture_egress)) if cfg.capture_egress else None
    generator = build_chain(cfg)  # None: generation off (SPORE_GENERATE, [generate])
    if generator is not None:  # where a question's text may go, said once at start
        log.info("answers in words by %s; questions go to %s",
                 ", ".join(p.name for p in generator.providers),
                 ", ".join(generator.where_questions_go()) or "no provider available")
    parts = assemble(identity=identity, dna=dna, chain=dna_mod.load_chain(cfg.state_dir),
                     encoder=encoder, storage=storage, state_dir=cfg.state_dir,
                     max_text_bytes=cfg.max_text_bytes,
                     settings=SwarmSettings(host=cfg.dht_host, port=cfg.dht_port,
                                            peers=cfg.peers, republish_s=cfg.republish_s,
                                            max_contacts_per_ip=cfg.max_contacts_per_ip,
                                            rate_per_s=cfg.dht_rate_per_s),
                     bind=bind_udp if egress is None else tapped_bind(bind_udp, egress),
                     gossip_path=cfg.state_dir / GOSSIP_DB, generator=generator,
                     ungrounded=cfg.generate.ungrounded,
                     peers=PeerSettings(seeds=cfg.peers, interval_s=cfg.gossip_interval_s,
                                        egress=egress),
                     agents=AgentSettings(path=cfg.state_dir / AGENTS_DB,
                                          max_agents=cfg.max_agents,
                                          seed_agents=cfg.seed_agents))
    spore, swarm, gossip = parts.spore, parts.swarm, parts.gossip
    discovery: LanDiscovery | None = None
    try:
        host, port = await start_parts(parts, listen=lambda p: _listen(cfg, p),
                                       advertise_host=cfg.advertise_host)
        if cfg.discover and parts.peers is not None:
            discovery = _discovery(swarm, parts.peers, dna.swarm_id, host, port)
            await discovery.start()
        app = make_app(spore, _api_token(cfg), loopback_only=cfg.loopback_only,
                       host=cfg.api_host)
        runner = ApiRunner(app, access_log=None, handler_cancellation=True,
                           keepalive_timeout=HEADER_DEADLINE_S)
        await runner.setup()
        try:
            await _start_site(runner, cfg)
            await _serve_until_stopped(cfg, spore, notifier)
        finally:
            notifier.send(stopping="1", status="draining")
            await runner.cleanup()
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spore.drain(), DRAIN_S)
        if parts.agents is not None:
            await parts.agents.stop()
            parts.agents.colony.close()
        if discovery is not None:
            await discovery.stop()
        if parts.peers is not None:
            await parts.peers.stop()
        await swarm.stop()
        if generator is not None:  # after the API: no generation runs any more
            await generator.close()
        spore.close()
        storage.close()
        gossip.close()
        if egress is not None:
            egress.close()
        log.info("stopped")


@dataclass(frozen=True, kw_only=True)
class PeerSettings:
    """The peer service's (p2pnode.peers): the gossip seeds, the round
    interval, and the capture of what leaves, if on (p2pnode.egress). Where
    it listens is the DHT's address, known once bound (`start_parts`)."""

    seeds: tuple[tuple[str, int], ...]
    interval_s: float
    egress: Egress | None = None


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """The colony's (p2pnode.colony): its store (None: in memory) and size."""

    path: Path | None
    max_agents: int
    seed_agents: int


@dataclass(frozen=True, kw_only=True)
class Parts:
    """A spore's objects, built in dependency order by `assemble`."""

    spore: Spore
    swarm: Swarm
    members: Members
    gossip: GossipStore
    peers: PeerService | None  # None: no peer transport (the in-process harness)
    agents: AgentNet | None  # None: no colony


def assemble(*, identity: Identity, dna: dna_mod.Dna, chain: list[dna_mod.Dna],
             encoder: Encoder, storage: Storage, state_dir: Path, max_text_bytes: int,
             settings: SwarmSettings, bind: Bind = bind_udp, gossip_path: Path | None,
             clock: Callable[[], float] = time.time, generator: Chain | None = None,
             ungrounded: bool = False, peers: PeerSettings | None = None,
             agents: AgentSettings | None = None) -> Parts:
    """Build a spore and what it stands on, each part given the parts it
    needs when built: members, swarm (DHT), gossip store, peer service,
    colony and agents, then the spore. Used by the daemon and by the
    in-process harness (tests/harness.py), so both run the same wiring;
    nothing starts here (`start_parts`). `peers` None: no peer transport;
    `agents` None: no colony. `generator`: the language-model providers
    (p2pnode.providers; None: answers from memory only), closed by whoever
    built it.

    Late-bound edges, each a lambda that reads a part built later when it is
    called (never while building), where two parts need each other:
    - to the spore, built last because it stands on all the others, which
      call back into it: its current DNA and chain (gossip may replace them:
      members, the gossip validators, the agents), `on_revoked` (members),
      `trusted` and `weight` (the gossip store's eviction), `on_gossip` (the
      peer service's accepted items), `on_agents` (the agents' thread);
    - members to the gossip store: the store checks passes and revocations
      with the members' validators, the members offer revocations to it;
    - members to the peer service: it serves the members' `join` and asks
      their `standing`; an invitation names the address it listens at."""
    members = Members(identity=identity, dna=lambda: spore.dna, chain=lambda: spore.chain,
                      state_dir=state_dir, now_ms=lambda: int(clock() * 1000), first=dna,
                      gossip=lambda: gossip,
                      address=lambda: None if service is None else service.address(),
                      on_revoked=lambda key: spore.on_revoked(key))
    swarm = Swarm(identity=identity, dna=dna, state_dir=state_dir, dim=encoder.dim,
                  settings=settings, bind=bind, admit=members.standing)
    gossip = GossipStore(validators(dna.swarm_id, lambda: spore.dna, members.standing)
                         | members.validators(), gossip_path, clock=clock,
                         trusted=lambda voter: spore.trusted(voter),
                         weight=lambda voter: spore.weight(voter))
    colony = None if agents is None else Colony(
        identity=identity, path=agents.path, max_agents=agents.max_agents,
        seed_agents=agents.seed_agents)
    service = None if peers is None else PeerService(
        identity=identity, swarm=dna.swarm_id, store=gossip, seeds=list(peers.seeds),
        interval_s=peers.interval_s,
        contacts=lambda: [(c.ip, c.port) for c in swarm.dht.contacts()],
        on_accepted=lambda accepted: spore.on_gossip(accepted),
        capacity=(lambda: 0) if colony is None else (lambda: colony.guest_room),
        trace=None if peers.egress is None else trace_config(peers.egress),
        standing=members.standing, own_pass=members.own_pass, join=members.join,
        ping=_reach_ping(swarm))
    net = None if colony is None else AgentNet(
        colony=colony, identity=identity, swarm=dna.swarm_id, store=gossip,
        compute=lambda fn, *args: spore.on_agents(fn, *args), dna=lambda: spore.dna,
        peers=service, standing=members.standing)
    spore = Spore(identity=identity, dna=dna, storage=storage, encoder=encoder,
                  max_text_bytes=max_text_bytes, clock=clock, swarm=swarm, gossip=gossip,
                  state_dir=state_dir, chain=chain, members=members, generator=generator,
                  ungrounded=ungrounded, peers=service, agents=net)
    return Parts(spore=spore, swarm=swarm, members=members, gossip=gossip, peers=service,
                 agents=net)


async def start_parts(parts: Parts, *, listen: Callable[[Parts], Listen] | None = None,
                      advertise_host: str = "") -> tuple[str, int]:
    """Start what `assemble` built, in the same order: our pass, the stores
    loaded, trust weighed, the DHT bound and joined; then the agents (their
    colony loaded, their cards out, their routes on the peer service); then
    the peer service on the DHT's address (TCP beside its UDP), its card
    naming `advertise_host` (else the DHT's host). Returns the DHT's
    address. `listen` chooses the address to bind once the roster is loaded
    (else the swarm's settings say it)."""
    spore, gossip = parts.spore, parts.gossip
    await _take_membership(parts.members, gossip)
    await spore.load()
    await _adopt_gossiped_dna(spore, gossip)
    await spore.refresh_trust()  # revoked voices weigh nothing from the first ask
    gossip.offer({KIND_DNA: dna_mod.chain_wire(spore.chain)})
    if listen is not None:
        chosen = listen(parts)
        parts.swarm.settings = replace(parts.swarm.settings, host=chosen.host,
                                       listen=chosen.status())
        log.info("DHT and peer port on %s: %s", chosen.host, chosen.why)
    host, port = await parts.swarm.start()
    if parts.agents is not None:
        await parts.agents.start()
    if parts.peers is not None:
        await parts.peers.start(advertise_host or host, listen=(host, port))
    return host, port


def _listen(cfg: Config, parts: Parts) -> Listen:
    """Loopback until a swarm exists (p2pnode.config.dht_listen): decided with
    the roster loaded, so a founder whose swarm has members stays reachable."""
    spore = parts.spore
    members = sum(not m["revoked"] for m in parts.members.roster.members())
    return dht_listen(cfg, joined=spore.identity.public_key not in spore.dna.founders,
                      members=members)


def _reach_ping(swarm: Swarm) -> Ping:
    """The reach-back check's DHT ping (p2pnode.peers): "ok" when the spore of
    the requester's key answers at the address, "other_node" when another
    does, "no_answer" else. Our DHT speaks IPv4 only."""

    async def ping(public_key: bytes, source: str, port: int) -> str:
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            return "no_answer"
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is None:
                return "no_answer"
            ip = ip.ipv4_mapped
        ok, answer = await swarm.dht.proto.request((str(ip), port), "ping",
                                                    [swarm.dht.node_id])
        if not ok:
            return "no_answer"
        return "ok" if answer == RULES.node_id(public_key) else "other_node"
    return ping


def _discovery(swarm: Swarm, peers: PeerService, swarm_id: bytes, host: str,
               port: int) -> LanDiscovery:
    """LAN discovery (p2pnode.discovery): an address heard by mDNS is tried
    through the DHT's signed handshake, as a `--peer` is; one admitted is a
    gossip target at once, one refused only for want of a pass we know yet is
    a gossip candidate (a signed round with it, carrying its pass, decides)."""

    async def try_candidate(addr: tuple[str, int]) -> bool:
        admitted = await swarm.dht.admit([addr]) == 1
        if admitted:
            peers.members.know(*addr)
        elif swarm.refused().get(f"{addr[0]}:{addr[1]}") == "not_member":
            peers.members.propose([addr])
        return admitted

    def count(name: str) -> None:
        swarm.counters[name] = swarm.counters.get(name, 0) + 1

    # What it advertises and the candidates it holds show in `spore status`
    # beside where the DHT listens and why (`dht.listen.discovery`).
    listen = dict(swarm.settings.listen or {})
    swarm.settings = replace(swarm.settings, listen=listen)
    return LanDiscovery(swarm=swarm_id, host=host, port=port, try_candidate=try_candidate,
                        count=count, report=lambda status: listen.update(discovery=status))


async def _start_site(runner: web.AppRunner, cfg: Config) -> None:
    try:
        await web.TCPSite(runner, cfg.api_host, cfg.api_port, reuse_address=True).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SporeError(
                f"port {cfg.api_port} on {cfg.api_host} is already in use (another spore? "
                "check `spore status`); choose another with --port or SPORE_PORT") from exc
        raise SporeError(f"cannot listen on {cfg.api_host}:{cfg.api_port}: {exc}") from exc


def build_chain(cfg: Config) -> Chain | None:
    """The chain `cfg.generate` describes (providers in its order); None when
    generation is off. Missing parts make a provider "unavailable", never an error.
    (p2pnode.providers, p2pnode.embedded)"""
    gen = cfg.generate
    providers: list[Provider] = []
    for name in gen.providers:
        table = gen.provider(name)
        limits = Limits(first_token_s=table.first_token_s, deadline_s=table.deadline_s,
                        cooldown_s=table.cooldown_s)
        if name == EMBEDDED:
            providers.append(EmbeddedProvider(name=name, threads=gen.threads, limits=limits))
            continue
        missing = (f"the environment variable {table.api_key_env} (its api_key_env) is not set"
                   if table.api_key_env and not table.api_key else "")
        providers.append(OpenAIProvider(name=name, url=table.url, model=table.model,
                                        api_key=table.api_key, limits=limits,
                                        unavailable=missing))
    return Chain(providers) if providers else None


async def _serve_until_stopped(cfg: Config, spore: Spore, notifier: Notifier) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    status = await spore.status()
    log.info("spore %s serving %d memories on %s (state %s)", status["node_id"][:16],
             status["memories"], cfg.api_url, cfg.state_dir)
    notifier.send(ready="1", status=f"serving {status['memories']} memories on {cfg.api_url}")
    async with asyncio.TaskGroup() as services:
        tasks = [services.create_task(_watchdog(notifier, cfg.watchdog_usec)),
                 services.create_task(_republish(spore, cfg.republish_s)),
                 services.create_task(_keep_joined(spore)),
                 services.create_task(_keep_trust(spore)),
                 services.create_task(_keep_heap_trimmed())]
        if spore.peers is not None:
            tasks.append(services.create_task(_gossip(spore.peers)))
        await stop.wait()
        log.info("stopping: draining requests")
        for task in tasks:
            task.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


async def _republish(spore: Spore, every_s: float) -> None:
    """The author's duty: put its own records again, so replicas that died are
    replaced; then let the holder's store expire what nobody refreshes."""
    swarm = spore.swarm
    assert swarm is not None
    loop = asyncio.get_running_loop()
    last, had_peers = float("-inf"), False
    last_fault = float("-inf")
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            try:
                last, had_peers = await _republish_once(spore, swarm, every_s, last, had_peers)
            except StateError as exc:
                # A damaged dht.sqlite3 (or spore.sqlite3) page: the spore keeps
                # serving what it can and says so, once every few minutes.
                if loop.time() - last_fault > FAULT_LOG_S:
                    last_fault = loop.time()
                    log.error("republish and expiry paused: %s", exc)
            await asyncio.sleep(min(every_s, REPUBLISH_TICK_S))


async def _republish_once(spore: Spore, swarm: Swarm, every_s: float, last: float,
                          had_peers: bool) -> tuple[float, bool]:
    loop = asyncio.get_running_loop()
    has_peers = bool(swarm.dht.contacts())
    # Also at once when the first peers appear: what was taught while alone
    # reaches the swarm without waiting an interval.
    if has_peers and (loop.time() - last >= every_s or not had_peers):
        last = loop.time()
        records = await spore.own_records()
        items = [kv for rec in records for kv in swarm.values_for(rec)]
        items.extend(swarm.held_items())
        done = await swarm.dht.republish(items)
        log.debug("republished %d of %d values", done, len(items))
    swarm.expire()
    return last, has_peers


async def _keep_joined(spore: Spore) -> None:
    """Retry the DHT's bootstrap peers (and the live gossip peers) while the
    routing table is empty: spores started together at boot, or the founder
    last, still form one swarm."""
    swarm = spore.swarm
    assert swarm is not None
    with contextlib.suppress(asyncio.CancelledError):
        await swarm.keep_joined(lambda: _gossip_addresses(spore))


async def _keep_trust(spore: Spore) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await spore.keep_trust()


async def _keep_heap_trimmed(every_s: float = TRIM_EVERY_S) -> None:
    """Give the free memory of malloc's arenas back to the system now and
    then (agents.encoder.release_free_heap). Each worker thread has an arena
    of its own, and what a burst of work freed in one stays in the process
    otherwise: after a flood (scripts/bench/hostile.py) RSS stayed at 274 MB
    where 239 MB was in use (every 5 s: hostile.py 244-247 MB at most, against
    247-252 every 15 s). Off the loop: a trim walks every free chunk
    (~80 ms for 10,000 scattered ones), and Python's own objects do not live
    in malloc's arenas, so the loop seldom waits for the trim's locks."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(release_free_heap)


def _gossip_addresses(spore: Spore) -> list[tuple[str, int]]:
    if spore.peers is None:
        return []
    return [(m.host, m.port) for m in spore.peers.members.live()]


async def _gossip(peers: PeerService) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await peers.run()


async def _take_membership(members: Members, gossip: GossipStore) -> None:
    """Our pass in the store (peers learn it by gossip); in an open swarm that
    prices identities, the puzzle paid first, once (seconds, off the loop)."""
    members.load_own()
    if members.needs_ticket():
        started = time.monotonic()
        log.info("paying this open swarm's identity puzzle (%d bits), once",
                 members._dna().puzzle_bits)
        members.save_own(await asyncio.to_thread(members.solve_ticket))
        log.info("puzzle paid in %.1f s", time.monotonic() - started)
    if members.own is not None:
        gossip.offer({pass_key(members.own.member): members.own.wire})


async def _adopt_gossiped_dna(spore: Spore, gossip: GossipStore) -> None:
    """A DNA version that came by gossip but was not saved (a crash between the
    two) is taken up again at start, if it is a valid successor."""
    item = gossip.get(KIND_DNA)
    if item is None:
        return
    try:
        await spore.adopt_chain(dna_mod.decode_chain(item, spore.dna.swarm_id))
    except (SporeError, ValueError) as exc:
        log.warning("ignoring the gossiped DNA in the store: %s", exc)


async def _watchdog(notifier: Notifier, usec: int) -> None:
    if not usec:
        return
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            notifier.send(watchdog="1")
            await asyncio.sleep(usec / 2e6)
