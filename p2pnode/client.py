"""A small synchronous client of the local API, for the CLI (stdlib only, so
that `spore ask` starts fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

from p2pnode.config import Config
from p2pnode.errors import SporeError

TIMEOUT_S = 120.0
MAX_EVENT_BYTES = 1 << 20  # one NDJSON event of a stream (an answer's sources and text)
TOKEN_FILE = "api.token"  # written (0600) by the daemon in its state directory


class DaemonUnreachable(SporeError):
    """No spore daemon answers at the configured address."""


class ApiError(SporeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """Sends the daemon's API token whenever it can read it: DNA changes need
    it on loopback too, and beyond loopback every request does."""

    def __init__(self, cfg: Config, timeout: float = TIMEOUT_S) -> None:
        self.base = cfg.api_url
        self.timeout = timeout
        self.token_file = cfg.state_dir / TOKEN_FILE
        self.token: str | None = None
        self.token_problem = ""  # why there is no token
        self.token_unreadable = False  # the file is there, but not for this user
        try:
            self.token = self.token_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            self.token_problem = f"there is no {self.token_file} (is the daemon running?)"
            return
        except (OSError, UnicodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.token_problem = f"cannot read {self.token_file}: {why}"
        if self.token is None:
            self.token_problem = self.token_problem or f"{self.token_file} is empty"
            self.token_unreadable = True

    def need_token(self) -> None:
        """Raise now, before any call, when the token file is there but unreadable
        (a missing file is left to the daemon: it may not run, or be older)."""
        if self.token_unreadable:
            raise SporeError(f"{self.token_problem}; run as the user that runs the daemon")

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST `body` and yield the NDJSON events of the answer as they come
        (each line one JSON object, at most MAX_EVENT_BYTES)."""
        resp = self._open("POST", path, body)
        with resp:
            while line := self._mapped(resp.readline, MAX_EVENT_BYTES + 1):
                if len(line) > MAX_EVENT_BYTES:
                    raise ApiError(502, f"the daemon sent an event over {MAX_EVENT_BYTES} bytes")
                if line.strip():
                    yield _decode(line)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        with self._open(method, path, body) as resp:
            return _decode(self._mapped(resp.read))

    def _mapped(self, read: Any, *args: Any) -> bytes:
        """A read of an answer, its failures in our words."""
        try:
            return bytes(read(*args))
        except (ConnectionError, TimeoutError) as exc:
            raise DaemonUnreachable(f"no spore daemon at {self.base} ({exc})") from None

    def _open(self, method: str, path: str, body: dict[str, Any] | None) -> HTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp: HTTPResponse = urllib.request.urlopen(req, timeout=self.timeout)
            return resp
        except urllib.error.HTTPError as exc:
            message = str(_decode(exc.read()).get("error", exc.reason))
            if exc.code == 401 and self.token is None:
                message += (f"\n{self.token_problem}: run as the user that runs the daemon "
                            "(or give its --state-dir)")
            raise ApiError(exc.code, message) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachable(f"no spore daemon at {self.base} ({reason})") from None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return out if isinstance(out, dict) else {"result": out}
