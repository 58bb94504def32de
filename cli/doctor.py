"""`spore doctor`: what is wrong with this spore, and the fix to apply.

Each check says ok, warn, fail or skip, with the fix beside what failed:
the state directory (exists, writable, owner-only node key and API token,
free disk), the encoder (loads, embeds, its hash is the swarm DNA's), the
daemon and its ports (the API's and the DHT's: held by this spore, by
another process, or free), and, with a peer (`--peer HOST:PORT`, else one
the running daemon knows or the configuration names), whether that peer can
reach this spore back and how far apart the two clocks are. The reach-back
check is Petals' anchor: we ask the peer, in a request signed with this
spore's key, to ping our DHT at the port we claim; it tries only the address
our request came from, and answers signed, with its clock. Exit 1 if any
check fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from p2pnode.client import TOKEN_FILE, ApiError, Client, DaemonUnreachable
from p2pnode.config import Config, load_config, parse_peers
from p2pnode.errors import SporeError
from p2pnode.identity import KEY_FILE

__all__ = ["Check", "doctor_command", "run_checks"]

LOCK_FILE, PASS_FILE = "spore.lock", "member.pass"
DISK_FAIL, DISK_WARN = 50 << 20, 500 << 20  # free bytes below which the disk fails / warns
CLOCK_WARN_S, CLOCK_FAIL_S = 2.0, 10.0  # peers refuse requests 30 s off: fail well before
PEER_TIMEOUT_S = 10.0
Addr = tuple[str, int]


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail, skip
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# -- the state directory ------------------------------------------------------------------
def check_state(cfg: Config) -> list[Check]:
    d = cfg.state_dir
    if not d.is_dir():
        return [Check("state directory", "fail", f"{d} does not exist",
                      "spore init (or spore node run), or give the right --state-dir / "
                      "SPORE_STATE_DIR")]
    out = [_dir_check(d), _private_file(d / KEY_FILE, "node key", needed=True),
           _private_file(d / TOKEN_FILE, "API token", needed=False), _disk(d)]
    return out


def _dir_check(d: Path) -> Check:
    st = d.stat()
    mode, data = st.st_mode & 0o777, {"path": str(d), "mode": f"{st.st_mode & 0o777:o}"}
    if not os.access(d, os.W_OK | os.X_OK):
        return Check("state directory", "fail", f"{d} is not writable by this user",
                     f"run as the daemon's user, or: chown -R {os.getuid()} {d}", data)
    if mode & 0o077:  # the memories' databases in it are as open as it is
        return Check("state directory", "warn", f"{d} is open to other users (mode {mode:o}): "
                     "they may read the memories kept in it", f"chmod 700 {d}", data)
    return Check("state directory", "ok", f"{d} (mode {mode:o})", data=data)


def _private_file(path: Path, what: str, *, needed: bool) -> Check:
    try:
        st = path.lstat()
    except FileNotFoundError:
        if needed:
            return Check(what, "fail", f"there is no {path}", "spore init (or spore node run)")
        return Check(what, "ok", f"no {path} yet (the daemon writes it at start)")
    mode, data = st.st_mode & 0o777, {"path": str(path), "mode": f"{st.st_mode & 0o777:o}"}
    if not stat.S_ISREG(st.st_mode):
        return Check(what, "fail", f"{path} is not a regular file", "restore it from a "
                     "backup (a link or a device is never followed)", data)
    if mode & 0o077:
        return Check(what, "fail", f"{path} is readable or writable by others (mode {mode:o})",
                     f"chmod 600 {path}", data)
    if st.st_uid != os.geteuid():
        return Check(what, "warn", f"{path} belongs to uid {st.st_uid}, not this user",
                     "run spore as the daemon's user", data)
    return Check(what, "ok", f"{path} (mode {mode:o})", data=data)


def _disk(d: Path) -> Check:
    free = shutil.disk_usage(d).free
    data, fix = {"free_bytes": free}, (f"free space on the filesystem of {d}, or move the "
                                       "state directory (SPORE_STATE_DIR)")
    text = f"{free / (1 << 20):,.0f} MB free"
    if free < DISK_FAIL:
        return Check("disk", "fail", text, fix, data)
    if free < DISK_WARN:
        return Check("disk", "warn", text, fix, data)
    return Check("disk", "ok", text, data=data)


# -- the encoder --------------------------------------------------------------------------
def check_encoder(cfg: Config) -> Check:
    from p2pnode import dna as dna_mod
    from p2pnode.daemon import encoder_health

    try:
        sha256, dim = encoder_health(cfg.state_dir)
    except SporeError as exc:
        return Check("encoder", "fail", str(exc), "reinstall sporemind (pip install "
                     "--force-reinstall sporemind, or scripts/setup); a state directory of "
                     "another swarm's encoder needs that encoder")
    which = "the swarm DNA's" if dna_mod.load(cfg.state_dir) is not None else "no DNA yet"
    return Check("encoder", "ok", f"loads and embeds; sha256 {sha256[:16]}… ({which})",
                 data={"sha256": sha256, "dim": dim})


# -- the daemon and its ports -------------------------------------------------------------
@dataclass
class Daemon:
    """What the running daemon says of itself (None: no daemon answers as this spore)."""

    status: dict[str, Any] | None
    pid: str | None  # of the daemon holding the state directory's lock
    other: str = ""  # the node id a spore of another state directory answered with


def find_daemon(cfg: Config) -> Daemon:
    pid = _lock_holder(cfg.state_dir / LOCK_FILE)
    try:
        status = Client(cfg, timeout=5.0).get("/v1/status")
    except (DaemonUnreachable, ApiError):
        return Daemon(None, pid)
    mine = _own_node_id(cfg)
    if mine is not None and status.get("node_id") != mine:
        return Daemon(None, pid, other=str(status.get("node_id", "?")))
    return Daemon(status, pid)


def check_daemon(cfg: Config, daemon: Daemon) -> Check:
    start = "spore node run (or: systemctl start sporemind)"
    if daemon.status is not None:
        return Check("daemon", "ok", f"running (pid {daemon.pid or '?'}), API on {cfg.api_url}",
                     data={"pid": daemon.pid, "node_id": daemon.status.get("node_id")})
    if daemon.pid is not None:
        return Check("daemon", "fail", f"a daemon (pid {daemon.pid}) holds {cfg.state_dir}, "
                     f"but its API does not answer at {cfg.api_url}",
                     "give the port it was started with (--port, SPORE_PORT), or read its "
                     "log (journalctl -u sporemind): it may still be starting", {"pid": daemon.pid})
    return Check("daemon", "fail", f"no spore daemon runs for {cfg.state_dir}", start)


def check_api_port(cfg: Config, daemon: Daemon) -> Check:
    where = f"tcp {cfg.api_host}:{cfg.api_port}"
    if daemon.status is not None:
        return Check("API port", "ok", f"{where}, held by this spore")
    fix = (f"stop it, or give this spore another port: --port, SPORE_PORT or [api] port "
           f"in {cfg.config_dir / 'config.toml'}")
    if daemon.other:
        return Check("API port", "fail", f"{where} answers as another spore (node "
                     f"{daemon.other[:16]}…, another state directory)", fix)
    if _busy(socket.SOCK_STREAM, cfg.api_host, cfg.api_port):
        return Check("API port", "fail", f"{where} is in use by another process"
                     f"{_holder(cfg.api_port, 'tcp')}", fix)
    return Check("API port", "ok", f"{where} is free (the daemon takes it at start)")


def check_dht_port(cfg: Config, daemon: Daemon) -> Check:
    port = cfg.dht_port
    if daemon.status is not None:
        dht = daemon.status.get("dht") or {}
        listen = dht.get("listen") or {}
        where = f"udp/tcp {dht.get('dht_address', '?')}"
        if not str(dht.get("dht_address", "")).endswith(f":{port}"):
            return Check("DHT port", "warn", f"{where}, held by this spore, but the "
                         f"configuration now says port {port}", "restart the daemon to "
                         "take the new setting (or set the port back)", {"listen": listen})
        if listen.get("loopback_only"):
            return Check("DHT port", "warn", f"{where}: this spore listens on loopback only, "
                         "other devices cannot reach it", "to let other devices in: "
                         "[dht] host = \"0.0.0.0\" (or SPORE_DHT_HOST, or [dht] discover = "
                         "true), then restart; or join a swarm", {"listen": listen})
        return Check("DHT port", "ok", f"{where}, held by this spore ({listen.get('why', '')})",
                     data={"listen": listen})
    host = cfg.dht_host or "0.0.0.0"
    fix = ("stop it, or give this spore another port: --dht-port, SPORE_DHT_PORT or "
           "[dht] port (and tell its peers)")
    for kind, proto in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
        if _busy(kind, host, port):
            return Check("DHT port", "fail", f"{proto} {host}:{port} is in use by another "
                         f"process{_holder(port, proto)}", fix)
    return Check("DHT port", "ok", f"udp/tcp {host}:{port} is free (the daemon takes it)")


def _busy(kind: int, host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _holder(port: int, proto: str) -> str:
    """ " (pid N, name)" of the process that holds a port, when /proc says."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and int(cols[1].rsplit(":", 1)[1], 16) == port and (
                        proto == "udp" or cols[3] == "0A"):
                    inodes.add(f"socket:[{cols[9]}]")
    for pid in _pids() if inodes else ():
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                if os.readlink(fd.path) in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f" (pid {pid}, {name if name.isprintable() else '?'})"
    return ""


