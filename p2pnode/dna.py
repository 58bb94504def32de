"""The swarm DNA: the signed manifest every spore of a swarm agrees on.

Stored in the state directory as the signed wire bytes (``dna.bin``); its
hash (SHA-256 of those bytes) identifies one version of the swarm's rules. A
spore with no swarm given founds a one-spore swarm signed by its own key.

A founder can publish a new version (`update`) that changes only the tunable
rules (`MUTABLE`); every later version names the first one's hash as its
`genesis`, so the swarm id (`Dna.swarm_id`) — which memory records and the DHT
handshake carry — never changes. `successor` is the rule each spore applies
to a version it is offered.

Membership (DESIGN.md 5b): ``membership`` is "invite" (the default for new
swarms: members hold a certificate chaining to a founder, p2pnode.membership)
or "open" (an identity pays a puzzle of ``puzzle_bits`` leading zero bits;
0 in invite swarms). Both are immutable. A DNA without a ``membership`` field
(v1 swarms founded before these existed) is read as "open" with puzzle_bits 0:
everyone holding the DNA stands, as before — `Dna.membership` and
`Dna.puzzle_bits` say so.

Founders can be added and retired by a new version, signed by a founder of the
version before it; at least one always remains. A spore that missed versions
verifies the newest through the chain of every version (`decode_chain`,
`newest_from`), kept beside dna.bin in dna-chain.bin: `successor` alone cannot
judge v3 from v1 when v3's signer became a founder in v2. Keys that were ever
founders (`founders_ever`) keep the certificates they issued valid.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdt import wire
from dht.keys import DEFAULT_BITS, DEFAULT_PROBES, DEFAULT_TABLES, LshParams
from p2pnode.errors import ConfigError, StateError, VerifyError
from p2pnode.files import write_atomic
from p2pnode.identity import Envelope, Identity, open_envelope, seal

DNA_FILE = "dna.bin"
CHAIN_FILE = "dna-chain.bin"
DNA_DOMAIN = b"sporemind/dna/v1"
PROTOCOL_VERSION = 1
# The rules a founder may change in a new version (founders: add or retire, >= 1 left).
MUTABLE = frozenset({"division_threshold", "mutation_sigma", "fitness_half_life_days",
                     "founders"})
# Fields every version sets for itself, outside the rules compared between versions.
_LINEAGE = frozenset({"version", "genesis", "previous", "created_ms"})
MAX_FOUNDERS = 64
MAX_DNA_BYTES = 64 * 1024  # one version's wire bytes (64 founders take ~4.3 KiB)
MAX_VERSIONS = 256  # versions a chain may hold
MAX_CHAIN_BYTES = 1024 * 1024  # a whole chain's wire bytes
MEMBERSHIPS = ("invite", "open")
MAX_PUZZLE_BITS = 32
# Open swarms' default puzzle: 2**20 SHA-256 on average, ~0.6 s on one x86
# (EPYC) core at 1.8 M hashes/s in CPython, some 4-6 s on a Raspberry Pi 4 core.
DEFAULT_PUZZLE_BITS = 20


@dataclass(frozen=True)
class Dna:
    fields: dict[str, Any]
    body: bytes
    signer: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return Envelope(self.body, self.signature, self.signer).wire

    @property
    def hash(self) -> bytes:
        """The hash of this version."""
        return hashlib.sha256(self.wire).digest()

    @property
    def version(self) -> int:
        return int(self.fields["version"])

    @property
    def swarm_id(self) -> bytes:
        """The swarm's identity: the hash of its first version, the same in every version."""
        if self.version == 1:
            return self.hash
        return bytes.fromhex(self.fields["genesis"])

    @property
    def membership(self) -> str:
        """"invite" or "open"; a DNA from before membership existed is "open"."""
        return str(self.fields.get("membership", "open"))

    @property
    def puzzle_bits(self) -> int:
        """Leading zero bits an open swarm's identity must pay (0: none)."""
        return int(self.fields.get("puzzle_bits", 0))

    @property
    def founders(self) -> frozenset[bytes]:
        """This version's founders' public keys."""
        return frozenset(bytes.fromhex(f) for f in self.fields["founders"])

    @property
    def lsh(self) -> LshParams:
        p = self.fields["lsh"]
        return LshParams(tables=p["tables"], bits=p["bits"], probes=p["probes"],
                         seed=bytes.fromhex(p["seed"]))

    @property
    def encoder_sha256(self) -> str:
        return str(self.fields["encoder"]["sha256"])

    def show(self) -> dict[str, Any]:
        """A JSON-friendly view, for `spore dna show`."""
        return {**self.fields, "swarm_id": self.swarm_id.hex(), "hash": self.hash.hex(),
                "signer": self.signer.hex()}


