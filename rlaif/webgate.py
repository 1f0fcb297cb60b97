"""The gate in front of rlaif's local web pages (`rlaif rubric studio`, `rlaif review`).

Rules, for every HTTP request and websocket (answered 403/415 with a one-line JSON error):

- the session token, from ``?token=``, the page's token header, or the cookie the page set;
- ``Host`` names the served address: a loopback name (127.0.0.1, localhost, [::1]) or the listened
  host, with the served port (a page under another name, e.g. DNS rebinding, is refused);
- ``Origin``, when the browser sends one, is that same address (``http://HOST:PORT``);
- a state-changing request (POST, PUT, PATCH, DELETE) carries the token in the HEADER (the cookie
  alone is refused: another site's form or ``fetch`` may send the cookie, never a custom header
  without a CORS preflight, which this server never grants) and ``Content-Type: application/json``
  (a cross-site ``text/plain`` body is the classic way round the preflight).

Also `listen`: bind the socket before the app exists, so the gate knows the served port; and
`common_files`, the JS both pages share (``common/page.js``).
"""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from rlaif.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
COMMON = Path(__file__).parent / "webstatic"


def common_files() -> Mount:
    """The route serving the pages' shared JS at ``/common/`` (behind the gate like every route)."""
    return Mount("/common", StaticFiles(directory=COMMON), name="common")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def served_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` header values that name this server; None (any name) for a wildcard address,
    where only the Origin == Host rule holds."""
    if host in WILDCARD:
        return None
    names = {_bracketed(name) for name in LOOPBACK} | {_bracketed(host)}
    return frozenset(f"{name}:{port}" for name in names)


def listen(host: str, port: int) -> socket.socket:
    """A bound socket on ``host:port`` (0: any free port); a one-line UserError if it cannot."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0-65535")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                        f"pick another --port") from None
    return sock


def shown_url(sock: socket.socket, token: str) -> str:
    """The URL to open, token included."""
    host, port = sock.getsockname()[:2]
    return f"http://{_bracketed(host)}:{port}/?token={token}"


class WebGate:
    """ASGI middleware applying the rules above for one server (its token, header, cookie and address)."""

    def __init__(self, app: ASGIApp, *, token: str, header: str, cookie: str, hosts: frozenset[str] | None,
                 what: str) -> None:
        self.app, self.token, self.header, self.cookie = app, token, header.lower(), cookie
        self.hosts, self.what = hosts, what

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, one-line reason) if the request must be refused, else None."""
        conn = HTTPConnection(scope)
        host = conn.headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return 403, f"Host {host!r} is not this server's address; open the URL {self.what} printed"
        origin = conn.headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc != host:
                return 403, f"Origin {origin!r} is not this server's page: requests from other sites are refused"
        header = conn.headers.get(self.header, "")
        given = conn.query_params.get("token") or header or conn.cookies.get(self.cookie) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return 403, f"this page needs its token; open the URL {self.what} printed"
        if scope["type"] == "http" and scope["method"] in UNSAFE:
            if not secrets.compare_digest(header.encode(), self.token.encode()):
                return 403, (f"a {scope['method']} needs the token in the {self.header} header "
                             f"(the cookie alone is refused)")
            ctype = conn.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return 415, f"a {scope['method']} must be Content-Type: application/json, got {ctype or 'none'!r}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refused = self.refusal(scope)
            if refused is not None:
                status, reason = refused
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
                    return
                body = json.dumps({"error": reason}).encode()
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
