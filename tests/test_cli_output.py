"""What `spore` prints for people, against a real daemon: aligned text with
the figures that matter, never a Python or JSON dump (`--json` is for
programs, and stays complete); shell completion; and where a spore's DHT and
peer port listen, and why: loopback until a swarm exists."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.output import fields, flat
from p2pnode.config import dht_listen, load_config
from tests.conftest import SPORE, Daemon, found_open, free_udp_port, make_daemon

REPRS = ("{'", "[{", "['", "': ", "{\"", "\": ", "None", "True", "False")
TEXT = "The spore metrics are served on /metrics for Prometheus."


def readable(out: str) -> str:
    """`out`, checked to hold no Python or JSON repr."""
    found = [r for r in REPRS if r in out]
    assert not found, f"repr {found} in:\n{out}"
    return out


def alone(tmp: Path) -> Daemon:
    """A daemon as a person starts it: no [dht] host, no peers."""
    d = make_daemon(tmp)
    d.env.pop("SPORE_DHT_HOST")
    return d


@dataclass
class Lone:
    d: Daemon
    memory: str
    answer: str


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lone]:
    d = alone(tmp_path_factory.mktemp("lone"))
    d.start()
    memory = d.cli_json("teach", TEXT)["id"]
    answer = d.cli_json("ask", "where are the metrics served?")["answer_id"]
    yield Lone(d, memory, answer)
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


Case = Callable[[Lone, Path], tuple[list[str], list[str]]]
# command -> (its arguments, figures its human output must show)
CASES: dict[str, Case] = {
    "status": lambda s, _: (["status"], ["node ", s.d.cli_json("status")["node_id"],
                                         "memories", "held", "listening", "127.0.0.1:",
                                         "this device only", "alone"]),
    "peers": lambda s, _: (["peers"], ["no DHT contacts"]),
    "agents": lambda s, _: (["agents"], ["agent", "fitness", "here"]),
    "members": lambda s, _: (["members"], ["founder", "1 known"]),
    "memories": lambda s, _: (["memories"], [s.memory[:16], "taught"]),
    "memory": lambda s, _: (["memories", s.memory], [s.memory, TEXT, "votes", "origin"]),
    "dht locate": lambda s, _: (["dht", "locate", s.memory], ["held by nobody"]),
    "dna show": lambda s, _: (["dna", "show"], ["swarm id", "founders", "3 replicas",
                                                "division threshold"]),
    "ask": lambda s, _: (["ask", "where are the metrics served?"], [TEXT, "confidence",
                                                                    "answer id"]),
    "rate": lambda s, _: (["rate", s.answer, "up"], ["rated up", s.memory[:16]]),
    "teach": lambda s, _: (["teach", "Completion scripts come from click."], ["learned: "]),
    "ingest": lambda s, tmp: (["ingest", str(_notes(tmp))], ["ingested 1 chunks",
                                                            "from 1 files"]),
    "invite": lambda s, _: (["invite"], ["spore1-", "spore init --join", "one use"]),
    "revoke": lambda s, _: (["revoke", "ab" * 32, "--why", "lost it"],
                            ["revoked abababab", "lost it"]),
    "dna export": lambda s, tmp: (["dna", "export", str(tmp / "swarm.dna")],
                                  ["wrote the DNA", "bytes"]),
}


def _notes(tmp: Path) -> Path:
    (tmp / "notes.md").write_text("# Scrapes\n\nA scrape reads the counters of the spore.\n")
    return tmp / "notes.md"


@pytest.mark.parametrize("name", list(CASES))
def test_human_output_is_text_with_its_figures(lone: Lone, tmp_path: Path, name: str) -> None:
    args, figures = CASES[name](lone, tmp_path)
    out = readable(lone.d.cli(*args, check=True).stdout)
    missing = [f for f in figures if f not in out]
    assert not missing, f"{missing} not in `spore {' '.join(args)}`:\n{out}"


def test_json_stays_complete(lone: Lone) -> None:
    status = lone.d.cli_json("status")
    assert {"node_id", "counters", "dht", "gossip", "members", "agents", "api",
            "calibration", "learner"} <= set(status)
    listen = status["dht"]["listen"]
    assert listen["reason"] == "alone" and listen["loopback_only"] is True
    assert status["dht"]["dht_address"] == f"127.0.0.1:{lone.d.env['SPORE_DHT_PORT']}"
    assert lone.d.cli_json("dna", "show")["founders"]
    assert lone.d.cli_json("memories", lone.memory)["text"] == TEXT


def test_init_says_what_it_founded_in_words(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    out = readable(d.cli("init", "--swarm", "kitchen", check=True).stdout)
    assert "founded swarm kitchen" in out and "membership invite" in out


# -- where the DHT and peer port listen ----------------------------------------------------
def test_a_lone_spore_listens_on_loopback_and_an_invitation_says_so(lone: Lone) -> None:
    res = lone.d.cli("invite", check=True)
    assert "spore1-" in res.stdout
    assert "works only here" in res.stderr and 'host = "0.0.0.0"' in res.stderr
    status = lone.d.cli("status", check=True).stdout
    line = next(x for x in status.splitlines() if x.startswith("listening"))
    assert "127.0.0.1" in line and "this device only" in line and "[dht] host" in line


def test_peers_open_the_port(daemon: Daemon) -> None:
    daemon.env.pop("SPORE_DHT_HOST")
    daemon.env["SPORE_PEERS"] = f"127.0.0.1:{free_udp_port()}"  # nobody there: alone
    daemon.start()
    dht = daemon.cli_json("status")["dht"]
    assert dht["dht_address"].startswith("0.0.0.0:") and dht["listen"]["reason"] == "peers"
    assert not dht["listen"]["loopback_only"]
    out = readable(daemon.cli("status", check=True).stdout)
    assert "open to the network" in out and "peer(s) to join" in out
    daemon.stop()


def test_a_configured_host_is_kept_and_named(daemon: Daemon) -> None:
    daemon.start()  # make_daemon sets SPORE_DHT_HOST=127.0.0.1
    listen = daemon.cli_json("status")["dht"]["listen"]
    assert listen["reason"] == "configured" and "SPORE_DHT_HOST" in listen["why"]
    daemon.stop()


def test_a_spore_that_joined_a_swarm_opens_the_port(tmp_path: Path) -> None:
    founder, joiner = make_daemon(tmp_path / "f"), alone(tmp_path / "j")
    found_open(founder)  # not started: an open swarm's DNA file is all a joiner needs
    founder.cli("dna", "export", str(tmp_path / "swarm.dna"), check=True)
    out = readable(joiner.cli("init", "--join", str(tmp_path / "swarm.dna"), check=True).stdout)
    assert "joined swarm open-test" in out
    joiner.start()
    try:
        dht = joiner.cli_json("status")["dht"]
        assert dht["listen"]["reason"] == "joined" and dht["dht_address"].startswith("0.0.0.0:")
    finally:
        joiner.stop()


@pytest.mark.parametrize(("host", "peers", "joined", "members", "reason", "bound"), [
    ("", "", False, 1, "alone", "127.0.0.1"),
    ("", "", False, 2, "members", "0.0.0.0"),
    ("", "", True, 2, "joined", "0.0.0.0"),
    ("", "10.0.0.2:7151", False, 1, "peers", "0.0.0.0"),
    ("192.168.1.5", "", False, 1, "configured", "192.168.1.5"),
    ("127.0.0.1", "10.0.0.2:7151", True, 5, "configured", "127.0.0.1"),
])
def test_where_the_dht_listens(tmp_path: Path, host: str, peers: str, joined: bool,
                               members: int, reason: str, bound: str) -> None:
    env = {"SPORE_CONFIG_DIR": str(tmp_path), "SPORE_STATE_DIR": str(tmp_path / "s"),
           **({"SPORE_DHT_HOST": host} if host else {}), **({"SPORE_PEERS": peers} if peers
                                                           else {})}
    chosen = dht_listen(load_config(env), joined=joined, members=members)
    assert (chosen.reason, chosen.host) == (reason, bound)
    assert chosen.loopback_only == (bound == "127.0.0.1") and chosen.why


def test_a_dht_host_in_config_toml_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[dht]\nhost = "0.0.0.0"\n')
    cfg = load_config({"SPORE_CONFIG_DIR": str(tmp_path), "SPORE_STATE_DIR": str(tmp_path)})
    assert str(tmp_path / "config.toml") in dht_listen(cfg, joined=False, members=1).why


# -- completion ----------------------------------------------------------------------------
@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"),
                                               ("zsh", "compdef"), ("fish", "complete")])
def test_completion_prints_the_script(shell: str, marker: str) -> None:
    out = subprocess.run([SPORE, "completion", shell], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert "_SPORE_COMPLETE" in out and marker in out


def test_the_completion_completes() -> None:
    """What the bash script asks the `spore` command, answered."""
    res = subprocess.run([SPORE], capture_output=True, text=True, timeout=60, env={
        "_SPORE_COMPLETE": "bash_complete", "COMP_WORDS": "spore sta", "COMP_CWORD": "1",
        "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.splitlines() == ["plain,status"], res


# -- the pure helpers ----------------------------------------------------------------------
def test_flat_spells_nested_values_in_words() -> None:
    text = flat({"counters": {"rounds_for_news": 3}, "peers": ["a:1", "b:2"], "x": None,
                 "ok": True, "empty": {}, "ratio": 0.25, "deep": [{"k": {"j": 1}}]})
    assert readable(text) == ("counters (rounds for news 3), peers a:1, b:2, x -, ok yes, "
                              "empty none, ratio 0.25, deep k (j 1)")
    assert json.loads(json.dumps(text)) == text


def test_fields_align_values_and_their_later_lines() -> None:
    assert fields([("a", "1"), ("longer", "x\ny")]) == "a       1\nlonger  x\n        y"