def _signed(identity: Identity, fields: dict[str, Any]) -> Dna:
    env = seal(identity, DNA_DOMAIN, wire.pack(fields), with_signer=True)
    return Dna(fields, env.body, identity.public_key, env.signature)


def found(identity: Identity, *, swarm: str, encoder_name: str, encoder_sha256: str,
          dim: int, created_ms: int, seed: bytes | None = None,
          membership: str = "invite", puzzle_bits: int | None = None) -> Dna:
    """Found a new swarm: DNA v1 signed by (and naming) `identity` as founder.

    An open swarm's puzzle defaults to DEFAULT_PUZZLE_BITS, an invite swarm's
    is 0; ConfigError for an unknown mode or bits out of [0, 32] (or > 0 in an
    invite swarm)."""
    if puzzle_bits is None:
        puzzle_bits = DEFAULT_PUZZLE_BITS if membership == "open" else 0
    try:
        _check_membership(membership, puzzle_bits)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return _signed(identity, {
        "version": 1,
        "swarm": swarm,
        "protocol": PROTOCOL_VERSION,
        "created_ms": created_ms,
        "encoder": {"name": encoder_name, "sha256": encoder_sha256, "dim": dim},
        "lsh": {"tables": DEFAULT_TABLES, "bits": DEFAULT_BITS, "probes": DEFAULT_PROBES,
                "seed": (seed or secrets.token_bytes(16)).hex()},
        "replication": 3,
        "division_threshold": 20,
        "mutation_sigma": 0.005,  # a child ranks like its parent at Spearman ~0.98
        "fitness_half_life_days": 30.0,
        "founders": [identity.public_key.hex()],
        "membership": membership,
        "puzzle_bits": puzzle_bits,
    })


def update(current: Dna, identity: Identity, changes: dict[str, Any],
           created_ms: int) -> Dna:
    """The next version of `current`, with `changes` applied and signed by `identity`.

    Raises StateError unless `identity` is a founder of `current`, and
    ConfigError naming the field for an unknown, immutable or invalid change.
    """
    founders = current.fields["founders"]
    if identity.public_key.hex() not in founders:
        raise StateError("only a founder can publish a new DNA version; founders are "
                         + ", ".join(f[:16] + "…" for f in founders))
    if not changes:
        raise ConfigError("no change given: set at least one of " + ", ".join(sorted(MUTABLE)))
    fields = dict(current.fields)
    for key, value in changes.items():
        if key not in MUTABLE:
            what = "immutable" if key in current.fields else "unknown"
            raise ConfigError(f"DNA field {key!r} is {what}; a new version may change only "
                              + ", ".join(sorted(MUTABLE)))
        fields[key] = _checked(key, value)
    if all(fields[k] == current.fields.get(k) for k in changes):
        raise ConfigError("these values are already the DNA's; nothing to publish")
    fields.update(version=current.version + 1, genesis=current.swarm_id.hex(),
                  previous=current.hash.hex(), created_ms=created_ms)
    return _signed(identity, fields)