def _pids() -> Iterator[str]:
    with contextlib.suppress(OSError):
        yield from (e.name for e in os.scandir("/proc") if e.name.isdigit())


def _lock_holder(path: Path) -> str | None:
    """The pid of the daemon holding the state directory's lock, read from
    /proc/locks (never by taking the lock: a daemon starting that moment
    would find it held and refuse to start), else None."""
    try:
        st = path.lstat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    file = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        cols = line.split()
        if len(cols) > 5 and cols[1] == "FLOCK" and cols[5] == file:
            return cols[4] if cols[4].isdigit() else "?"
    return None


def _own_node_id(cfg: Config) -> str | None:
    identity = _identity(cfg)
    return None if identity is None else identity.node_id.hex()


def _identity(cfg: Config) -> Any:
    from p2pnode.identity import load_or_create

    if not (cfg.state_dir / KEY_FILE).exists():
        return None
    with contextlib.suppress(SporeError):
        return load_or_create(cfg.state_dir)[0]
    return None


# -- a peer: reach back, and the clock ----------------------------------------------------
def pick_peer(cfg: Config, daemon: Daemon, given: str | None) -> Addr | None:
    if given:
        return parse_peers([given], "--peer")[0]
    if daemon.status is not None:
        with contextlib.suppress(SporeError):
            listed = Client(cfg, timeout=5.0).get("/v1/peers")
            alive = [(m["host"], int(m["port"])) for m in listed.get("gossip", [])
                     if m.get("state") == "alive"]
            contacts = [parse_peers([p["address"]], "peer")[0] for p in listed.get("peers", [])]
            if alive or contacts:
                return (alive or contacts)[0]
    return cfg.peers[0] if cfg.peers else None


