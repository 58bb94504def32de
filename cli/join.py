"""`spore init --join`: adopt a swarm's signed DNA and remember the peers to
join it through (in config.toml, so every later `spore node run` uses them).

An open swarm is joined with its DNA file. An invite swarm is joined with
an invitation code (or a file holding one, from `spore invite --file`): the
joiner asks the inviter's peer route ``join`` once, checks that the DNA chain
it gets is the invitation's swarm and that the certificate names its own
key, then keeps the chain, its pass (``member.pass``, 0600) and the inviter
as a peer."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from p2pnode import dna as dna_mod
from p2pnode import joining
from p2pnode import membership as ms
from p2pnode.config import parse_peers
from p2pnode.errors import ConfigError, SporeError, StateError, VerifyError
from p2pnode.files import write_atomic
from p2pnode.identity import Identity
from p2pnode.records import RecordError

PASS_FILE = "member.pass"  # p2pnode.members reads it (PASS_FILE there)

MAX_DNA_BYTES = 64 * 1024  # a DNA is a few hundred bytes; anything this big is not one


class NotDna(SporeError):
    """The file given to --join cannot be read, or is not a signed swarm DNA."""


def peer_strings(peers: tuple[str, ...]) -> list[str]:
    """`host:port` items checked as config.toml will read them; ConfigError if not."""
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in parse_peers(list(peers), "option --peer")]


def adopt(state_dir: Path, offered: dna_mod.Dna,
          chain: list[dna_mod.Dna] | None = None) -> tuple[dna_mod.Dna, bool]:
    """Keep the newer of the state directory's DNA and `offered` (the newest
    of `chain` when given: then the chain is kept too), which must be of the
    same swarm. Returns (the DNA kept, whether `offered` was written)."""
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
    if chain is not None:
        dna_mod.save_chain(state_dir, chain)
    else:
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


# --- joining an invite swarm by its invitation code ------------------------------------

JOIN_TIMEOUT_S = 10.0
# An inviter takes a join request every 5 s past a burst of 4 (p2pnode.peers'
# ROUTE_RATES): a device joining with others at once waits its turn a while.
BUSY_RETRY_S = 5.0
BUSY_PATIENCE_S = 60.0
MAX_ANSWER_BYTES = 256 * 1024
MAX_INVITATION_FILE = 4096
INVITE_FILE_HEADER = "# a Sporemind invitation: spore init --join THIS_FILE (one use)\n"


class JoinRefused(SporeError):
    """The inviter could not be reached, refused the invitation, or answered
    with something that does not let this spore in (the message says which)."""


def invitation_or_dna(name: str, stdin: BinaryIO) -> joining.Invitation | dna_mod.Dna:
    """What `--join NAME` names: a DNA file, an invitation file or standard
    input holding either, or else an invitation code itself."""
    code_like = name.strip().lower().startswith(joining.INVITE_PREFIX)
    if name == "-" or os.path.isfile(name) or not code_like:
        data = _read_bounded(name, stdin)
        code = _code_in(data)
        if code is None:
            return _dna_in(name, data)
        return _invitation(code, f"{name} holds no valid invitation code")
    return _invitation(name, "not a valid invitation code")


def _read_bounded(name: str, stdin: BinaryIO) -> bytes:
    try:
        if name == "-":
            data = stdin.read(MAX_DNA_BYTES + 1)
        else:
            with open(name, "rb") as fh:
                data = fh.read(MAX_DNA_BYTES + 1)
    except OSError as exc:
        raise NotDna(f"cannot read {name}: {exc.strerror or exc} (nor is it an invitation "
                     f"code: those start {joining.INVITE_PREFIX}, from `spore invite` on a "
                     "member)") from exc
    if len(data) > MAX_DNA_BYTES:
        raise NotDna(f"{name} is not a signed swarm DNA: over "
                     f"{MAX_DNA_BYTES} bytes")
    return data


def _code_in(data: bytes) -> str | None:
    """The invitation code in an invitation file's text (comment lines aside)."""
    if len(data) > MAX_INVITATION_FILE:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[0] if len(lines) == 1 and lines[0].startswith(joining.INVITE_PREFIX) else None


def _dna_in(name: str, data: bytes) -> dna_mod.Dna:
    try:
        return dna_mod.decode(data)
    except VerifyError as exc:
        raise NotDna(f"{name} is not a signed swarm DNA: {exc}") from exc


def _invitation(code: str, what: str) -> joining.Invitation:
    try:
        return joining.decode_invitation(code)
    except RecordError as exc:
        raise NotDna(f"{what}: {exc}") from exc


def invitation_text(code: str) -> str:
    """The content of an invitation file (`spore invite --file`)."""
    return INVITE_FILE_HEADER + code + "\n"


