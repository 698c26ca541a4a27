"""Classify pull-error text from kubelet, containerd, CRI-O and Docker. Pure, no I/O.

Accepted shapes: the raw runtime error; kubelet's ``Failed to pull image "x": ...`` with or
without the ``rpc error: code = ... desc = `` prefix (kubelet 1.28+ drops it); aggregated
``[e1, e2]`` messages (one per credential tried); ``Back-off pulling image "x"`` with or
without the previous error appended; ``az acr check-health`` error names.

Rules are ordered most specific first. Text that cannot tell causes apart gets a coarse
code (ACCESS_DENIED, IMAGE_NOT_FOUND) and the codes it may hide as ``candidates``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pullhealth import reference
from pullhealth.codes import CATALOG, Code
from pullhealth.diagnose import make
from pullhealth.model import Diagnosis


@dataclass(frozen=True)
class Rule:
    """A regular expression that, when found, means ``code``."""

    code: Code
    pattern: re.Pattern[str]
    candidates: tuple[Code, ...] = ()


def _r(code: Code, pattern: str, *candidates: Code) -> Rule:
    return Rule(code, re.compile(pattern, re.IGNORECASE | re.DOTALL), candidates)


_ACCESS = (Code.AUTH_REQUIRED, Code.CREDENTIALS_REJECTED, Code.PERMISSION_DENIED, Code.REPOSITORY_NOT_FOUND)
_NOT_FOUND = (Code.REPOSITORY_NOT_FOUND, Code.TAG_NOT_FOUND)

RULES: tuple[Rule, ...] = (
    # kubelet-side problems, before any registry text
    _r(
        Code.INVALID_IMAGE_NAME,
        r"invalid reference format|couldn't parse image (reference|name)"
        r"|InvalidImageName|Failed to apply default image tag|: object required\s*$"
        r"|invalid checksum digest",
    ),
    _r(
        Code.PULL_SECRET_MISSING,
        r"Unable to retrieve (some )?(image )?pull secrets?"
        r"|FailedToRetrieveImagePullSecret",
    ),
    _r(
        Code.PULL_SECRET_INVALID,
        r"Couldn't find key \.docker|failed to (parse|decode) "
        r"(docker ?config|dockercfg|\.dockerconfigjson)|illegal base64",
    ),
    _r(
        Code.PLATFORM_NOT_FOUND,
        r"no match for (current )?platform|no matching manifest for"
        r"|no image found in (image index|manifest list) for architecture"
        r"|does not match the specified platform",
    ),
    # identity providers (node / workload identity), before generic network text
    _r(
        Code.IDENTITY_UNAVAILABLE,
        r"CONNECTIVITY_AAD_LOGIN_ERROR|managed identity|AADSTS\d+"
        r"|169\.254\.169\.254|\bIMDS\b|failed to refresh cached credentials",
    ),
    # network path, from the bottom up
    _r(Code.DNS_NXDOMAIN, r"no such host|NXDOMAIN|Name or service not known"),
    _r(
        Code.DNS_TIMEOUT,
        r"lookup [^ ]+( on [^ ]+)?: (read udp [^ ]+->[^ ]+: )?(read: )?"
        r"(i/o timeout|connection refused)"
        r"|server misbehaving|Temporary failure in name resolution|dial udp [^ ]+:53",
    ),
    _r(
        Code.TLS_HOSTNAME_MISMATCH,
        r"x509: certificate is (valid for|not valid for any names)"
        r"|certificate is not valid for|doesn't match any name",
    ),
    _r(
        Code.TLS_UNTRUSTED,
        r"x509: certificate signed by unknown authority|unknown authority"
        r"|x509: certificate has expired|certificate is not yet valid|self[- ]signed certificate"
        r"|unable to get local issuer certificate|CERTIFICATE_VERIFY_FAILED",
    ),
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"server gave HTTP response to HTTPS client|first record does "
        r"not look like a TLS handshake|tls: (?!.*certificate)[a-z ]+error|remote error: tls"
        r"|wrong version number|tls: handshake failure",
    ),
    _r(Code.CONNECT_REFUSED, r"connection refused|actively refused"),
    _r(
        Code.CONNECT_TIMEOUT,
        r"dial tcp [^ ]+: (i/o timeout|connect: connection timed out)"
        r"|connect: (no route to host|network is unreachable)|TLS handshake timeout"
        r"|context deadline exceeded|Client\.Timeout exceeded|connection timed out"
        r"|i/o timeout",
    ),
    # the connection broke mid-handshake: a middlebox or a non-TLS listener
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"connection reset by peer|\": EOF\s*$|: EOF\s*$",
        Code.FIREWALL_FORBIDDEN,
        Code.CONNECT_REFUSED,
    ),
    # registry answers
    _r(
        Code.FIREWALL_FORBIDDEN,
        r"client with IP '[^']+' is not allowed access|aka\.ms/acr/firewall"
        r"|CONNECTIVITY_FORBIDDEN_ERROR",
    ),
    _r(Code.RATE_LIMITED, r"429 Too Many Requests|toomanyrequests|pull rate limit|\b429\b"),
    _r(
        Code.REGISTRY_ERROR,
        r"\b50[0-4] (Internal Server Error|Bad Gateway|Service Unavailable"
        r"|Gateway Time-?out)|received unexpected HTTP status: 5\d\d|status code 5\d\d"
        r"|could not fetch content descriptor [^ ]+ [^ ]+ from remote: not found|BLOB_UNKNOWN",
    ),
    _r(Code.TLS_PROTOCOL_ERROR, r"\b400 Bad Request", Code.REGISTRY_ERROR),
    _r(Code.CHALLENGE_ERROR, r"no realm specified|CONNECTIVITY_CHALLENGE_ERROR"),
    _r(Code.TOKEN_EXCHANGE_DENIED, r"oauth2/exchange|CONNECTIVITY_REFRESH_TOKEN_ERROR"),
    _r(
        Code.ACCESS_DENIED,
        r"pull access denied|repository does not exist or may require "
        r"authorization|requested access to the resource is denied",
        *_ACCESS,
    ),
    _r(Code.PERMISSION_DENIED, r"insufficient_scope|CONNECTIVITY_ACCESS_TOKEN_ERROR"),
    _r(
        Code.AUTH_REQUIRED,
        r"failed to fetch anonymous token[^\n]*401|no basic auth credentials",
        Code.ACCESS_DENIED,
    ),
    _r(Code.AUTH_REQUIRED, r"authentication required", Code.CREDENTIALS_REJECTED, Code.ACCESS_DENIED),
    _r(
        Code.CREDENTIALS_REJECTED,
        r"failed to fetch (oauth )?token[^\n]*401"
        r"|incorrect username or password|invalid username/password|authentication failed"
        r"|invalid credentials|unauthorized: (incorrect|invalid)|not registered with AAD",
    ),
    # A 403 from the token service: the registry answered its challenge, so no network rule
    # is in the way; missing permission, a private or missing repository remain.
    _r(
        Code.ACCESS_DENIED,
        r"(fetch (anonymous |oauth )?token|bear(er)? token|login attempt failed)[^\n]*(\b403\b|Forbidden)",
        Code.AUTH_REQUIRED,
        Code.PERMISSION_DENIED,
        Code.REPOSITORY_NOT_FOUND,
    ),
    # A bare 403 on the registry's own endpoints (manifests, blobs, /v2/): ACR's firewall
    # (registry or dedicated data endpoint) answers exactly this way; distribution-style
    # registries answer missing permission with 401, not 403.
    _r(Code.FIREWALL_FORBIDDEN, r"\b403\b|Forbidden", Code.PERMISSION_DENIED),
    _r(Code.ACCESS_DENIED, r"401 Unauthorized|unauthorized|authorization failed|denied", *_ACCESS),
    _r(Code.REPOSITORY_NOT_FOUND, r"NAME_UNKNOWN|name unknown|repository name not known"),
    # ACR names the tag when the repository exists but the tag does not.
    _r(Code.TAG_NOT_FOUND, r"manifest tagged by \"?[^ ]+\"? is not found"),
    # distribution answers MANIFEST_UNKNOWN for a missing repository too: coarse.
    _r(
        Code.IMAGE_NOT_FOUND,
        r"MANIFEST_UNKNOWN|manifest unknown|manifest for [^ ]+ not found"
        r"|\bnot found\b|404 Not Found|does not exist",
        *_NOT_FOUND,
    ),
)

_REF_PATTERNS = (
    re.compile(
        r"(?:Failed to pull image|failed to pull and unpack image|pulling image|"
        r"failed to resolve reference|Failed to apply default image tag|"
        r'Container image|Back-off pulling image)\s+\\?"([^"\\]+)\\?"'
    ),
)
_HOST = re.compile(r"lookup ([A-Za-z0-9.-]+)")
_DIAL = re.compile(r"dial tcp ([0-9a-fA-F.:\[\]]+)")
_CLIENT_IP = re.compile(r"client with IP '([^']+)'")
_RPC = re.compile(r"rpc error: code = \w+ desc = ")
_NEVER_PULL = re.compile(r"is not present with pull policy of Never|ErrImageNeverPull")
_BACKOFF_ONLY = re.compile(r'^\s*Back-off pulling image "[^"]+"\s*$')


def _split_aggregate(text: str) -> list[str]:
    """Split kubelet's ``[e1, e2]`` aggregate (one error per credential) at top level."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return [text]
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in body[1:-1]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0 and current.count('"') % 2 == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def _facts(text: str) -> dict[str, str]:
    facts: dict[str, str] = {"detail": _RPC.sub("", text.strip())[:300]}
    for pattern in _REF_PATTERNS:
        match = pattern.search(text)
        if match:
            facts["reference"] = match.group(1)
            try:
                ref = reference.parse(match.group(1))
            except reference.InvalidReference:
                break
            facts.update(
                registry=ref.registry,
                repository=ref.repository,
                tag=ref.manifest_ref,
                image=ref.familiar,
                host=ref.api_host.split(":")[0],
            )
            break
    host = _HOST.search(text)
    if host:
        facts["host"] = host.group(1)
    dial = _DIAL.search(text)
    if dial:
        facts["address"] = dial.group(1)
    ip = _CLIENT_IP.search(text)
    if ip:
        facts["client_ip"] = ip.group(1)
        facts["detail"] = f" (403); the registry saw client IP {ip.group(1)}"
    return facts


