"""The swarm DNA: the signed manifest every spore of a swarm agrees on.

Stored in the state directory as the signed wire bytes (``dna.bin``); its
hash (SHA-256 of those bytes) identifies the swarm's rules. A spore with no
swarm given founds a one-spore swarm signed by its own key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dht.keys import DEFAULT_BITS, DEFAULT_PROBES, DEFAULT_TABLES, LshParams
from p2pnode.errors import StateError, VerifyError
from p2pnode.identity import Identity, verify

DNA_FILE = "dna.bin"
DNA_DOMAIN = b"sporemind/dna/v1"
PROTOCOL_VERSION = 1


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
        return hashlib.sha256(self.wire).digest()

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
        return {**self.fields, "hash": self.hash.hex(), "signer": self.signer.hex()}


def found(identity: Identity, *, swarm: str, encoder_name: str, encoder_sha256: str,
          dim: int, created_ms: int, seed: bytes | None = None) -> Dna:
    """Found a new swarm: DNA v1 signed by (and naming) `identity` as founder."""
    fields: dict[str, Any] = {
        "version": 1,
        "swarm": swarm,
        "protocol": PROTOCOL_VERSION,
        "created_ms": created_ms,
        "encoder": {"name": encoder_name, "sha256": encoder_sha256, "dim": dim},
        "lsh": {"tables": DEFAULT_TABLES, "bits": DEFAULT_BITS, "probes": DEFAULT_PROBES,
                "seed": (seed or secrets.token_bytes(16)).hex()},
        "replication": 3,
        "division_threshold": 20,
        "mutation_sigma": 0.02,
        "fitness_half_life_days": 30.0,
        "founders": [identity.public_key.hex()],
    }
    body = msgpack.packb(fields, use_bin_type=True)
    return Dna(fields, body, identity.public_key, identity.sign(DNA_DOMAIN, body))


def decode(data: bytes) -> Dna:
    """Parse and verify DNA wire bytes: signed by one of its own founders."""
    try:
        body, signer, sig = msgpack.unpackb(data, raw=False)
        fields = msgpack.unpackb(body, raw=False)
        founders = [bytes.fromhex(f) for f in fields["founders"]]
        LshParams(tables=fields["lsh"]["tables"], bits=fields["lsh"]["bits"],
                  probes=fields["lsh"]["probes"], seed=bytes.fromhex(fields["lsh"]["seed"]))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise VerifyError(f"malformed swarm DNA: {exc}") from exc
    if signer not in founders:
        raise VerifyError("swarm DNA is not signed by one of its founders")
    verify(signer, DNA_DOMAIN, body, sig)
    return Dna(fields, body, signer, sig)


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
