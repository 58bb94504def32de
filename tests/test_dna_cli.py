"""`spore init --swarm/--join` and `spore dna export/update` as real processes
(no daemon needed, except the one `dna update` finds missing)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from cli.join import with_peers
from p2pnode.errors import ConfigError
from tests.conftest import SPORE, Daemon, make_daemon


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    """A spore (not running) that founded swarm alpha."""
    spore = make_daemon(tmp_path_factory.mktemp("alpha"))
    out = spore.cli_json("init", "--swarm", "alpha")
    assert out["founded"] and out["version"] == 1 and out["swarm_id"] == out["dna_hash"]
    return spore


def _export(spore: Daemon, path: Path) -> bytes:
    res = spore.cli("dna", "export", str(path))
    assert res.returncode == 0, res.stderr
    return path.read_bytes()


def test_export_writes_the_signed_dna_to_a_file_or_a_pipe(alpha: Daemon, tmp_path: Path) -> None:
    written = _export(alpha, tmp_path / "alpha.dna")
    assert written == (alpha.state_dir / "dna.bin").read_bytes()
    for args in (["dna", "export"], ["dna", "export", "-"]):
        piped = subprocess.run([SPORE, *args], env=alpha.env, capture_output=True, timeout=60)
        assert piped.returncode == 0 and piped.stdout == written


def test_export_refuses_a_terminal(alpha: Daemon) -> None:
    leader, follower = os.openpty()
    try:
        res = subprocess.run([SPORE, "dna", "export"], env=alpha.env, stdout=follower,
                             stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert res.returncode == 2 and b"binary" in res.stderr


def test_join_adopts_the_swarm_and_records_the_peers(alpha: Daemon, tmp_path: Path) -> None:
    dna_file = tmp_path / "alpha.dna"
    _export(alpha, dna_file)
    beta = make_daemon(tmp_path / "b")
    (beta.config_dir / "config.toml").write_text("# mine\n[api]\nport = 7777\n")
    joined = beta.cli_json("init", "--join", str(dna_file), "--peer", "127.0.0.1:7999")
    shown = alpha.cli_json("dna", "show")
    assert joined["swarm_id"] == shown["swarm_id"] and joined["dna_hash"] == shown["hash"]
    assert joined["adopted"] and not joined["founded"] and joined["version"] == 1
    assert (beta.state_dir / "node_identity.key").exists()
    assert beta.cli_json("dna", "show")["swarm_id"] == shown["swarm_id"]
    conf = (beta.config_dir / "config.toml").read_text()
    assert conf.startswith("# mine\n[api]\nport = 7777\n")
    assert tomllib.loads(conf)["dht"]["peers"] == ["127.0.0.1:7999"]

    again = beta.cli_json("init", "--join", str(dna_file), "--peer", "[::1]:7998")
    assert not again["adopted"] and again["dna_hash"] == shown["hash"]
    conf_data = tomllib.loads((beta.config_dir / "config.toml").read_text())
    assert conf_data["dht"]["peers"] == ["127.0.0.1:7999", "[::1]:7998"]
    assert conf_data["api"]["port"] == 7777


def test_join_from_standard_input(alpha: Daemon, tmp_path: Path) -> None:
    wire = (alpha.state_dir / "dna.bin").read_bytes()
    gamma = make_daemon(tmp_path / "g")
    res = subprocess.run([SPORE, "init", "--join", "-"], env=gamma.env, input=wire,
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (gamma.state_dir / "dna.bin").read_bytes() == wire
    assert not (gamma.config_dir / "config.toml").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"\x93\xc4\x03abc\xc4\x01x\xc4\x01y", "is not a signed swarm DNA"),
    (b"not msgpack at all, just words", "is not a signed swarm DNA"),
    (None, "cannot read"),
])
def test_join_with_a_file_that_is_no_dna_is_a_usage_error(
        tmp_path: Path, content: bytes | None, message: str) -> None:
    bad = tmp_path / "bad.dna"
    if content is not None:
        bad.write_bytes(content)
    spore = make_daemon(tmp_path / "s")
    res = spore.cli("init", "--join", str(bad), "--peer", "127.0.0.1:7999")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and str(bad) in res.stderr
    assert not (spore.state_dir / "dna.bin").exists()
    assert not (spore.config_dir / "config.toml").exists()


def test_a_forged_dna_is_refused(alpha: Daemon, tmp_path: Path) -> None:
    wire = bytearray((alpha.state_dir / "dna.bin").read_bytes())
    wire[-1] ^= 1  # the signature's last byte
    forged = tmp_path / "forged.dna"
    forged.write_bytes(bytes(wire))
    res = make_daemon(tmp_path / "s").cli("init", "--join", str(forged))
    assert res.returncode == 2 and "is not a signed swarm DNA: bad" in res.stderr


def test_joining_another_swarm_into_a_founded_state_dir_is_refused(
        alpha: Daemon, tmp_path: Path) -> None:
    other = make_daemon(tmp_path / "o")
    other.cli_json("init", "--swarm", "other")
    other_file = tmp_path / "other.dna"
    _export(other, other_file)
    before = (alpha.state_dir / "dna.bin").read_bytes()
    res = alpha.cli("init", "--join", str(other_file), "--peer", "127.0.0.1:7999")
    assert res.returncode == 1
    assert "already belongs to swarm alpha" in res.stderr and "--state-dir" in res.stderr
    assert (alpha.state_dir / "dna.bin").read_bytes() == before
    assert not (alpha.config_dir / "config.toml").exists()


@pytest.mark.parametrize("args", [
    ["init", "--swarm", "x", "--join", "f.dna"],
    ["init", "--swarm", "x", "--peer", "127.0.0.1:7999"],
    ["init", "--join", "f.dna", "--peer", "nohost"],
    ["dna", "update"],
    ["dna", "update", "--set", "novalue"],
    ["init", "--open", "--join", "f.dna"],
    ["init", "--join", "spore1-notacode"],
])
def test_usage_errors(tmp_path: Path, args: list[str]) -> None:
    spore = make_daemon(tmp_path)
    res = spore.cli(*args)
    assert res.returncode == 2, res.stderr
    assert not (spore.state_dir / "dna.bin").exists()


def test_a_new_swarm_is_invite_only_unless_open(tmp_path: Path) -> None:
    invite = make_daemon(tmp_path / "i").cli_json("init", "--swarm", "home")
    opened = make_daemon(tmp_path / "o").cli_json("init", "--swarm", "town", "--open")
    assert invite["membership"] == "invite" and opened["membership"] == "open"
    shown = make_daemon(tmp_path / "o").cli_json("dna", "show")
    assert shown["membership"] == "open" and shown["puzzle_bits"] > 0


def test_update_needs_the_daemon(tmp_path: Path) -> None:
    res = make_daemon(tmp_path).cli("dna", "update", "--set", "division_threshold=30")
    assert res.returncode == 69 and "spore node run" in res.stderr


@pytest.mark.parametrize(("text", "expect"), [
    ("", '[dht]\npeers = ["h:1"]\n'),
    ("# mine\n[api]\nport = 7000\n", '# mine\n[api]\nport = 7000\n\n[dht]\npeers = ["h:1"]\n'),
    ("[dht] # udp\nport = 7151\n", '[dht] # udp\npeers = ["h:1"]\nport = 7151\n'),
    ('[dht]\npeers = ["a:2"]  # seeds\n[api]\nport = 1\n',
     '[dht]\npeers = ["a:2", "h:1"]\n[api]\nport = 1\n'),
    ('[dht]\npeers = "a:2, h:1"\n', '[dht]\npeers = ["a:2", "h:1"]\n'),
    ('[dht]\npeers = ["h:1"]\n', '[dht]\npeers = ["h:1"]\n'),
])
def test_peers_are_merged_into_config_toml(text: str, expect: str) -> None:
    assert with_peers(text, Path("config.toml"), ["h:1"]) == expect


def test_peers_that_cannot_be_added_safely_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"under \[dht\] yourself"):
        with_peers('dht.port = 7151\n', Path("config.toml"), ["h:1"])
