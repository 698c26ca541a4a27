"""A loopback HTTPS registry whose every answer is set by the test (for the fuzz suite).

``ScriptedRegistry.script`` maps a route kind (``challenge`` for ``/v2/``, ``token`` for
``/token``, ``manifest``, ``tags``, ``other``) to an :class:`Answer`. Header values are
sent as raw UTF-8 bytes, as a careless server would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ._common import LOOPBACK, BackgroundHTTPServer, QuietHandler
from .pki import PKI


@dataclass(frozen=True)
class Answer:
    """One scripted HTTP response."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class Script:
    """Answers by route kind; unscripted routes get 404."""

    answers: dict[str, Answer] = field(default_factory=dict)


def route_kind(path: str) -> str:
    """``challenge``, ``token``, ``manifest``, ``tags`` or ``other``."""
    path = path.split("?", 1)[0]
    if path == "/v2/":
        return "challenge"
    if path.startswith("/token"):
        return "token"
    if "/manifests/" in path:
        return "manifest"
    if path.endswith("/tags/list"):
        return "tags"
    return "other"


class _ScriptedHandler(QuietHandler):
    def _answer(self) -> None:
        fx: ScriptedRegistry = self.fixture
        self.server.count(route_kind(self.path))
        self.read_body()
        with fx.lock:
            answer = fx.script.answers.get(route_kind(self.path), Answer(404))
        self.send_response(answer.status)
        for key, value in answer.headers:
            self.send_header(key, value.encode("utf-8").decode("latin-1"))
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_HEAD = do_POST = _answer


class ScriptedRegistry(BackgroundHTTPServer):
    """HTTPS on 127.0.0.1 answering from :attr:`script`."""

    def __init__(self, pki: PKI) -> None:
        super().__init__(_ScriptedHandler, pki.issue([LOOPBACK]))
        self.script = Script()
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def set(self, answers: dict[str, Answer]) -> None:
        """Replace the script."""
        with self.lock:
            self.script = Script(dict(answers))
