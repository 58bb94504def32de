"""Ed25519 identity: the only module that touches `cryptography`.

A node's key pair lives in the state directory (mode 0600); the node id is
the SHA-256 of the raw public key, so nobody picks their own place in the DHT.
Signatures always cover a domain prefix plus canonical bytes.

Every signed thing travels in one `Envelope` (``msgpack([body, signature])``,
or ``[body, signer, signature]`` where the body does not name its signer),
opened by `open_envelope` with crdt.wire's bounded decoder: each codec gives
its size limit and maps `DecodeError` / `VerifyError` to its own typed error.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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

from crdt import wire
from p2pnode.errors import DiskFull, StateError, VerifyError

KEY_FILE = "node_identity.key"
SEED_BYTES = 32  # the key files of versions before the public half was kept
KEY_BYTES = 64  # seed ‖ public key
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def node_id(public_key: bytes) -> bytes:
    """The node id: SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).digest()


def _message(domain: bytes, payload: bytes) -> bytes:
    # The domain separates record kinds: a signed vote can never pass as a memory.
    # It ends at the NUL, so a domain holding one could pass for a shorter one.
    if b"\x00" in domain:
        raise ValueError("a signature domain holds no NUL byte")
    return domain + b"\x00" + payload


# Signatures that verified, remembered by a digest of everything verified: the
# same index entries and records arrive again and again (every replica, every
# merge, every ask), and a check costs ~60 µs while a digest costs ~1 µs.
# Only successes are kept, so a forgery is checked (and refused) every time.
#
# A fixed table, not a growing map: 32,768 sets of 2 digests (the newer kept
# on a miss, the older replaced), 2 MiB at most whatever a flood of fresh keys
# signs (an OrderedDict of 65,536 digests took ~10 MB: ~156 bytes a digest).
# Its pages are mapped anonymously, so only the sets used take memory. The
# digest is salted per process: nobody can aim their signatures at the sets of
# someone else's, and a collision in a set only evicts (a check again, ~60 µs).
_WAYS, _SETS = 2, 1 << 15
_DIGEST = 32
_TABLE = mmap.mmap(-1, _SETS * _WAYS * _DIGEST, flags=mmap.MAP_PRIVATE)  # not shared by a fork
_OLDER = bytearray(_SETS)  # per set: the way replaced next
_SALT = os.urandom(16)
_VERIFIED_LOCK = threading.Lock()


def _remembered(digest: bytes) -> bool:
    """Whether `digest` is in the table (the caller holds the lock)."""
    s = int.from_bytes(digest[:4], "little") & (_SETS - 1)
    base = s * _WAYS * _DIGEST
    at = _TABLE.find(digest, base, base + _WAYS * _DIGEST)
    if at < 0 or (at - base) % _DIGEST:  # (straddling two ways: a miss, never a hit)
        return False
    _OLDER[s] = 1 - (at - base) // _DIGEST  # the other one is now the older
    return True


def _remember(digest: bytes) -> None:
    s = int.from_bytes(digest[:4], "little") & (_SETS - 1)
    way = _OLDER[s]
    at = (s * _WAYS + way) * _DIGEST
    _TABLE[at:at + _DIGEST] = digest
    _OLDER[s] = 1 - way