def inviter_address(inv: joining.Invitation) -> str:
    """The inviter as a peer (`host:port`, its DHT and peer HTTP port)."""
    return f"[{inv.host}]:{inv.port}" if ":" in inv.host else f"{inv.host}:{inv.port}"


def ask_inviter(inv: joining.Invitation, request: bytes, *, timeout_s: float = JOIN_TIMEOUT_S,
                patience_s: float = BUSY_PATIENCE_S,
                sleep: Callable[[float], None] = time.sleep) -> bytes:
    """POST the join request to the inviter's peer route; its answer's bytes.
    An inviter busy with other joiners (429, 503: a rate, not a verdict) is
    asked again for up to `patience_s`. JoinRefused, in one line, when it
    cannot be reached or says no."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return _post_join(inv, request, timeout_s)
        except urllib.error.HTTPError as exc:
            wait = _busy_wait(exc)
            if wait is None or time.monotonic() + wait > deadline:
                raise JoinRefused(_refusal(exc, inviter_address(inv))) from exc
        sleep(wait)


def _busy_wait(exc: urllib.error.HTTPError) -> float | None:
    """Seconds to wait before asking a busy inviter again (None: not busy)."""
    if exc.code not in (429, 503):
        return None
    given = exc.headers.get("Retry-After", "") if exc.headers else ""
    return min(float(given), BUSY_PATIENCE_S) if given.isdigit() else BUSY_RETRY_S


def _post_join(inv: joining.Invitation, request: bytes, timeout_s: float) -> bytes:
    """One join request; HTTPError for an answer other than 2xx."""
    where = inviter_address(inv)
    req = urllib.request.Request(f"http://{where}/peer/v1/join", data=request, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            data: bytes = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError:
        raise  # an answer (a refusal): the caller reads it; not "cannot reach"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "reason", None) or exc
        raise JoinRefused(f"cannot reach the inviter at {where}: {why} (is its spore "
                          "running, and is that address reachable from here?)") from exc
    if len(data) > MAX_ANSWER_BYTES:
        raise JoinRefused(f"the inviter at {where} answered over {MAX_ANSWER_BYTES} bytes")
    return data


def _refusal(exc: urllib.error.HTTPError, where: str) -> str:
    try:
        body = json.loads(exc.read(4096))
        reason, detail = str(body.get("reason", "")), str(body.get("error", ""))
    except (ValueError, AttributeError, OSError):
        reason, detail = "", ""
    if exc.code == 429 or reason == "rate_limited":
        return f"the inviter at {where} is busy with join requests: try again in a minute"
    if reason:
        return f"the inviter at {where} refused the invitation: {reason} ({detail})"
    return f"the inviter at {where} answered HTTP {exc.code} {exc.reason}"


def judge_answer(data: bytes, inv: joining.Invitation, identity: Identity,
                 now_ms: int) -> tuple[list[dna_mod.Dna], ms.Pass]:
    """The DNA chain of the invited swarm and this spore's own pass, from the
    inviter's answer; JoinRefused if it is not for this swarm or this key."""
    try:
        chain, parent, cert = joining.decode_join_answer(data, invitation=inv,
                                                    member=identity.public_key, now_ms=now_ms)
        dna = chain[-1]
        own = ms.decode_pass(ms.invited_pass(parent, cert, identity).wire,
                             swarm=dna.swarm_id, founders=dna_mod.founders_ever(chain),
                             puzzle_bits=dna.puzzle_bits, now_ms=now_ms)
    except VerifyError as exc:
        reason = getattr(exc, "reason", "")
        what = ("is for another swarm than the invitation" if reason == "join_swarm"
                else f"does not let this spore in ({reason or 'invalid'}: {exc})")
        raise JoinRefused(f"the answer of the inviter at {inviter_address(inv)} {what}") from exc
    if own.member != identity.public_key:
        raise JoinRefused("the inviter's certificate names another key than this spore's")
    return chain, own


def settle(state_dir: Path, chain: list[dna_mod.Dna], own: ms.Pass) -> bool:
    """Keep the swarm's DNA chain (unless this spore holds a newer version of
    it) and this spore's pass (0600). Returns whether the DNA was written."""
    _, adopted = adopt(state_dir, chain[-1], chain)
    write_atomic(state_dir / PASS_FILE, own.wire, private=True)
    return adopted


def check_swarm(state_dir: Path, inv: joining.Invitation) -> None:
    """Before spending the invitation: a state directory of another swarm cannot join."""
    have = dna_mod.load(state_dir)
    if have is not None and have.swarm_id[:joining.SWARM_PREFIX_BYTES] != inv.swarm_prefix:
        raise StateError(
            f"{state_dir} already belongs to swarm {have.fields['swarm']} "
            f"(id {have.swarm_id.hex()[:16]}…), not the invitation's (id "
            f"{inv.swarm_prefix.hex()}…); a spore serves one swarm: use another "
            "--state-dir (or SPORE_STATE_DIR) to join this one")