def _checked(key: str, value: Any) -> Any:
    """`value` for mutable field `key`, normalised; ConfigError if out of range."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == "division_threshold":
        if not (number and math.isfinite(value) and value == int(value) and value >= 1):
            raise ConfigError(f"division_threshold must be an integer >= 1, got {value!r}")
        return int(value)
    if key == "mutation_sigma":
        if not (number and 0 < value <= 1):
            raise ConfigError(f"mutation_sigma must be a number in (0, 1], got {value!r}")
        return float(value)
    if key == "fitness_half_life_days":
        if not (number and math.isfinite(value) and value > 0):
            raise ConfigError(f"fitness_half_life_days must be a number > 0, got {value!r}")
        return float(value)
    return _checked_founders(value)


def _checked_founders(value: Any) -> list[str]:
    """Founders may be added and retired; at least one remains."""
    if not isinstance(value, list) or not all(_is_hex64(f) for f in value):
        raise ConfigError("founders must be a list of public keys (64 hex digits each)")
    new = list(dict.fromkeys(f.lower() for f in value))
    if not new:
        raise ConfigError("at least one founder must remain")
    if len(new) > MAX_FOUNDERS:
        raise ConfigError(f"at most {MAX_FOUNDERS} founders, got {len(new)}")
    return new


def _is_hex64(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdefABCDEF" for c in value))


def successor(current: Dna, candidate: Dna) -> bool:
    """Whether `candidate` (already `decode`d) should replace `current`.

    True for a valid newer version of the same swarm, and — so that two
    founders publishing the same version at once still converge — for a valid
    version equal in number whose hash is smaller. False for this version or
    one that loses to it. Raises VerifyError with a short reason for anything
    else: another swarm, a non-founder's signature, a changed immutable rule.
    """
    if candidate.swarm_id != current.swarm_id:
        raise VerifyError("another swarm")
    if candidate.version < current.version or (
            candidate.version == current.version and candidate.hash >= current.hash):
        return False
    if candidate.signer.hex() not in current.fields["founders"]:
        raise VerifyError("signed by a non-founder")
    for key in sorted((current.fields.keys() | candidate.fields.keys()) - MUTABLE - _LINEAGE):
        if current.fields.get(key) != candidate.fields.get(key):
            raise VerifyError(f"changes immutable field {key}")
    for key in sorted(MUTABLE):
        value = candidate.fields.get(key)
        try:
            canonical = _checked(key, value)
        except ConfigError as exc:
            raise VerifyError(f"bad {key}: {exc}") from exc
        if key == "founders" and canonical != value:
            # founders are matched as lower-case hex: keep every version canonical
            raise VerifyError("bad founders: repeated or upper-case keys")
    return True


def decode(data: bytes) -> Dna:
    """Parse and verify DNA wire bytes: signed by one of its own founders. The
    signer travels beside the body, so its signature is checked before the
    body is decoded."""
    if not isinstance(data, bytes):
        raise VerifyError(f"malformed swarm DNA: not bytes of at most {MAX_DNA_BYTES}")
    try:
        env = open_envelope(data, "swarm DNA", MAX_DNA_BYTES, with_signer=True)
    except wire.DecodeError as exc:
        raise VerifyError(f"malformed swarm DNA: {exc}") from exc
    env.verify(DNA_DOMAIN)
    signer = env.signer or b""
    try:
        fields: Any = env.open_body("swarm DNA body")
        founders = [bytes.fromhex(f) for f in fields["founders"]]
        LshParams(tables=fields["lsh"]["tables"], bits=fields["lsh"]["bits"],
                  probes=fields["lsh"]["probes"], seed=bytes.fromhex(fields["lsh"]["seed"]))
        _check_lineage(fields)
        if "membership" in fields or "puzzle_bits" in fields:
            _check_membership(fields["membership"], fields["puzzle_bits"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # DecodeError too
        raise VerifyError(f"malformed swarm DNA: {exc}") from exc
    if signer not in founders:
        raise VerifyError("swarm DNA is not signed by one of its founders")
    return Dna(fields, env.body, signer, env.signature)


def _check_membership(membership: Any, puzzle_bits: Any) -> None:
    if membership not in MEMBERSHIPS:
        raise ValueError(f"membership must be one of {', '.join(MEMBERSHIPS)}")
    if type(puzzle_bits) is not int or not 0 <= puzzle_bits <= MAX_PUZZLE_BITS:
        raise ValueError(f"puzzle_bits must be an integer in [0, {MAX_PUZZLE_BITS}]")
    if membership == "invite" and puzzle_bits:
        raise ValueError("an invite swarm has no puzzle (puzzle_bits 0)")


def _check_lineage(fields: dict[str, Any]) -> None:
    version = fields["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version {version!r} is not an integer >= 1")
    if version > 1 and not (_is_hex64(fields["genesis"]) and _is_hex64(fields["previous"])):
        raise ValueError("genesis and previous must be 64 hex digits")


# --- the chain of versions -----------------------------------------------------------

def chain_wire(versions: list[Dna]) -> bytes:
    """The wire bytes of a chain: every version's, v1 first."""
    return wire.pack([v.wire for v in versions])


def chain_wires(data: bytes) -> list[bytes]:
    """The versions' wire bytes in a chain's (not yet verified): VerifyError
    unless bytes of at most MAX_CHAIN_BYTES holding 1..MAX_VERSIONS of them."""
    if not isinstance(data, bytes) or len(data) > MAX_CHAIN_BYTES:
        raise VerifyError(f"DNA chain is not bytes of at most {MAX_CHAIN_BYTES}")
    try:
        found = wire.unpack(data, MAX_CHAIN_BYTES, "DNA chain", max_len=MAX_VERSIONS,
                            max_str=MAX_DNA_BYTES)
    except wire.DecodeError as exc:
        raise VerifyError(f"malformed DNA chain: {exc}") from exc
    if not isinstance(found, list) or not 1 <= len(found) <= MAX_VERSIONS:
        raise VerifyError(f"a DNA chain holds 1..{MAX_VERSIONS} versions")
    return found  # type: ignore[return-value]  # each one is checked by decode


def decode_chain(data: bytes, swarm_id: bytes) -> list[Dna]:
    """Parse and verify a chain of swarm `swarm_id`: v1 (whose hash is the
    swarm id), then each next version numbered one more, naming the one
    before as `previous`, and taken by `successor` from it. VerifyError (with
    a short reason) on anything else, or over MAX_VERSIONS / MAX_CHAIN_BYTES."""
    wires = chain_wires(data)
    chain = [decode(w) for w in wires]
    if chain[0].version != 1 or chain[0].hash != swarm_id:
        raise VerifyError("DNA chain does not start at the swarm's first version")
    for before, after in itertools.pairwise(chain):
        _check_link(before, after)
    return chain


