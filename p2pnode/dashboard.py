"""The dashboard: one page at ``/``, served by the daemon, with no build step.

Plain files in ``p2pnode/dashboard-web/`` (package data: index.html, app.js,
style.css, icon.svg; the folder's name is no Python name, so setuptools
never takes it for a package), read once when the API is made and served
from memory; nothing is fetched from anywhere else. The page is a client of the
same JSON API as the CLI: it calls it with ``fetch()``, bodies sent as
``Content-Type: application/json``, so every call passes the API's `gate`.

Who may use it, and why this way:

- **Same origin only.** The page's files pass the gate like every route: one
  of the API's own Host names (DNS rebinding), no cross-site ``Origin`` or
  ``Sec-Fetch-Site`` — so a page of another site can neither load nor link
  into the dashboard (open it by typing its address). Its calls come from
  the API's own origin, which the gate lets through.
- **The token is pasted, never handed out.** On loopback the calls the page
  makes (ask, rate, memories, forget, peers, members, agents, status) need no
  token, as for the CLI: the gate is what keeps other sites out. Where a call
  answers 401 (the API bound beyond loopback, where every route but /healthz
  and these files needs it), the page asks for the token from ``api.token``
  in the state directory, keeps it in ``sessionStorage`` (this tab only, gone
  when it closes) and sends it as ``Authorization: Bearer``. Serving the
  token with the page would give it to whoever can load the page — anyone on
  the network beyond loopback; a cookie would be sent by the browser with
  requests other sites make, a second gate to get right. A pasted token stays
  with those who can read the state directory, and the files themselves hold
  nothing secret, which is why they are served without it.
- **Headers.** A Content-Security-Policy with scripts, styles, images and
  calls from this origin only (no inline script or style, no eval), Trusted
  Types required (Chromium then refuses any HTML-parsing sink such as
  ``innerHTML``: app.js uses none), ``frame-ancestors 'none'`` and
  ``X-Frame-Options: DENY`` (no other page can frame the rate and forget
  buttons under a decoy and have them clicked), ``nosniff``, no referrer,
  its own browsing context group, same-origin resources only.
- **Memory text is hostile** (peers write it): app.js puts every text into
  the page as text nodes (``textContent``, ``append(string)``), so
  ``<script>`` or ``<img onerror=…>`` in a memory is shown as those
  characters; the CSP would stop an inline script anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web

__all__ = ["CONTENT_SECURITY_POLICY", "FILES", "FOLDER", "SECURITY_HEADERS", "routes",
           "serve"]

FOLDER = "dashboard-web"  # in the p2pnode package
# URL path -> (file in FOLDER, content type)
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html"),
    "/dashboard/app.js": ("app.js", "text/javascript"),
    "/dashboard/style.css": ("style.css", "text/css"),
    "/dashboard/icon.svg": ("icon.svg", "image/svg+xml"),
}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'none'",
    "frame-ancestors 'none'", "require-trusted-types-for 'script'", "trusted-types 'none'",
])
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Read again after an upgrade of the daemon, never a stale app.js.
    hdrs.CACHE_CONTROL: "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def _load() -> dict[str, Asset]:
    folder = resources.files("p2pnode") / FOLDER
    return {path: Asset((folder / name).read_bytes(), kind)
            for path, (name, kind) in FILES.items()}


ASSETS_KEY: web.AppKey[dict[str, Asset]] = web.AppKey("dashboard", dict)


async def serve(request: web.Request) -> web.Response:
    """One of the dashboard's files (the route's own path names it)."""
    resource = request.match_info.route.resource
    asset = request.app[ASSETS_KEY][resource.canonical if resource else request.path]
    return web.Response(body=asset.body, content_type=asset.content_type,
                        charset="utf-8", headers=SECURITY_HEADERS)


def routes(app: web.Application) -> list[web.RouteDef]:
    """The dashboard's routes for `app`, its files read now (a missing file is
    a broken install: it fails here, at start, not at the first page load)."""
    app[ASSETS_KEY] = _load()
    return [web.get(path, serve) for path in FILES]