def match(text: str) -> Rule | None:
    """The first rule whose pattern occurs in text, or None."""
    return next((rule for rule in RULES if rule.pattern.search(text)), None)


def _check_health_codes(text: str) -> list[Code]:
    """Codes whose ``az acr check-health`` error name is exactly the text (first = likeliest)."""
    stripped = text.strip()
    return [code for code, info in CATALOG.items() if info.check_health_error == stripped]


def classify(text: str) -> Diagnosis:
    """Classify one pull-error message (any of the accepted shapes).

    Returns:
        A diagnosis: the most specific code the text supports, with candidates when the
        text is ambiguous. Empty or unrecognised text gives UNKNOWN.
    """
    facts = _facts(text)
    if not text.strip():
        return make(Code.UNKNOWN, {**facts, "detail": "no message"})
    named = _check_health_codes(text)
    if named:
        return make(named[0], facts, candidates=named[1:])
    if _NEVER_PULL.search(text):
        # The registry is never asked: the image is missing from the node itself.
        facts["registry"] = "the node (imagePullPolicy: Never)"
        return make(Code.IMAGE_NOT_FOUND, facts)
    if _BACKOFF_ONLY.match(text):
        facts["detail"] = (
            "kubelet is backing off after an earlier pull failure; the message "
            "does not say which: see the pod's Failed events"
        )
        return make(Code.UNKNOWN, facts)

    found: list[Rule] = []
    for part in _split_aggregate(text):
        rule = match(part)
        if rule:
            found.append(rule)
    if not found:
        return make(Code.UNKNOWN, facts)
    best = _most_specific(found)
    candidates = list(
        dict.fromkeys(
            [c for r in found for c in r.candidates] + [r.code for r in found if r.code != best.code]
        )
    )
    return make(best.code, facts, candidates=candidates)


def _most_specific(found: Sequence[Rule]) -> Rule:
    """Prefer a rule whose code is not coarse; among equals, the first (first credential)."""
    precise = [r for r in found if not CATALOG[r.code].coarse and r.code is not Code.UNKNOWN]
    return (precise or list(found))[0]