def _check_link(before: Dna, after: Dna) -> None:
    if after.version != before.version + 1 or after.fields["previous"] != before.hash.hex():
        raise VerifyError(f"DNA chain breaks after version {before.version}")
    if not successor(before, after):
        raise VerifyError(f"DNA chain version {after.version} does not follow the one before")


def founders_ever(chain: list[Dna]) -> frozenset[bytes]:
    """Every key that was a founder in some version of `chain`."""
    return frozenset().union(*(v.founders for v in chain))


def newest_from(current: Dna, chain: list[Dna]) -> Dna | None:
    """The version of a verified `chain` (decode_chain) that should replace
    `current`, or None if it has nothing newer.

    The chain must hold `current`, or fork from it where two founders publish
    the same version at once: from `current`'s previous version, signed by one
    of `current`'s founders. Then the longer chain wins, and at equal length
    the smaller hash (as `successor`). A fork from further back (say a
    founder retired since, publishing from before its retirement) raises
    VerifyError, as does another swarm."""
    if chain[0].swarm_id != current.swarm_id:
        raise VerifyError("another swarm")
    tip = chain[-1]
    if tip.version < current.version:
        return None
    mine = chain[current.version - 1]
    if mine.hash == current.hash:
        return tip if tip.version > current.version else None
    if mine.fields.get("previous") != current.fields.get("previous"):
        raise VerifyError(f"DNA chain forks before version {current.version}")
    if mine.signer not in current.founders:
        raise VerifyError("DNA chain forks by a non-founder")
    if tip.version > current.version or mine.hash < current.hash:
        return tip
    return None


def extend(chain: list[Dna], newer: Dna) -> list[Dna] | None:
    """`chain` with `newer` in its place (appended, or replacing the same-
    version loser of a tie), or None if it does not link to the chain: fetch
    the peer's chain then. `newer` must already be judged by `successor`."""
    at = newer.version - chain[0].version if chain else 0
    if not 1 <= at <= len(chain):
        return None
    if newer.fields["previous"] != chain[at - 1].hash.hex():
        return None
    return [*chain[:at], newer]
def load(state_dir: Path) -> Dna | None:
    path = state_dir / DNA_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return decode(data)
    except VerifyError as exc:
        raise StateError(f"{path}: {exc}; restore it from a backup or `spore dna export`") from exc


def save(state_dir: Path, dna: Dna) -> None:
    write_atomic(state_dir / DNA_FILE, dna.wire)


def save_chain(state_dir: Path, chain: list[Dna]) -> None:
    """Keep `chain` (dna-chain.bin), then its newest version as dna.bin: a
    crash between the two leaves a chain ahead of dna.bin, which load_chain
    reads back to dna.bin's version. A partial chain (state from before
    chains, not starting at v1) writes dna.bin only."""
    if chain[0].version == 1:
        write_atomic(state_dir / CHAIN_FILE, chain_wire(chain))
    save(state_dir, chain[-1])


def load_chain(state_dir: Path) -> list[Dna]:
    """The chain of versions up to dna.bin's, [] if there is no dna.bin.

    Without dna-chain.bin (a v1 swarm, or state from before chains) it is
    [dna]: the whole chain at v1, else a partial one starting at dna.bin's
    version. A chain file that fails to verify raises StateError naming it;
    one that does not lead to dna.bin (written alone, past a gap) gives [dna]."""
    dna = load(state_dir)
    if dna is None:
        return []
    path = state_dir / CHAIN_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [dna]
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        chain = decode_chain(data, dna.swarm_id)
    except VerifyError as exc:
        raise StateError(f"{path}: {exc}; move it aside to start from dna.bin alone "
                         "(a peer's chain is fetched again)") from exc
    if len(chain) >= dna.version and chain[dna.version - 1].hash == dna.hash:
        return chain[:dna.version]
    return extend(chain, dna) or [dna]


def check_encoder(dna: Dna, installed_sha256: str, installed_dim: int) -> None:
    """Refuse to run with an encoder other than the one the swarm agreed on."""
    want = dna.encoder_sha256
    if want != installed_sha256 or dna.fields["encoder"]["dim"] != installed_dim:
        raise StateError(
            f"the swarm DNA wants encoder {dna.fields['encoder']['name']} sha256 {want[:16]}…, "
            f"but the installed encoder is sha256 {installed_sha256[:16]}… — "
            "reinstall the pinned encoder (scripts/setup), or start a new state "
            "directory for a different swarm"
        )
