"""`spore init --join`: adopt a swarm's signed DNA and remember the peers to
join it through (in config.toml, so every later `spore node run` uses them)."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, BinaryIO

from p2pnode import dna as dna_mod
from p2pnode.config import parse_peers
from p2pnode.errors import ConfigError, SporeError, StateError, VerifyError

MAX_DNA_BYTES = 64 * 1024  # a DNA is a few hundred bytes; anything this big is not one


class NotDna(SporeError):
    """The file given to --join cannot be read, or is not a signed swarm DNA."""


def read_dna(name: str, stdin: BinaryIO) -> dna_mod.Dna:
    """The verified DNA in file `name` (standard input for "-")."""
    try:
        if name == "-":
            data = stdin.read(MAX_DNA_BYTES + 1)
        else:
            with open(name, "rb") as fh:
                data = fh.read(MAX_DNA_BYTES + 1)
    except OSError as exc:
        raise NotDna(f"cannot read {name}: {exc.strerror or exc}") from exc
    if len(data) > MAX_DNA_BYTES:
        raise NotDna(f"{name} is not a signed swarm DNA: over {MAX_DNA_BYTES} bytes")
    try:
        return dna_mod.decode(data)
    except VerifyError as exc:
        raise NotDna(f"{name} is not a signed swarm DNA: {exc}") from exc


def peer_strings(peers: tuple[str, ...]) -> list[str]:
    """`host:port` items checked as config.toml will read them; ConfigError if not."""
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in parse_peers(list(peers), "option --peer")]


def adopt(state_dir: Path, offered: dna_mod.Dna) -> tuple[dna_mod.Dna, bool]:
    """Keep the newer of the state directory's DNA and `offered`, which must be
    of the same swarm. Returns (the DNA kept, whether `offered` was written)."""
    have = dna_mod.load(state_dir)
    if have is not None and have.swarm_id != offered.swarm_id:
        raise StateError(
            f"{state_dir} already belongs to swarm {have.fields['swarm']} "
            f"(id {have.swarm_id.hex()[:16]}…), not {offered.fields['swarm']} "
            f"(id {offered.swarm_id.hex()[:16]}…); a spore serves one swarm: "
            "use another --state-dir (or SPORE_STATE_DIR) to join this one")
    if have is not None:
        try:
            newer = dna_mod.successor(have, offered)
        except VerifyError as exc:
            raise StateError(f"the DNA offered does not follow version {have.version} "
                             f"in {state_dir}: {exc}") from exc
        if not newer:
            return have, False
    dna_mod.save(state_dir, offered)
    return offered, True


def with_peers(text: str, where: Path, peers: list[str]) -> str:
    """config.toml's `text` with `peers` added to [dht] peers, all else kept as
    written (comments too). Every edit is checked by parsing it back."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from exc
    dht = data.get("dht", {})
    have = dht.get("peers", [])
    if isinstance(have, str):  # config.toml may also say peers = "a:1, b:2"
        have = [p.strip() for p in have.split(",") if p.strip()]
    merged = list(dict.fromkeys([*have, *peers]))
    if merged == dht.get("peers"):
        return text
    line = "peers = [" + ", ".join(json.dumps(p) for p in merged) + "]"
    want = {**data, "dht": {**dht, "peers": merged}}
    for candidate in _edits(text.splitlines(), line):
        if _parses_to(candidate, want):
            return candidate
    raise ConfigError(f"{where}: cannot add the peers without rewriting the file; "
                      f"put this line under [dht] yourself: {line}")


def _edits(lines: list[str], line: str) -> list[str]:
    """Candidate texts: the peers line replaced, inserted under [dht], or a new [dht]."""
    out = []
    for i, old in enumerate(lines):
        if re.match(r"\s*peers\s*=", old):
            out.append([*lines[:i], line, *lines[i + 1:]])
        if re.match(r"\s*\[\s*dht\s*\]\s*(#.*)?$", old):
            out.append([*lines[:i + 1], line, *lines[i + 1:]])
    out.append([*lines, *([""] if lines else []), "[dht]", line])
    return ["\n".join(c) + "\n" for c in out]


def _parses_to(text: str, want: dict[str, Any]) -> bool:
    try:
        return tomllib.loads(text) == want
    except tomllib.TOMLDecodeError:
        return False


def write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
