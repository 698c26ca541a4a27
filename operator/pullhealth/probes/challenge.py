"""Challenge step: unauthenticated ``GET /v2/`` and what the registry asks for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pullhealth.domain.codes import Code
from pullhealth.probes.http import Http, Reply
from pullhealth.probes.net import StepError

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ERROR_MESSAGE = 300
_CLIENT_IP = re.compile(r"client with IP '([0-9A-Fa-f.:]{2,45})'")
# Retry-After (RFC 9110): delta-seconds or an HTTP date; anything else is not shown.
_RETRY_AFTER = re.compile(
    r"[0-9]{1,10}|[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


@dataclass(frozen=True)
class Challenge:
    """How the registry wants clients to authenticate.

    Attributes:
        scheme: ``bearer``, ``basic`` or ``none`` (anonymous registry).
        realm: token endpoint URL (bearer).
        service: the ``service`` parameter to send to the realm.
    """

    scheme: str
    realm: str = ""
    service: str = ""


def _usable_url(url: str) -> bool:
    """An http(s) URL with a host and a valid port (``https://[x`` or port 99999 is not)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("https", "http") and bool(parts.hostname) and url.isascii() and url.isprintable()


def parse_www_authenticate(value: str) -> Challenge | None:
    """Parse a Bearer or Basic challenge; None when it is neither, or when a Bearer realm
    is not a usable URL."""
    scheme, _, rest = value.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    if scheme.lower() == "bearer" and params.get("realm") and _usable_url(params["realm"]):
        return Challenge("bearer", params["realm"], params.get("service", ""))
    if scheme.lower() == "basic":
        return Challenge("basic", params.get("realm", ""))
    return None


def printable(text: str, limit: int) -> str:
    """One line of printable characters, at most ``limit`` long (what may be shown)."""
    line = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(line.split())[:limit]


def error_code(value: object) -> str:
    """An error code as shown: a short identifier, else ``?``."""
    text = str(value) if isinstance(value, str | int) else ""
    return text if _ERROR_CODE.fullmatch(text) else "?"


def error_messages(reply: Reply) -> list[str]:
    """``code: message`` of each error in an OCI error body (bounded, printable).

    This envelope is the only part of an answer that is ever shown: other bodies (a web
    server's page, an internal service's answer) are never echoed.
    """
    doc = reply.json()
    out: list[str] = []
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        for err in doc["errors"][:5]:
            if isinstance(err, dict):
                message = err.get("message", "")
                text = printable(message, MAX_ERROR_MESSAGE) if isinstance(message, str) else ""
                out.append(f"{error_code(err.get('code', '?'))}: {text}")
    return out


def error_codes(reply: Reply) -> set[str]:
    """The OCI error codes in a body (``NAME_UNKNOWN``, ``MANIFEST_UNKNOWN``, ...)."""
    return {m.split(":", 1)[0] for m in error_messages(reply)}


def error_code_list(reply: Reply) -> list[str]:
    """The OCI error codes of a body in order, without their messages (a token realm's
    answer shows no more: the realm may be a service the registry's author pointed at)."""
    return [m.split(":", 1)[0] for m in error_messages(reply)]


def retry_after(reply: Reply) -> str:
    """A ``Retry-After`` value as shown: delta-seconds or an HTTP date, else nothing."""
    value = reply.headers.get("Retry-After", "").strip()
    return value if _RETRY_AFTER.fullmatch(value) else ""


def fail_on_common(reply: Reply, host: str, what: str, *, codes_only: bool = False) -> None:
    """Raise for the answers every registry endpoint can give: 403 rules, 429, 5xx.

    ``codes_only``: show the OCI error codes but not their messages (token realm answers).
    """
    messages = error_code_list(reply) if codes_only else error_messages(reply)
    text = "; ".join(messages)  # never the raw body: only the OCI error envelope is shown
    if reply.status == 403:
        ip = _CLIENT_IP.search(text)
        if ip or "firewall" in text.lower() or what == "GET /v2/":
            detail = f" (403); the registry saw client IP {ip.group(1)}" if ip else " (403)"
            raise StepError(
                Code.FIREWALL_FORBIDDEN,
                f"{what} on {host} answered 403 Forbidden: {text or 'no body'}",
                detail=detail,
                client_ip=ip.group(1) if ip else "",
            )
    if reply.status == 429:
        retry = retry_after(reply)
        raise StepError(
            Code.RATE_LIMITED,
            f"{what} on {host} answered 429 Too Many Requests"
            + (f" (Retry-After {retry})" if retry else "")
            + (f": {text}" if text else ""),
            **({"retry_after": retry} if retry else {}),
        )
    if reply.status >= 500:
        raise StepError(
            Code.REGISTRY_ERROR,
            f"{what} on {host} answered {reply.status}" + (f": {text}" if text else ""),
            detail=f"HTTP {reply.status}",
        )


async def probe_challenge(http: Http, registry_host: str) -> Challenge:
    """``GET https://<registry>/v2/`` without credentials.

    Raises:
        StepError: FIREWALL_FORBIDDEN, RATE_LIMITED, REGISTRY_ERROR or CHALLENGE_ERROR.
    """
    reply = await http.request("GET", f"https://{registry_host}/v2/")
    fail_on_common(reply, registry_host, "GET /v2/")
    if reply.status == 200:
        return Challenge("none")
    if reply.status == 401:
        header = reply.headers.get("WWW-Authenticate", "")
        challenge = parse_www_authenticate(header)
        if challenge:
            return challenge
        raise StepError(
            Code.CHALLENGE_ERROR,
            "GET /v2/ answered 401 without a usable Bearer or Basic WWW-Authenticate challenge",
            detail="401 without a Bearer or Basic challenge",
        )
    raise StepError(
        Code.CHALLENGE_ERROR,
        f"GET /v2/ on {registry_host} answered {reply.status}; a registry answers 200 or 401",
        detail=f"HTTP {reply.status} to GET /v2/",
    )
