"""The one exception tree of the daemon.

    SporeError
     ├── ConfigError          a config file, variable or flag is wrong (names the source)
     ├── StateError           the state directory is unusable (permissions, lock, DNA)
     │    ├── AlreadyRunning  another daemon holds the state directory
     │    └── DiskFull        a write failed for want of space → HTTP 507
     ├── BadRequest           a client's request is wrong → HTTP 4xx with a message
     │    └── NotFound        → HTTP 404
     └── VerifyError          a signature or record failed verification (raised, never a bool)

Errors of the libraries we call (sqlite3, onnxruntime, cryptography) are
converted with ``raise … from exc`` in the module that calls them.
"""

from __future__ import annotations


class SporeError(Exception):
    """Base of every error Sporemind raises on purpose."""


class ConfigError(SporeError):
    """Configuration that cannot be used; the message names the file/variable."""


class StateError(SporeError):
    """The state directory cannot be used as it is."""


class AlreadyRunning(StateError):
    """Another daemon holds the state directory's lock."""


class DiskFull(StateError):
    """A write failed because the disk (or the database's quota) is full: HTTP
    507. Nothing acknowledged is lost; the message says what to free."""

    status = 507


class BadRequest(SporeError):
    """A request that cannot be served as sent (HTTP 400)."""

    status = 400


class NotFound(BadRequest):
    """A request naming something that does not exist (HTTP 404)."""

    status = 404


class TooLarge(BadRequest):
    """A request over a documented size limit (HTTP 413)."""

    status = 413


class NotAllowed(StateError):
    """This spore may not do that (not a founder, may not invite): HTTP 403."""

    status = 403


class WrongMode(StateError):
    """The swarm's membership mode has no such thing (invitations in an open
    swarm): HTTP 409."""

    status = 409


class NotReady(StateError):
    """The daemon is still starting the part asked for: HTTP 503."""

    status = 503


class VerifyError(SporeError):
    """A signature, hash or record did not verify."""
