"""Shared fixtures: free ports, real daemon processes, the real encoder."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from p2pnode.identity import Identity

SPORE = str(Path(sys.executable).parent / "spore")
START_DEADLINE_S = 60.0


def free_port() -> int:
    """A free TCP port below the ephemeral range (see free_udp_port)."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll `condition` until true or the deadline passes (never a bare sleep)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


def free_udp_port() -> int:
    """A port free for UDP (the DHT) and for TCP (peer HTTP, on the same number),
    below the ephemeral range, so no outgoing connection takes it meanwhile."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class Daemon:
    state_dir: Path
    config_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path("/dev/null"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, input: str | None = None, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([SPORE, *args], env=self.env, capture_output=True, text=True,
                             input=input, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"spore {' '.join(args)} -> {res.returncode}\n{res.stderr}")
        return res

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json", check=True)
        return json.loads(res.stdout)

    def http(self, method: str, path: str, body: Any = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        token = self.state_dir / "api.token"
        if token.exists():  # DNA changes need it even on loopback
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def json(self, method: str, path: str, body: Any = None) -> Any:
        """An API call that must succeed (200 or 201): its JSON."""
        code, out = self.http(method, path, body)
        assert code in (200, 201), (method, path, code, out)
        return out

    @property
    def dht(self) -> str:
        """host:port of its DHT (UDP) and peer HTTP (TCP)."""
        return f"127.0.0.1:{self.env['SPORE_DHT_PORT']}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, *extra: str, wait: bool = True) -> subprocess.Popen[bytes]:
        for attempt in range(3):
            self.log = self.state_dir.parent / f"daemon-{self.port}.log"
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([SPORE, "node", "run", *extra], env=self.env,
                                             stdout=log, stderr=log)
            if not wait:
                return self.proc
            wait_for(lambda: self.healthy() or self.proc.poll() is not None,  # type: ignore[union-attr]
                     START_DEADLINE_S, "the daemon to serve /healthz")
            if self.proc.poll() is None:
                return self.proc
            said = self.log.read_text()
            # Ports are picked free, then bound by the daemon: another test's
            # process may take one in between (a CI run lost a module so once).
            if "already in use" not in said or attempt == 2:
                raise AssertionError(said)
            self.port = free_port()
            self.env.update(SPORE_PORT=str(self.port), SPORE_DHT_PORT=str(free_udp_port()))
        raise AssertionError("unreachable")

    def stop_wait(self) -> int:
        """Wait for a daemon that is expected to exit by itself."""
        assert self.proc is not None
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code


def make_daemon(tmp: Path) -> Daemon:
    state, conf = tmp / "state", tmp / "config"
    conf.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPORE_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(SPORE_STATE_DIR=str(state), SPORE_CONFIG_DIR=str(conf), SPORE_PORT=str(port),
               SPORE_DHT_HOST="127.0.0.1", SPORE_DHT_PORT=str(free_udp_port()),
               SPORE_GENERATE="off")  # answers from memory; tests that generate turn it on
    return Daemon(state, conf, port, env)


def invite_into(inviter: Daemon, joiner: Daemon, *, may_invite: bool = False) -> str:
    """`spore invite` on a running member, `spore init --join CODE` for the
    joiner (not started): the way people bring a device into an invite swarm."""
    code = str(inviter.json("POST", "/v1/invites", {"may_invite": may_invite})["code"])
    joiner.cli("init", "--join", code, check=True)
    return code


def found_open(d: Daemon) -> None:
    """Found an open swarm with free identities (as swarms from before
    membership): every key holding the DNA file is a member. The setting of
    the hostile-member tests: the attacker is a member, keys cost nothing."""
    d.cli("init", "--swarm", "open-test", "--open", "--puzzle-bits", "0", check=True)


def pass_header(founder: Daemon, who: Identity) -> dict[str, str]:
    """The header that makes `who` a member of `founder`'s invite swarm: a
    pass certified by the founder's own key (read from its state directory)."""
    from p2pnode import dna as dna_mod
    from p2pnode import membership as ms
    from p2pnode.identity import load_or_create
    from p2pnode.peers import MEMBER_HEADER

    me, _ = load_or_create(founder.state_dir)
    dna = dna_mod.load(founder.state_dir)
    assert dna is not None
    cert = ms.issue(me, swarm=dna.swarm_id, member=who.public_key, may_invite=False,
                    issued_ms=int(time.time() * 1000))
    return {MEMBER_HEADER: ms.invited_pass(None, cert, who).wire.hex()}


def start_swarm(spores: list[Daemon], *, open_swarm: bool = False) -> None:
    """Start the first spore (it founds an invite swarm), then the others,
    each invited by it and joining through it; returns when all serve. With
    `open_swarm`: an open swarm with free identities, its DNA file copied."""
    if open_swarm:
        found_open(spores[0])
    spores[0].start()
    for d in spores[1:]:
        if open_swarm:
            d.state_dir.mkdir(parents=True, exist_ok=True)
            (d.state_dir / "dna.bin").write_bytes((spores[0].state_dir / "dna.bin").read_bytes())
        else:
            invite_into(spores[0], d)
        d.start("--peer", spores[0].dht, wait=False)
    for d in spores[1:]:
        wait_for(d.healthy, 120, f"spore on {d.port}")


def stop_all(spores: list[Daemon]) -> None:
    for d in spores:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One started daemon shared by a module's tests."""
    d = make_daemon(tmp_path_factory.mktemp("spore"))
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