def verify(public_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> None:
    """Raise VerifyError unless `signature` is `public_key`'s over domain+payload."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise VerifyError("malformed key or signature length")
    message = _message(domain, payload)
    digest = hashlib.sha256(_SALT + public_key + signature + message).digest()
    with _VERIFIED_LOCK:
        if _remembered(digest):
            return
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature as exc:
        raise VerifyError(f"bad {domain.decode(errors='replace')} signature") from exc
    with _VERIFIED_LOCK:
        _remember(digest)


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


# --- signed envelopes ----------------------------------------------------------------

class Envelope(NamedTuple):
    """A body and its signature as they travel: ``msgpack([body, signature])``,
    or ``msgpack([body, signer, signature])`` when the body does not name its
    signer (the swarm DNA). The signature covers a domain and exactly `body`'s
    bytes: never a re-encoding of what they decode to. (A NamedTuple: made for
    every record read, it costs a fifth of a frozen dataclass.)"""

    body: bytes
    signature: bytes
    signer: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self.signer is None:
            return wire.pack([self.body, self.signature])
        return wire.pack([self.body, self.signer, self.signature])

    def verify(self, domain: bytes, signer: bytes | None = None) -> None:
        """VerifyError unless `signer`'s (by default the envelope's own signer)
        signature over `domain` and the body."""
        key = self.signer if signer is None else signer
        if key is None:
            raise VerifyError(f"no signer given for a {domain.decode(errors='replace')} body")
        verify(key, domain, self.body, self.signature)

    def open_body(self, what: str, *, max_len: int | None = None) -> object:
        """The body decoded (bounded by its own size, which the envelope's
        limit already bounds); DecodeError if it is not msgpack."""
        return wire.unpack(self.body, len(self.body), what, max_len=max_len)


def seal(identity: Identity, domain: bytes, body: bytes, *,
         with_signer: bool = False) -> Envelope:
    """`body` signed by `identity` over `domain` (naming the signer beside the
    body if `with_signer`)."""
    return Envelope(body, identity.sign(domain, body),
                    identity.public_key if with_signer else None)


def envelope_of(obj: object, what: str, *, with_signer: bool = False) -> Envelope:
    """An already decoded ``[body, signature]`` (``[body, signer, signature]``
    if `with_signer`) as an Envelope; DecodeError for any other shape. For
    envelopes carried inside a larger value (a DHT bucket's entries)."""
    if type(obj) is list and len(obj) == 2 + with_signer:
        body, signature = obj[0], obj[-1]
        signer = obj[1] if with_signer else None
        if type(body) is bytes and type(signature) is bytes \
                and (signer is None or type(signer) is bytes):
            return Envelope(body, signature, signer)
    shape = "[body, signer, signature]" if with_signer else "[body, signature]"
    raise wire.DecodeError(f"{what}: expected {shape}, all bytes")


def open_envelope(data: object, what: str, max_bytes: int, *,
                  with_signer: bool = False) -> Envelope:
    """The envelope in `data`, bytes of at most `max_bytes` (checked before
    anything is decoded); DecodeError (wire.Oversized if too long) otherwise.
    The signature is not checked yet: call `Envelope.verify`, before opening
    the body when the signer travels beside it."""
    return envelope_of(wire.unpack(data, max_bytes, what, max_len=3), what,
                       with_signer=with_signer)


def _key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The key file: seed ‖ public key (libsodium's 64-byte secret key), so a
    flipped bit anywhere no longer loads as some other valid identity."""
    return (key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            + key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _damaged(path: Path, why: str) -> StateError:
    return StateError(
        f"the node key {path} is damaged ({why}). Restore it from a backup. A spore never "
        "makes a new identity while this file exists; to start as a new node instead, move "
        f"it aside (mv {path} {path}.damaged): memories taught here would no longer be "
        "republished as this node's own")


def _write_key(path: Path, data: bytes, *, replace: bool) -> None:
    """Write the key whole (0600, fsynced); over an existing file only if
    `replace` (the same key in the checked format), else never."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # FileExistsError rather than replace a key made meanwhile
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk is full: cannot write the node key {path}. Free space "
                           f"on the filesystem of {path.parent} (see: df -h {path.parent}), "
                           "then retry") from exc
        raise StateError(f"cannot write the node key {path}: {exc.strerror or exc}") from exc
    finally:
        with suppress(OSError):
            tmp.unlink()


def load_or_create(state_dir: Path) -> tuple[Identity, bool]:
    """Load the node key from `state_dir`, creating it (0600) on first run.

    Returns the identity and whether it was created now. A key file that
    exists (even empty, damaged or a dangling link) is loaded or refused with a
    StateError naming it: a new identity never replaces an old one.
    """
    path = state_dir / KEY_FILE
    if os.path.lexists(path):
        return _load(path), False
    key = Ed25519PrivateKey.generate()
    try:
        _write_key(path, _key_bytes(key), replace=False)
    except StateError as exc:
        if isinstance(exc.__cause__, FileExistsError):  # another process made it just now
            return _load(path), False
        raise
    return Identity(key), True


def _load(path: Path) -> Identity:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"the node key {path} is not a regular file; restore it from "
                             "a backup")
        mode = st.st_mode & 0o777
        with open(path, "rb") as fh:
            raw = fh.read(KEY_BYTES + 1)
    except OSError as exc:
        raise StateError(f"cannot read the node key {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise StateError(
            f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    if len(raw) not in (SEED_BYTES, KEY_BYTES):
        raise _damaged(path, f"{len(raw)}{'+' if len(raw) > KEY_BYTES else ''} bytes, "
                       f"not a {KEY_BYTES}-byte Ed25519 key")
    key = Ed25519PrivateKey.from_private_bytes(raw[:SEED_BYTES])
    if len(raw) == SEED_BYTES:  # written before the public half was kept: add it
        if not path.is_symlink():
            with suppress(StateError):  # a read-only or full disk: the old file still loads
                _write_key(path, _key_bytes(key), replace=True)
    elif _key_bytes(key) != raw:
        raise _damaged(path, "its private half does not match the public key kept with it")
    return Identity(key)
