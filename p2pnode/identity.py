"""Ed25519 identity: the only module that touches `cryptography`.

A node's key pair lives in the state directory (mode 0600); the node id is
the SHA-256 of the raw public key, so nobody picks their own place in the DHT.
Signatures always cover a domain prefix plus canonical bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pnode.errors import StateError, VerifyError

KEY_FILE = "node_identity.key"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def node_id(public_key: bytes) -> bytes:
    """The node id: SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).digest()


def _message(domain: bytes, payload: bytes) -> bytes:
    # The domain separates record kinds: a signed vote can never pass as a memory.
    return domain + b"\x00" + payload


# Signatures that verified, remembered by a digest of everything verified: the
# same index entries and records arrive again and again (every replica, every
# merge, every ask), and a check costs ~60 µs while a digest costs ~1 µs.
# Only successes are kept, so a forgery is checked (and refused) every time.
_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
_VERIFIED_MAX = 1 << 16
_VERIFIED_LOCK = threading.Lock()


def verify(public_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> None:
    """Raise VerifyError unless `signature` is `public_key`'s over domain+payload."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise VerifyError("malformed key or signature length")
    digest = hashlib.sha256(public_key + signature + _message(domain, payload)).digest()
    with _VERIFIED_LOCK:
        if digest in _VERIFIED:
            _VERIFIED.move_to_end(digest)
            return
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, _message(domain, payload)
        )
    except InvalidSignature as exc:
        raise VerifyError(f"bad {domain.decode(errors='replace')} signature") from exc
    with _VERIFIED_LOCK:
        _VERIFIED[digest] = None
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)


@dataclass(frozen=True)
class Identity:
    """A node's signing key and the public facts derived from it."""

    _private: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def node_id(self) -> bytes:
        return node_id(self.public_key)

    def sign(self, domain: bytes, payload: bytes) -> bytes:
        return self._private.sign(_message(domain, payload))

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity (tests, simulations)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))


def load_or_create(state_dir: Path) -> tuple[Identity, bool]:
    """Load the node key from `state_dir`, creating it (0600) on first run.

    Returns the identity and whether it was created now.
    """
    path = state_dir / KEY_FILE
    if path.exists():
        return _load(path), False
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write the node key {path}: {exc.strerror}") from exc
    return Identity(key), True


def _load(path: Path) -> Identity:
    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read the node key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise StateError(
            f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    if len(raw) != 32:
        raise StateError(f"{path} is not a 32-byte Ed25519 key ({len(raw)} bytes)")
    return Identity(Ed25519PrivateKey.from_private_bytes(raw))
