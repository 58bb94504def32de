"""The swarm DNA: the signed manifest every spore of a swarm agrees on.

Stored in the state directory as the signed wire bytes (``dna.bin``); its
hash (SHA-256 of those bytes) identifies one version of the swarm's rules. A
spore with no swarm given founds a one-spore swarm signed by its own key.

A founder can publish a new version (`update`) that changes only the tunable
rules (`MUTABLE`); every later version names the first one's hash as its
`genesis`, so the swarm id (`Dna.swarm_id`) — which memory records and the DHT
handshake carry — never changes. `successor` is the rule each spore applies
to a version it is offered.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dht.keys import DEFAULT_BITS, DEFAULT_PROBES, DEFAULT_TABLES, LshParams
from p2pnode.errors import ConfigError, StateError, VerifyError
from p2pnode.identity import Identity, verify

DNA_FILE = "dna.bin"
DNA_DOMAIN = b"sporemind/dna/v1"
PROTOCOL_VERSION = 1
# The rules a founder may change in a new version; founders may only grow.
MUTABLE = frozenset({"division_threshold", "mutation_sigma", "fitness_half_life_days",
                     "founders"})
# Fields every version sets for itself, outside the rules compared between versions.
_LINEAGE = frozenset({"version", "genesis", "previous", "created_ms"})
MAX_FOUNDERS = 64


@dataclass(frozen=True)
class Dna:
    fields: dict[str, Any]
    body: bytes
    signer: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return msgpack.packb([self.body, self.signer, self.signature], use_bin_type=True)  # type: ignore[no-any-return]

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
    body = msgpack.packb(fields, use_bin_type=True)
    return Dna(fields, body, identity.public_key, identity.sign(DNA_DOMAIN, body))


def found(identity: Identity, *, swarm: str, encoder_name: str, encoder_sha256: str,
          dim: int, created_ms: int, seed: bytes | None = None) -> Dna:
    """Found a new swarm: DNA v1 signed by (and naming) `identity` as founder."""
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
        fields[key] = _checked(key, value, founders)
    if all(fields[k] == current.fields.get(k) for k in changes):
        raise ConfigError("these values are already the DNA's; nothing to publish")
    fields.update(version=current.version + 1, genesis=current.swarm_id.hex(),
                  previous=current.hash.hex(), created_ms=created_ms)
    return _signed(identity, fields)


def _checked(key: str, value: Any, founders: list[str]) -> Any:
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
    return _checked_founders(value, founders)


def _checked_founders(value: Any, founders: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(_is_hex64(f) for f in value):
        raise ConfigError("founders must be a list of public keys (64 hex digits each)")
    new = list(dict.fromkeys(f.lower() for f in value))
    missing = [f for f in founders if f not in new]
    if missing:
        raise ConfigError("founders may only grow; missing " + ", ".join(missing))
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
            canonical = _checked(key, value, current.fields["founders"])
        except ConfigError as exc:
            raise VerifyError(f"bad {key}: {exc}") from exc
        if key == "founders" and canonical != value:
            # founders are matched as lower-case hex: keep every version canonical
            raise VerifyError("bad founders: repeated or upper-case keys")
    return True


def decode(data: bytes) -> Dna:
    """Parse and verify DNA wire bytes: signed by one of its own founders."""
    try:
        body, signer, sig = msgpack.unpackb(data, raw=False)
        fields = msgpack.unpackb(body, raw=False)
        founders = [bytes.fromhex(f) for f in fields["founders"]]
        LshParams(tables=fields["lsh"]["tables"], bits=fields["lsh"]["bits"],
                  probes=fields["lsh"]["probes"], seed=bytes.fromhex(fields["lsh"]["seed"]))
        _check_lineage(fields)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise VerifyError(f"malformed swarm DNA: {exc}") from exc
    if signer not in founders:
        raise VerifyError("swarm DNA is not signed by one of its founders")
    verify(signer, DNA_DOMAIN, body, sig)
    return Dna(fields, body, signer, sig)


def _check_lineage(fields: dict[str, Any]) -> None:
    version = fields["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version {version!r} is not an integer >= 1")
    if version > 1 and not (_is_hex64(fields["genesis"]) and _is_hex64(fields["previous"])):
        raise ValueError("genesis and previous must be 64 hex digits")
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
    path = state_dir / DNA_FILE
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(dna.wire)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc


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
