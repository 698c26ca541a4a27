"""Classify pull-error text from kubelet, containerd, CRI-O and Docker. Pure, no I/O.

Accepted shapes: the raw runtime error; kubelet's ``Failed to pull image "x": ...`` with or
without the ``rpc error: code = ... desc = `` prefix (kubelet 1.28+ drops it); aggregated
``[e1, e2]`` messages (one per credential tried); ``Back-off pulling image "x"`` with or
without the previous error appended; ``az acr check-health`` error names.

Rules are ordered most specific first. Text that cannot tell causes apart gets a coarse
code (ACCESS_DENIED, IMAGE_NOT_FOUND) and the codes it may hide as ``candidates``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pullhealth.domain import reference
from pullhealth.domain.codes import CATALOG, Code
from pullhealth.domain.diagnose import LAYER_OF_CODE, Layer, make
from pullhealth.domain.model import Diagnosis


@dataclass(frozen=True)
class Rule:
    """A regular expression that, when found, means ``code``.

    ``layer`` is how far the pull got when the text is seen (the code's usual layer unless
    the rule says otherwise); ``detail`` replaces the quoted text in the summary when the
    rule knows better words for it.
    """

    code: Code
    pattern: re.Pattern[str]
    candidates: tuple[Code, ...] = ()
    layer: Layer | None = None
    detail: str | None = None

    @property
    def reached(self) -> Layer | None:
        """The layer of the failure this rule recognises (None: not a network failure)."""
        return self.layer if self.layer is not None else LAYER_OF_CODE.get(self.code)


def _r(
    code: Code, pattern: str, *candidates: Code, layer: Layer | None = None, detail: str | None = None
) -> Rule:
    return Rule(code, re.compile(pattern, re.IGNORECASE | re.DOTALL), candidates, layer, detail)


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
    # Node-local causes (issue 24): kubelet or the runtime on the node stopped the pull.
    # kubelet's own pull rate limit (registryPullQPS/registryBurst): the registry is never asked.
    _r(Code.PULL_QPS_EXCEEDED, r"pull QPS exceeded"),
    # The image filesystem is full while a layer is written or unpacked.
    _r(Code.NODE_DISK_FULL, r"no space left on device"),
    # The runtime's signature policy (CRI-O, containers/image): kubelet 1.28+ names the CRI error
    # SignatureValidationFailed; containers/image says "Source image rejected: ...".
    _r(Code.IMAGE_SIGNATURE_REJECTED, r"SignatureValidationFailed|Source image rejected"),
    _r(
        Code.PLATFORM_NOT_FOUND,
        r"no match for (current )?platform|no matching manifest for"
        r"|no image found in (image index|manifest list) for architecture"
        r"|does not match the specified platform",
    ),
    # The egress proxy failed, before any network text: Go prefixes the proxy's own dial,
    # TLS and DNS errors with "proxyconnect tcp:", and a proxy that refuses CONNECT or wants
    # credentials answers 403/407 to the tunnel request, not the registry.
    _r(
        Code.PROXY_ERROR,
        r"proxyconnect tcp|Proxy Authentication Required|\b407 Proxy|status:? 407\b"
        r"|error connecting to proxy"
        r"|proxy (server )?(refused|rejected)|CONNECT tunnel failed|tunnel (connection )?failed"
        r"|failed to connect to proxy|Unable to connect to proxy",
        Code.CONNECT_REFUSED,
        Code.CONNECT_TIMEOUT,
    ),
    # identity providers (node / workload identity), before generic network text
    _r(
        Code.IDENTITY_UNAVAILABLE,
        r"CONNECTIVITY_AAD_LOGIN_ERROR|managed identity|AADSTS\d+"
        r"|169\.254\.169\.254|\bIMDS\b|failed to refresh cached credentials",
    ),
    # network path, from the bottom up
    _r(Code.DNS_NXDOMAIN, r"no such host|NXDOMAIN|Name or service not known"),
    # Go says "server misbehaving" for a SERVFAIL or REFUSED answer; glibc "Temporary
    # failure in name resolution" for the same or no answer.
    _r(
        Code.DNS_TIMEOUT,
        r"server misbehaving|Temporary failure in name resolution",
        Code.DNS_NXDOMAIN,
        detail="the DNS server answered SERVFAIL or REFUSED, or no server answered",
    ),
    _r(
        Code.DNS_TIMEOUT,
        r"lookup [^ ]+( on [^ ]+)?: (read udp [^ ]+->[^ ]+: )?(read: )?"
        r"(i/o timeout|connection refused)|dial udp [^ ]+:53",
        detail="no DNS server answered in time (or the DNS server's port refused the query)",
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
    # Plain HTTP on one side, TLS on the other. Go's client says "server gave HTTP response
    # to HTTPS client" when a plain-HTTP server answers its ClientHello, and "malformed HTTP
    # response" (the bytes of a TLS alert, \x15\x03...) when it spoke plain HTTP to a TLS
    # server (an "insecure"/http:// registry setting, or HTTPS_PROXY pointing at a TLS port).
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"server gave HTTP response to HTTPS client|first record does not look like a TLS "
        r"handshake|oversized record received",
        Code.PROXY_ERROR,
        detail="the server answered in plain HTTP: nothing speaks TLS on that port (a plain-HTTP "
        "registry, or a proxy or load balancer answering there)",
    ),
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"malformed HTTP response",
        Code.PROXY_ERROR,
        detail="plain HTTP was sent to a port that speaks TLS (an http:// or insecure-registry "
        "setting for a TLS registry, or HTTP(S)_PROXY pointing at a TLS port)",
    ),
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"tls: (?!.*certificate)[a-z ]+error|remote error: tls|wrong version number"
        r"|tls: handshake failure",
    ),
    _r(Code.CONNECT_REFUSED, r"connection refused|actively refused"),
    # A bare "context deadline exceeded" / "context canceled" names no request, host or dial:
    # the pull as a whole was cut off (a large image against the runtime's request timeout
    # or progress deadline: kubernetes#59376, minikube#14789), which a stalled network also
    # explains. A deadline inside a named request ("failed to do request", a dial) stays a
    # network timeout below. The pull's timeline decides where it is known (refine_by_timeline).
    _r(
        Code.PULL_TIMED_OUT,
        r"^(?!.*(?:failed to do request|failed to resolve|dial tcp|lookup |i/o timeout"
        r"|Client\.Timeout|handshake|request canceled))"
        r".*(?:^|desc = |: )context (?:deadline exceeded|canceled)\s*$",
        Code.CONNECT_TIMEOUT,
    ),
    _r(
        Code.CONNECT_TIMEOUT,
        r"dial tcp [^ ]+: (i/o timeout|connect: connection timed out)"
        r"|connect: (no route to host|network is unreachable)|TLS handshake timeout"
        r"|context deadline exceeded|Client\.Timeout exceeded|connection timed out"
        r"|i/o timeout",
    ),
    # A reset after the connection was accepted: registries do not reset a ClientHello,
    # firewalls, DPI and TLS-inspecting proxies on the path do.
    _r(
        Code.FIREWALL_FORBIDDEN,
        r"connection reset by peer|forcibly closed by the remote host",
        Code.PROXY_ERROR,
        Code.TLS_PROTOCOL_ERROR,
        layer=Layer.TLS,
        detail=" (the connection was reset after it was accepted: a firewall, DPI or "
        "TLS-inspecting proxy between the node and the registry usually does this)",
    ),
    # EOF right after the ClientHello: a non-TLS listener or a middlebox
    _r(
        Code.TLS_PROTOCOL_ERROR,
        r"\": EOF\s*$|: EOF\s*$",
        Code.FIREWALL_FORBIDDEN,
        Code.CONNECT_REFUSED,
    ),
    # registry answers
    _r(
        Code.FIREWALL_FORBIDDEN,
        r"client with IP '[^']+' is not allowed access|aka\.ms/acr/firewall"
        r"|CONNECTIVITY_FORBIDDEN_ERROR",
    ),
    # ACR's 401 for a user name it knows as no admin user, token or Azure AD application in
    # its tenant (a service principal missing there, a multitenant app not provisioned, or a
    # wrong user name): its own cause, not a wrong password.
    _r(
        Code.AAD_APP_NOT_REGISTERED,
        r"Application not registered with AAD",
        Code.CREDENTIALS_REJECTED,
    ),
    # Expired credentials: ECR's registry tokens last 12 hours ("Your authorization token
    # has expired"); other registries and cloud identities say "token expired" / "expired".
    _r(
        Code.CREDENTIALS_REJECTED,
        r"(authorization|access|auth|registry|bearer|identity) token (has |is )?expired"
        r"|\btoken (has )?expired|expired (access |auth |bearer |registry )?token|ExpiredToken"
        r"|credentials? (have |has )?expired|password (has )?expired",
        Code.IDENTITY_UNAVAILABLE,
    ),
    # Cloud IAM wordings. The identity authenticated but lacks the permission: ECR's
    # "is not authorized to perform: ecr:BatchGetImage", Artifact Registry's
    # 'Permission "artifactregistry.repositories.downloadArtifacts" denied ... (or it may not
    # exist)'. Anonymous requests say so: "Unauthenticated requests do not have permission".
    _r(
        Code.AUTH_REQUIRED,
        r"Unauthenticated requests do not have permission|anonymous (caller|user)s? "
        r"(does|do) not have",
        Code.REPOSITORY_NOT_FOUND,
        Code.PERMISSION_DENIED,
    ),
    _r(
        Code.PERMISSION_DENIED,
        r"is not authorized to perform: ecr:|no (identity|resource)-based policy allows"
        r"|Permission [\"']?artifactregistry\.[a-zA-Z.]+[\"']? denied"
        r"|does not have (storage\.objects\.get|artifactregistry\.[a-zA-Z.]+) access"
        r"|Token exchange failed for project [^\n]*Caller does not have permission"
        r"|permission_denied: The token provided does not match expected scopes",
        Code.REPOSITORY_NOT_FOUND,
    ),
    # GHCR: a personal access token that is wrong, revoked or expired.
    _r(
        Code.CREDENTIALS_REJECTED,
        r"unauthenticated: User cannot be authenticated with the token provided",
        Code.AUTH_REQUIRED,
    ),
    # GCR/Artifact Registry's 401 names both causes: coarse.
    _r(
        Code.ACCESS_DENIED,
        r"You don't have the needed permissions to perform this operation, and you may have "
        r"invalid credentials|please verify that it exists and you have permission",
        Code.PERMISSION_DENIED,
        Code.CREDENTIALS_REJECTED,
        Code.AUTH_REQUIRED,
        Code.REPOSITORY_NOT_FOUND,
    ),
    _r(Code.RATE_LIMITED, r"429 Too Many Requests|toomanyrequests|pull rate limit|\b429\b"),
    _r(
        Code.REGISTRY_ERROR,
        r"\b50[0-4] (Internal Server Error|Bad Gateway|Service Unavailable"
        r"|Gateway Time-?out)|received unexpected HTTP status: 5\d\d|status code 5\d\d"
        r"|could not fetch content descriptor [^ ]+ [^ ]+ from remote: not found|BLOB_UNKNOWN",
    ),
    # Go's client ends with the bare status text for a registry's (or a proxy's) 5xx.
    _r(
        Code.REGISTRY_ERROR,
        r": (Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out)\.?\s*$",
        Code.PROXY_ERROR,
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
        r"|invalid credentials|unauthorized: (incorrect|invalid)",
    ),
    # docker login's 403 on GET /v2/ itself: ACR's guide sends this to its network
    # troubleshooting (a firewall rule), though missing permission answers it too.
    _r(
        Code.ACCESS_DENIED,
        r"login attempt failed with status: 403",
        Code.FIREWALL_FORBIDDEN,
        Code.PERMISSION_DENIED,
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
    # A bare 403 on the registry's own endpoints (manifests, blobs, /v2/). On an ACR host
    # (registry or dedicated data endpoint) that is how its firewall answers when the body
    # is not quoted. Everywhere else (ECR, GCR/Artifact Registry, Quay, Harbor, ...) a 403
    # means the identity may not pull, or the repository went private or away.
    # A 403 from the storage/CDN host a registry redirects blob downloads to (pre-signed
    # URLs): an egress firewall or proxy that allows the registry but not its data host.
    _r(
        Code.FIREWALL_FORBIDDEN,
        r"https://[^/\s\"]*(?:\.cloudfront\.net|\.r2\.cloudflarestorage\.com|storage\.googleapis\.com"
        r"|\.s3[.-][^/\s\"]*amazonaws\.com|\.blob\.core\.windows\.net|production\.cloudflare\.docker\.com)"
        r"/[^\s]*:?\s+(?:403\b|Forbidden)",
        Code.PROXY_ERROR,
        Code.PERMISSION_DENIED,
        detail=" (403 from the registry's storage/CDN host that blob downloads are redirected to: "
        "an egress firewall or proxy that allows the registry but not its data host)",
    ),
    _r(
        Code.FIREWALL_FORBIDDEN,
        r"^(?=.*\.azurecr\.(?:io|cn|us)\b).*(?:\b403\b|Forbidden)",
        Code.PERMISSION_DENIED,
        detail=" (403 Forbidden without a body)",
    ),
    _r(
        Code.PERMISSION_DENIED,
        r"\b403\b|Forbidden",
        Code.REPOSITORY_NOT_FOUND,
        Code.FIREWALL_FORBIDDEN,
        Code.PROXY_ERROR,  # Go reports a proxy refusing CONNECT as the bare "Forbidden"
    ),
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
_URL = re.compile(r"https?://([A-Za-z0-9.-]+(?::\d+)?)/v[12]/(?:([a-z0-9._/-]+?)/(?:manifests|blobs|tags)/)?")
_DENIED_FOR = re.compile(r"pull access denied for ([a-z0-9._/:-]+?),")
# The proxy's host:port only: a proxy URL's user:password@ is never kept.
_PROXY = re.compile(
    r"proxyconnect tcp: dial tcp(?:: lookup ([A-Za-z0-9.-]+)| ([^\s:]*:\d+))"
    r"|error connecting to proxy \S*?://(?:[^@\s/]*@)?([^/\s]+?)(?::? |/|$)"
)
_DIAL = re.compile(r"dial tcp ([0-9a-fA-F.:\[\]]+)")
_CLIENT_IP = re.compile(r"client with IP '([^']+)'")
_AADSTS = re.compile(r"\bAADSTS(\d{5,8})\b")
_RPC = re.compile(r"rpc error: code = \w+ desc = ")
_NEVER_PULL = re.compile(r"is not present with pull policy of Never|ErrImageNeverPull")
_BACKOFF_ONLY = re.compile(r'^\s*Back-off pulling image "[^"]+"\s*$')


_MULTI_HEAD = re.compile(r"\b\d+ errors occurred[^:\n]*:\s*(?=\n|\t|\*)")
_MULTI_ITEM = re.compile(r"\n\s*\*\s+")
_DOCKER_ERRORS = re.compile(r"^\s*errors:\s*\n")


def _split_aggregate(text: str) -> list[str]:
    """Split an aggregate of errors into its members.

    Shapes: kubelet's ``[e1, e2]`` (one error per credential, or old kubelet+docker
    retries); containers/image's (CRI-O, podman) ``N errors occurred:\n\t* e1\n\t* e2``
    (one per registry or mirror tried); Docker's ``errors:\ne1\ne2``.
    """
    body = text.strip()
    head = _MULTI_HEAD.search(body)
    if head:
        items = [p.strip() for p in _MULTI_ITEM.split(body[head.end() :])]
        items = [p for p in items if p]
        if len(items) > 1:
            return items
    if _DOCKER_ERRORS.match(body):
        items = [line.strip() for line in body.splitlines()[1:] if line.strip()]
        if items:
            return items
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
    url = _URL.search(text)
    if url:
        facts.setdefault("registry", url.group(1))
        facts.setdefault("host", url.group(1).split(":")[0])
        if url.group(2):
            facts.setdefault("repository", url.group(2))
    denied = _DENIED_FOR.search(text)
    if denied and "repository" not in facts:
        try:
            named = reference.parse(denied.group(1))
        except reference.InvalidReference:
            pass
        else:
            facts.setdefault("registry", named.registry)
            facts.update(repository=named.repository, image=named.familiar)
    proxy = _PROXY.search(text)
    if proxy:
        facts["proxy"] = next(g for g in proxy.groups() if g)
    host = _HOST.search(text)
    if host and (not proxy or host.group(1) != facts["proxy"]):
        facts["host"] = host.group(1)
    dial = _DIAL.search(text)
    if dial:
        facts["address"] = dial.group(1)
    aadsts = _AADSTS.search(text)
    if aadsts:
        facts["aadsts"] = f"AADSTS{aadsts.group(1)}"  # Azure AD's error code picks the ACR case
    ip = _CLIENT_IP.search(text)
    if ip:
        facts["client_ip"] = ip.group(1)
        facts["detail"] = f" (403); the registry saw client IP {ip.group(1)}"
    return facts


DECIDE_CACHE_SIZE = 1024
DECIDE_CACHE_TEXT = 4096  # longer texts are matched each time, never kept


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

    found = _decide(text)
    if not found:
        return make(Code.UNKNOWN, facts)
    best = found[0]
    if best.detail is not None:
        facts["detail"] = best.detail
    candidates = list(
        dict.fromkeys(
            [c for r in found for c in r.candidates] + [r.code for r in found if r.code != best.code]
        )
    )
    return make(best.code, facts, candidates=candidates)


def _decide(text: str) -> tuple[Rule, ...]:
    """The rules found in each member of the text, the deciding one first.

    A thousand pods failing on one image carry one text: the answer for recent texts of
    ordinary length is remembered (the rules are fixed; a bounded cache).
    """
    if len(text) > DECIDE_CACHE_TEXT:
        return _decide_uncached(text)
    return _decide_cached(text)


def _decide_uncached(text: str) -> tuple[Rule, ...]:
    found = [rule for rule in (match(part) for part in _split_aggregate(text)) if rule is not None]
    if not found:
        return ()
    best = _most_specific(found)
    return (best, *(r for r in found if r is not best))


_decide_cached = functools.lru_cache(maxsize=DECIDE_CACHE_SIZE)(_decide_uncached)


def reached(text: str) -> Layer | None:
    """How far the pull described by the text got (the layer its failure is at).

    None when the text names no failure on the network path (kubelet-side problems,
    unknown text). Pod diagnosis compares this with the layer the operator's own probe
    failed at.
    """
    if not text.strip() or _check_health_codes(text) or _NEVER_PULL.search(text):
        return None
    found = _decide(text)
    return found[0].reached if found else None


def _most_specific(found: Sequence[Rule]) -> Rule:
    """The member that says most: a registry's own answer (HTTP layer or later) over a
    transport failure of another path (a mirror, a retry), a precise code over a coarse
    one; among equals, the first (first credential or registry tried)."""

    def rank(rule: Rule) -> tuple[int, int]:
        layer = rule.reached
        answered = layer is not None and layer >= Layer.HTTP
        precise = not CATALOG[rule.code].coarse and rule.code is not Code.UNKNOWN
        return (0 if answered else 1, 0 if precise else 1)

    return min(found, key=rank)


# A pull cut off this soon after kubelet's Pulling Event cannot have been a long transfer
# against the runtime's timeouts (containerd's progress deadline is minutes, kubelet's and
# cri-dockerd's request timeouts 1-2 minutes): the network stopped answering.
SHORT_PULL_SECONDS = 30.0


def refine_by_timeline(diagnosis: Diagnosis, pulling_for: float | None) -> Diagnosis:
    """Tell a long pull from a network timeout by how long the pull ran before it failed.

    Args:
        diagnosis: what the message alone says (``classify``).
        pulling_for: seconds from kubelet's ``Pulling`` Event to the failure, None when not
            known (then both candidates stay, as the text alone gives them).
    """
    if diagnosis.code is not Code.PULL_TIMED_OUT or pulling_for is None or pulling_for < 0:
        return diagnosis
    ran = f"{pulling_for:.0f}s"
    if pulling_for < SHORT_PULL_SECONDS:
        facts = {**diagnosis.facts, "detail": f"the pull failed {ran} after it started, too soon "
                 "for a long transfer: the registry or the network stopped answering"}
        return make(Code.CONNECT_TIMEOUT, facts, candidates=[Code.PULL_TIMED_OUT])
    facts = {**diagnosis.facts, "detail": f"after {ran} of pulling"}
    return make(Code.PULL_TIMED_OUT, facts, candidates=list(diagnosis.candidates))