def check_peer(cfg: Config, peer: Addr | None) -> list[Check]:
    if peer is None:
        why = "no peer known (give --peer HOST:PORT, a spore of this swarm)"
        return [Check("reach back", "skip", why), Check("clock", "skip", why)]
    where = f"{peer[0]}:{peer[1]}"
    try:
        t0, answer, t1 = _ask_reach(cfg, peer)
    except _PeerProblem as exc:
        clock = (Check("clock", "fail", str(exc), exc.fix) if exc.reason == "stale"
                 else Check("clock", "skip", f"no answer from {where} to compare with"))
        return [Check("reach back", exc.status, str(exc), exc.fix), clock]
    return [_reach_result(cfg, where, answer), _clock(where, answer["now_ms"], t0, t1)]


class _PeerProblem(Exception):
    def __init__(self, status: str, detail: str, fix: str, reason: str = "") -> None:
        super().__init__(detail)
        self.status, self.fix, self.reason = status, fix, reason


def _ask_reach(cfg: Config, peer: Addr) -> tuple[float, dict[str, Any], float]:
    from p2pnode import dna as dna_mod
    from p2pnode.peerauth import sign_request, verify_reply
    from p2pnode.peers import MEMBER_HEADER, PATH, decode_reach_reply, encode_reach_request

    identity, dna = _identity(cfg), dna_mod.load(cfg.state_dir)
    if identity is None or dna is None:
        raise _PeerProblem("fail", "this spore has no usable identity or DNA to sign with",
                           "see the node key check above; spore init")
    body, nonce, t0 = encode_reach_request(cfg.dht_port), os.urandom(16), time.time()
    headers = sign_request(identity, dna.swarm_id, "POST", PATH + "reach", body,
                           int(t0 * 1000), nonce)
    with contextlib.suppress(OSError):
        headers[MEMBER_HEADER] = (cfg.state_dir / PASS_FILE).read_bytes().hex()
    host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    req = urllib.request.Request(f"http://{host}:{peer[1]}{PATH}reach", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=PEER_TIMEOUT_S) as resp:
            reply, got = resp.read(4096), resp.headers
    except urllib.error.HTTPError as exc:
        raise _refusal(peer, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _PeerProblem("fail", f"cannot reach the peer {peer[0]}:{peer[1]} "
                           f"({getattr(exc, 'reason', exc)})", "check the address (the peer's "
                           "DHT port, on TCP), that its spore runs, and the firewalls between"
                           ) from None
    t1 = time.time()
    try:
        verify_reply(got, nonce, reply)
        return t0, decode_reach_reply(reply), t1
    except (SporeError, ValueError) as exc:
        raise _PeerProblem("fail", f"the peer's answer did not verify: {exc}",
                           "is it a spore of this swarm, of this version?") from None


def _refusal(peer: Addr, exc: urllib.error.HTTPError) -> _PeerProblem:
    try:
        why = json.loads(exc.read(4096))
        reason, detail = str(why.get("reason", ""))[:40], str(why.get("error", ""))[:200]
    except (ValueError, AttributeError, OSError):
        reason, detail = "", ""
    where = f"{peer[0]}:{peer[1]}"
    if exc.code == 404:
        return _PeerProblem("warn", f"the peer {where} has no reach-back check (an older "
                            "spore)", "ask it with a peer that runs this version")
    if exc.code in (429, 503):
        return _PeerProblem("warn", f"the peer {where} is busy ({reason or exc.code})",
                            "try again in a minute")
    if reason == "stale":
        return _PeerProblem("fail", f"the peer {where} refused our request as out of its "
                            f"clock window: {detail}", "set this device's clock right: "
                            "timedatectl set-ntp true (or install chrony)", "stale")
    fixes = {"another_swarm": "that peer is of another swarm: give a peer of this one",
             "not_member": "the peer does not know this spore as a member yet: check "
                           "`spore members` there, or join with an invitation"}
    return _PeerProblem("fail", f"the peer {where} refused us ({reason or exc.code}): {detail}",
                        fixes.get(reason, "see `spore peers` on the peer for why"), reason)


def _reach_result(cfg: Config, where: str, answer: dict[str, Any]) -> Check:
    us = f"{answer['address']}:{answer['port']}"
    data = {"peer": where, "address": us, "udp": answer["udp"], "tcp": answer["tcp"]}
    fix = (f"make sure this spore runs (spore node run) and listens beyond loopback "
           f"([dht] host = \"0.0.0.0\"); open UDP and TCP {cfg.dht_port} in this device's "
           f"firewall (e.g. ufw allow {cfg.dht_port}); behind NAT, forward that port to this "
           "device, or set [dht] advertise to the address peers reach")
    if answer["udp"] == "other_node":
        return Check("reach back", "fail", f"the peer {where} reached {us}, but another spore "
                     "answers there", "check the port forwarding on the router: it leads to "
                     "another device", data)
    if answer["udp"] != "ok":
        return Check("reach back", "fail", f"the peer {where} cannot reach this spore's DHT at "
                     f"udp {us}", fix, data)
    if not answer["tcp"]:
        return Check("reach back", "warn", f"the peer {where} reached udp {us} but not tcp "
                     "(gossip)", f"open TCP {cfg.dht_port} too", data)
    return Check("reach back", "ok", f"the peer {where} reached this spore at {us} "
                 "(DHT on UDP, gossip on TCP)", data=data)


def _clock(where: str, peer_ms: int, t0: float, t1: float) -> Check:
    """The peer stamped its clock when our request arrived, between our t0
    and t1: the offset lies in [peer - t1, peer - t0]; judged by its smallest
    possible size, told as peer - t0 (off by the one-way latency)."""
    hi, lo = peer_ms / 1000 - t0, peer_ms / 1000 - t1
    off = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    data = {"offset_s": round(hi, 3), "range_s": [round(lo, 3), round(hi, 3)]}
    text = f"{hi:+.2f} s from the peer {where}'s signed clock"
    fix = "set this device's clock right: timedatectl set-ntp true (or install chrony)"
    if off > CLOCK_FAIL_S:
        return Check("clock", "fail", text + "; peers refuse requests 30 s off", fix, data)
    if off > CLOCK_WARN_S:
        return Check("clock", "warn", text, fix, data)
    return Check("clock", "ok", text, data=data)


# -- the command --------------------------------------------------------------------------
def run_checks(cfg: Config, peer: str | None = None, *,
               encoder: Callable[[Config], Check] = check_encoder) -> list[Check]:
    checks = check_state(cfg)
    checks.append(encoder(cfg))
    daemon = find_daemon(cfg)
    checks += [check_daemon(cfg, daemon), check_api_port(cfg, daemon),
               check_dht_port(cfg, daemon)]
    checks += check_peer(cfg, pick_peer(cfg, daemon, peer))
    return checks


MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def lines(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    out = []
    for c in checks:
        out.append(f"{MARK[c.status]:4}  {c.name:{width}}  {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            out.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
    return "\n".join(out)


@click.command("doctor")
@click.option("--peer", metavar="HOST:PORT",
              help="A spore of this swarm (its DHT port) to check reachability and the "
                   "clock with (default: one the daemon knows, or [dht] peers).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def doctor_command(ctx: click.Context, peer: str | None, as_json: bool) -> None:
    """Check this spore: state directory, encoder, daemon and ports, clock, and
    whether a peer can reach it back; each problem with its fix. Exit 1 if any fails."""
    if peer is not None:
        try:
            parse_peers([peer], "--peer")
        except SporeError as exc:
            raise click.BadParameter(str(exc), param_hint="--peer") from None
    cfg = load_config(os.environ, dict(ctx.find_root().obj or {}))
    checks = run_checks(cfg, peer)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]},
                              indent=2, ensure_ascii=False))
    else:
        click.echo(lines(checks))
    ctx.exit(1 if failed else 0)
