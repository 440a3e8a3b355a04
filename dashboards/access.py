"""Who may read the dashboard: loopback by default; beyond it only with ``allow_remote`` and a token.

A client proves the token with ``Authorization: Bearer <token>`` (Prometheus, curl) or by opening the page once as
``/?token=<token>``: that answers with a redirect to the same page without the token and an HttpOnly cookie
holding an HMAC of it (so the token itself is not kept by the browser). ``/healthz`` stays open for probes; it
says nothing about the fleet.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet.config import DashboardConfig

COOKIE = "molmofleet_dashboard"
OPEN_PATHS = frozenset({"/healthz"})
MIN_TOKEN_CHARS = 16


class AccessError(RuntimeError):
    """The dashboard refuses to start with this binding; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(cfg: DashboardConfig, token: str | None) -> None:
    """Refuse a binding beyond loopback without ``allow_remote`` and a token of reasonable length."""
    if not is_loopback(cfg.host) and not cfg.allow_remote:
        raise AccessError(
            f"dashboard: host {cfg.host!r} is reachable from other machines; pass --allow-remote "
            f"(dashboard.allow_remote=true) and set a token in ${cfg.token_env}"
        )
    if not is_loopback(cfg.host) and not token:
        raise AccessError(
            f"dashboard: serving on {cfg.host!r} needs a token: set ${cfg.token_env} (or "
            "dashboard.token_file), e.g. to the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise AccessError(
            f"dashboard: the token is shorter than {MIN_TOKEN_CHARS} characters; use a longer one"
        )


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"molmofleet-dashboard-session", hashlib.sha256).hexdigest()


class TokenGate:
    """ASGI middleware: every path but ``OPEN_PATHS`` needs the token (bearer header or session cookie)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        response = self._check(Request(scope))
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, req: Request) -> Response | None:
        assert self.token is not None and self.session is not None
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(
            auth[7:].strip().encode(), self.token.encode()
        ):
            return None
        if hmac.compare_digest(req.cookies.get(COOKIE, "").encode(), self.session.encode()):
            return None
        offered = req.query_params.get("token")
        if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
            rest = urlencode([(k, v) for k, v in req.query_params.multi_items() if k != "token"])
            path = "/" + req.url.path.lstrip("/")  # never "//host": that would redirect off-site
            resp = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
            resp.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path="/")
            return resp
        reason = "wrong token" if offered is not None or auth else "this dashboard needs a token"
        if "text/html" in req.headers.get("accept", ""):
            return HTMLResponse(
                f"<!doctype html><title>molmofleet: token needed</title><body style='font-family:sans-serif;"
                f"padding:2em'><h2>molmofleet dashboard: {reason}</h2><p>Open this page as "
                f"<code>/?token=&lt;token&gt;</code> once, or send <code>Authorization: Bearer &lt;token&gt;"
                f"</code>. The token is the value the dashboard was started with.</p></body>",
                status_code=401,
            )
        return JSONResponse(
            {"error": f"{reason}: send 'Authorization: Bearer <token>' or open /?token=<token> once"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
