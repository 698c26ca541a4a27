"""Registries that misbehave on purpose: one echoes every credential it receives, one drips.

:class:`HostileRegistry` is a registry and its token service on one TLS port (reach it as
``127.0.0.1:PORT``; its certificate names the address). The repository in the token scope
picks the behaviour, and every answer plants what the client sent (the password, the
``user:password`` pair, the Basic blob, the issued token) in every place a client may show
it: OCI error messages, ``error_description``, plain-text bodies, response headers, JSON
escaped (``\\u00e4``) and raw, URL-encoded.

:class:`DripRegistry` sends its answers one byte a second: a per-read timeout never fires.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from urllib.parse import parse_qs, quote

from ._common import LOOPBACK, BackgroundHTTPServer, QuietHandler
from .pki import PKI

# Repository -> what the hostile token service and registry do with it.
MODES = {
    "echo/reject": "token GET: 401, credentials echoed in errors[].message, error_description, headers",
    "echo/oauth": "token GET: 405; the POST form is echoed back raw and JSON-escaped in a 401",
    "echo/broken": "token GET: 500 with a plain-text body echoing the Authorization header",
    "echo/ratelimit": "token GET: 429 echoing the credentials",
    "echo/grant": "token issued; the manifest request gets a 500 echoing the bearer token and password",
    "echo/deny": "token issued; the manifest request gets a 403 DENIED echoing token and password",
}


def _basic(header: str) -> tuple[str, str]:
    scheme, _, blob = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(blob).decode("utf-8", "replace").partition(":")
    except (binascii.Error, ValueError):
        return "", ""
    return user, password


def _raw(value: str) -> str:
    """A header value sent as raw UTF-8 bytes (http.server writes headers as latin-1)."""
    return value.encode("utf-8").decode("latin-1")


class _HostileHandler(QuietHandler):
    def send_header(self, keyword: str, value: str) -> None:
        super().send_header(keyword, _raw(value))

    def _echo(self, *extra: str) -> str:
        fx: HostileRegistry = self.fixture
        auth = self.headers.get("Authorization", "")
        user, password = _basic(auth)
        # On registry requests: the password the bearer token was issued for (a registry
        # that logs logins and replays them); never another client's.
        password = password or fx.passwords.get(auth.partition(" ")[2], "")
        parts = [f"you sent {auth!s}", f"login {user}:{password}", f"url {quote(password)}", *extra]
        return "; ".join(parts)

    def _challenge(self) -> dict[str, str]:
        fx: HostileRegistry = self.fixture
        return {"WWW-Authenticate": f'Bearer realm="https://{fx.host}/token",service="hostile"'}

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.count(self.route)
        if self.route == "/token":
            self._token(parse_qs(self.path.partition("?")[2]))
            return
        if self.route == "/v2/" or not self.headers.get("Authorization"):
            self.send_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "login first"}]},
                           self._challenge())
            return
        token = self.headers["Authorization"].partition(" ")[2]
        message = self._echo(f"token {token}")
        headers = {"X-Echo": self.headers["Authorization"], "X-Token": token}
        if "/echo/deny/" in self.route:
            self.send_json(403, {"errors": [{"code": "DENIED", "message": message}]}, headers)
        else:
            self.send_bytes(500, f"internal error: {message}".encode(), headers, "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        self.server.count(self.route)
        form = self.read_body().decode("utf-8", "replace")
        fields = {k: v[0] for k, v in parse_qs(form).items()}
        message = self._echo(f"form {form}", f"password field {fields.get('password', '')}")
        self.send_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": message}],
                             "error_description": message},
                       {"WWW-Authenticate": f'Basic realm="{fields.get("password", "")}"', "X-Form": form})

    def _token(self, query: dict[str, list[str]]) -> None:
        fx: HostileRegistry = self.fixture
        scope = (query.get("scope") or [""])[0]
        repo = scope.split(":")[1] if scope.count(":") == 2 else ""
        auth = self.headers.get("Authorization", "")
        _, password = _basic(auth)
        message = self._echo()
        headers = {"X-Echo": auth}
        if repo == "echo/oauth":
            self.send_json(405, {"errors": [{"code": "UNSUPPORTED", "message": message}]}, headers)
        elif repo == "echo/broken":
            self.send_bytes(500, f"internal error: {message}".encode(), headers, "text/plain; charset=utf-8")
        elif repo == "echo/ratelimit":
            self.send_json(429, {"errors": [{"code": "TOOMANYREQUESTS", "message": message}]}, headers)
        elif repo in ("echo/grant", "echo/deny"):
            token = fx.mint(password)
            self.send_json(200, {"token": token, "note": message})
        else:
            self.send_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": message}],
                                 "error_description": message}, headers)


class HostileRegistry(BackgroundHTTPServer):
    """Registry + token service that echoes credentials (see the module docstring).

    Attributes:
        tokens: every token it issued (to look for them in outputs).
        passwords: token -> the password it was issued for (echoed again on registry
            requests that carry the token).
    """

    def __init__(self, pki: PKI) -> None:
        super().__init__(_HostileHandler, pki.issue([LOOPBACK]))
        self.tokens: list[str] = []
        self.passwords: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def mint(self, password: str) -> str:
        """A new opaque token, remembered with the password it was issued for."""
        token = f"hostile-tok.{uuid.uuid4().hex}"
        with self._lock:
            self.tokens.append(token)
            self.passwords[token] = password
        return token


class _DripHandler(QuietHandler):
    def do_GET(self) -> None:
        fx: DripRegistry = self.fixture
        self.server.count(self.route)
        with fx.lock:
            fx.active += 1
        try:
            if fx.drip_headers:
                payload = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                payload = b"{" + b" " * 998 + b"}"
            for i in range(len(payload)):
                if fx.stopping.is_set():
                    return
                self.wfile.write(payload[i : i + 1])
                self.wfile.flush()
                time.sleep(fx.interval)
        except OSError:
            return  # the client gave up: that is the point
        finally:
            with fx.lock:
                fx.active -= 1
            self.close_connection = True

    do_HEAD = do_POST = do_GET


class DripRegistry(BackgroundHTTPServer):
    """HTTPS server that answers every request one byte per ``interval`` seconds.

    Args:
        pki: the test PKI (the certificate names 127.0.0.1).
        interval: seconds between bytes.
        drip_headers: drip the status line and headers too (else only the body).

    ``active`` counts requests being dripped right now.
    """

    def __init__(self, pki: PKI, interval: float = 1.0, drip_headers: bool = False) -> None:
        super().__init__(_DripHandler, pki.issue([LOOPBACK]))
        self.interval = interval
        self.drip_headers = drip_headers
        self.active = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        """Stop dripping, then stop serving."""
        self.stopping.set()
        super().stop()


def planted_forms(user: str, password: str, tokens: list[str]) -> list[str]:
    """What must never appear in any output: the secrets in every encoding they travelled in."""
    out: list[str] = []
    for secret in [password, f"{user}:{password}", *tokens]:
        raw = secret.encode()
        out += [secret, base64.b64encode(raw).decode(), json.dumps(secret)[1:-1], quote(secret, safe="")]
    return [s for s in out if len(s) >= 4]
