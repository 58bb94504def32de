"""A small synchronous client of the local API, for the CLI (stdlib only, so
that `spore ask` starts fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from p2pnode.config import Config
from p2pnode.errors import SporeError

TIMEOUT_S = 120.0


class DaemonUnreachable(SporeError):
    """No spore daemon answers at the configured address."""


class ApiError(SporeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, cfg: Config, timeout: float = TIMEOUT_S) -> None:
        self.base = cfg.api_url
        self.timeout = timeout
        self.token: str | None = None
        token_file = cfg.state_dir / "api.token"
        if not cfg.loopback_only and token_file.exists():
            self.token = token_file.read_text().strip()

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _decode(resp.read())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read())
            raise ApiError(exc.code, str(payload.get("error", exc.reason))) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachable(f"no spore daemon at {self.base} ({reason})") from None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return out if isinstance(out, dict) else {"result": out}
