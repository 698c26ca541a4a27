"""A distribution-spec / ACR-style token server that docker-registry trusts."""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import load_pem_x509_certificate

from ._common import BackgroundHTTPServer, QuietHandler
from .azure import AADTokenBook
from .pki import PKI

# ACR's convention: Basic auth with this user name and a refresh token as password.
ACR_REFRESH_USER = "00000000-0000-0000-0000-000000000000"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_jwt(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """Return ``(header, claims)`` of a JWT without verifying it (for assertions)."""
    head, body, _sig = token.split(".")

    def part(s: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        return doc

    return part(head), part(body)


class JWTSigner:
    """Signs registry tokens with a leaf key whose chain goes into ``x5c``.

    A dedicated CA (not the TLS one) issues the signing cert; its certificate is
    written to ``rootcertbundle`` for docker-registry's ``auth.token`` config.
    """

    def __init__(self, directory: Path, alg: str = "RS256") -> None:
        """Create the signing CA and key; ``alg`` is ``RS256`` or ``ES256``."""
        if alg not in ("RS256", "ES256"):
            raise ValueError(f"unsupported alg {alg}")
        self.alg = alg
        key_type = trustme.KeyType.RSA if alg == "RS256" else trustme.KeyType.ECDSA
        ca = trustme.CA(organization_name="pullhealth token signing CA", key_type=key_type)
        leaf = ca.issue_cert("token-signer.test", key_type=key_type)
        directory.mkdir(parents=True, exist_ok=True)
        self.rootcertbundle = directory / "token-root.pem"
        ca.cert_pem.write_to_path(str(self.rootcertbundle))
        self._key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        # x5c is standard (not URL-safe) base64 DER, leaf first.
        self.x5c = [
            base64.b64encode(
                load_pem_x509_certificate(pem.bytes()).public_bytes(serialization.Encoding.DER)
            ).decode()
            for pem in leaf.cert_chain_pems
        ]

    def sign(self, claims: Mapping[str, object]) -> str:
        """Return a compact JWS for ``claims``."""
        header = {"typ": "JWT", "alg": self.alg, "x5c": self.x5c}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        ).encode()
        if isinstance(self._key, rsa.RSAPrivateKey):
            sig = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(self._key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JOSE wants raw r||s
        else:  # pragma: no cover
            raise TypeError("unexpected key type")
        return f"{signing_input.decode()}.{_b64url(sig)}"


@dataclass(frozen=True)
class Grant:
    """Actions allowed (or, with ``deny``, removed) on repos matching a glob."""

    repo: str
    actions: frozenset[str] = frozenset({"pull"})
    deny: bool = False

    @staticmethod
    def of(repo: str, *actions: str, deny: bool = False) -> Grant:
        """Shorthand: ``Grant.of("team/*", "pull", "push")``."""
        return Grant(repo, frozenset(actions), deny)


@dataclass(frozen=True)
class Scope:
    """One parsed ``type:name:actions`` scope."""

    type: str
    name: str
    actions: tuple[str, ...]


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse repeated and/or space-separated scope strings."""
    out = []
    for value in values:
        for item in value.split():
            head, _, actions = item.rpartition(":")
            rtype, _, name = head.partition(":")
            if rtype and name:
                out.append(Scope(rtype, name, tuple(a for a in actions.split(",") if a)))
    return out


def allowed_access(grants: Iterable[Grant], scopes: Iterable[Scope]) -> list[dict[str, object]]:
    """The ``access`` claim: requested actions intersected with grants.

    Entries left with no action are dropped, as distribution token servers do.
    """
    grants = list(grants)
    access: list[dict[str, object]] = []
    for scope in scopes:
        if scope.type != "repository":
            continue
        allowed: set[str] = set()
        denied: set[str] = set()
        for g in grants:
            if fnmatch.fnmatchcase(scope.name, g.repo):
                (denied if g.deny else allowed).update(g.actions)
        if "*" in allowed:
            allowed |= set(scope.actions)
        actions = [a for a in scope.actions if a in allowed and a not in denied]
        if actions:
            access.append({"type": "repository", "name": scope.name, "actions": actions})
    return access


@dataclass
class TokenPolicy:
    """Who may do what.

    Attributes:
        users: username -> password (Basic auth and grant_type=password).
        grants: principal (username or AAD identity name) -> grants.
        anonymous: grants for requests without credentials.
        aad_identities: AAD identity names accepted by ``/oauth2/exchange``
            (grants come from ``grants``); empty means any identity in the book.
        disabled: users that are ACR repository-scoped tokens with status ``disabled``
            (``az acr token update --status disabled``): refused like a wrong password.
    """

    users: dict[str, str] = field(default_factory=dict)
    grants: dict[str, list[Grant]] = field(default_factory=dict)
    anonymous: list[Grant] = field(default_factory=list)
    aad_identities: set[str] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)


def _basic_user(header: str) -> str:
    """The user name of a Basic Authorization header ('' when it has none)."""
    try:
        return base64.b64decode(header.partition(" ")[2].strip()).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


# ACR's 401 bodies (code UNAUTHORIZED): a known account with a wrong password (or a disabled
# token), and a user name ACR knows as no admin user, token or Azure AD application
# (seen for wrong user names: Azure/azure-cli#29659, MicrosoftDocs/azure-docs#84204).
ACR_AUTH_REQUIRED = "authentication required, visit https://aka.ms/acr/authorization for more information."
ACR_APP_NOT_REGISTERED = "Application not registered with AAD."


def _err(code: str, message: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": message}]}


@dataclass(frozen=True)
class Login:
    """One username/password presented to the token endpoint (the password is not kept)."""

    user: str
    accepted: bool
    user_agent: str
    scopes: tuple[str, ...]


def _basic_user(header: str) -> str:
    """The user name of a ``Basic`` Authorization header ("" if unreadable)."""
    with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
        return base64.b64decode(header.partition(" ")[2].strip()).decode().partition(":")[0]
    return ""


class _TokenHandler(QuietHandler):
    def do_GET(self) -> None:
        fx: TokenServer = self.fixture
        self.server.count(self.route)
        fx.pause()
        if self.route != "/oauth2/token":
            self.send_json(404, _err("NOT_FOUND", "not found"))
            return
        if not fx.allow_get:
            # Some OAuth2-only token endpoints accept POST forms only.
            self.send_json(405, _err("UNSUPPORTED", "method not allowed"), {"Allow": "POST"})
            return
        q = parse_qs(self.path.partition("?")[2], keep_blank_values=True)
        service = (q.get("service") or [fx.service])[0]
        if service != fx.service:
            self.send_json(400, _err("UNAUTHORIZED", f"invalid service {service!r}"))
            return
        principal: str | None = None
        auth = self.headers.get("Authorization")
        if auth:
            principal = fx.authenticate_basic(auth)
            fx.record(_basic_user(auth), principal is not None, self.headers.get("User-Agent", ""),
                      q.get("scope", []))
            if principal is None:
                self._unauthorized(fx.refusal(_basic_user(auth)))
                return
        now = int(time.time())
        token = fx.issue(principal, parse_scopes(q.get("scope", [])))
        self.send_json(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": fx.expires_in,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            },
        )

    def do_POST(self) -> None:
        fx: TokenServer = self.fixture
        self.server.count(self.route)
        fx.pause()
        form = {k: v[0] for k, v in parse_qs(self.read_body().decode()).items()}
        if self.route == "/oauth2/exchange":
            self._exchange(fx, form)
        elif self.route == "/oauth2/token":
            self._oauth_token(fx, form)
        else:
            self.send_json(404, _err("NOT_FOUND", "not found"))

    def _unauthorized(self, message: str) -> None:
        fx: TokenServer = self.fixture
        self.send_json(
            401,
            _err("UNAUTHORIZED", message),
            {"WWW-Authenticate": f'Basic realm="{fx.realm}"'},
        )

    def _oauth_token(self, fx: TokenServer, form: dict[str, str]) -> None:
        if form.get("service", fx.service) != fx.service:
            self.send_json(400, _err("UNAUTHORIZED", "invalid service"))
            return
        grant_type = form.get("grant_type")
        principal: str | None
        if grant_type == "password":
            principal = fx.check_password(form.get("username", ""), form.get("password", ""))
            fx.record(form.get("username", ""), principal is not None, self.headers.get("User-Agent", ""),
                      form.get("scope", "").split())
            if principal is None:
                self._unauthorized(fx.refusal(form.get("username", "")))
                return
        elif grant_type == "refresh_token":
            principal = fx.refresh_principal(form.get("refresh_token", ""))
        else:
            self.send_json(400, _err("UNSUPPORTED", f"unsupported grant_type {grant_type!r}"))
            return
        if principal is None:
            self._unauthorized("authentication required, invalid credentials")
            return
        token = fx.issue(principal, parse_scopes([form.get("scope", "")]))
        self.send_json(200, {"access_token": token, "expires_in": fx.expires_in})

    def _exchange(self, fx: TokenServer, form: dict[str, str]) -> None:
        if form.get("grant_type") != "access_token":
            self.send_json(400, _err("UNSUPPORTED", "grant_type must be access_token"))
            return
        if form.get("service", "") != fx.service:
            self.send_json(400, _err("UNAUTHORIZED", "invalid service"))
            return
        info = fx.aad_book.lookup(form.get("access_token", "")) if fx.aad_book else None
        tenant = form.get("tenant")
        if (
            info is None
            or (tenant and tenant != info.tenant)
            or (fx.policy.aad_identities and info.identity not in fx.policy.aad_identities)
            or (not fx.arm_audience_enabled and "management." in info.audience)
        ):
            self.send_json(
                401,
                _err(
                    "UNAUTHORIZED",
                    "The access token provided is invalid or expired. "
                    "Visit https://aka.ms/acr/authorization for more information.",
                ),
                {"WWW-Authenticate": f'Bearer realm="{fx.realm}",service="{fx.service}"'},
            )
            return
        self.send_json(200, {"refresh_token": fx.issue_refresh(info.identity)})


class TokenServer(BackgroundHTTPServer):
    """HTTPS token server: ``GET/POST /oauth2/token`` and ``POST /oauth2/exchange``.

    Attributes:
        service: The ``aud`` of issued tokens (docker-registry's ``auth.token.service``).
        issuer: The ``iss`` of issued tokens.
        rootcertbundle: PEM the registry needs to verify our signatures.
        delay: Seconds every request sleeps first (to make coalescing observable).
    """

    def __init__(
        self,
        pki: PKI,
        policy: TokenPolicy,
        *,
        hostname: str = "token.test",
        aliases: tuple[str, ...] = (),
        service: str = "acr.test",
        issuer: str = "pullhealth-test-issuer",
        aad_book: AADTokenBook | None = None,
        workdir: Path,
        alg: str = "RS256",
        expires_in: int = 300,
    ) -> None:
        """Configure; serves TLS with a pki cert for ``hostname``, ``aliases`` and 127.0.0.1."""
        super().__init__(_TokenHandler, pki.issue([hostname, *aliases, "127.0.0.1"]))
        self.hostname = hostname
        self.policy = policy
        self.service = service
        self.issuer = issuer
        self.aad_book = aad_book
        self.signer = JWTSigner(workdir, alg)
        self.rootcertbundle = self.signer.rootcertbundle
        self.expires_in = expires_in
        self.delay = 0.0
        self.allow_get = True
        # Like `az acr config authentication-as-arm update --status disabled`: the exchange
        # then refuses AAD tokens whose audience is ARM (management.azure.com).
        self.arm_audience_enabled = True
        self._refresh: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Who presented a user name and password, in order (never the password): tests
        #: tell which credential a client (kubelet's containerd, the operator) really used.
        self.logins: list[Login] = []

    def record(self, user: str, accepted: bool, user_agent: str, scopes: list[str]) -> None:
        """Note one username/password login (see :attr:`logins`)."""
        with self._lock:
            self.logins.append(Login(user, accepted, user_agent, tuple(scopes)))

    @property
    def realm(self) -> str:
        """``https://<hostname>:<port>/oauth2/token``."""
        return f"https://{self.hostname}:{self.port}/oauth2/token"

    @property
    def requests(self) -> dict[str, int]:
        """Request counts by path, e.g. ``{"/oauth2/token": 3}``."""
        return self.hits

    def reset_requests(self) -> None:
        """Zero :attr:`requests`."""
        self.reset_hits()

    def pause(self) -> None:
        """Sleep :attr:`delay` seconds (bounded to 30)."""
        if self.delay > 0:
            time.sleep(min(self.delay, 30.0))

    def check_password(self, user: str, password: str) -> str | None:
        """The principal for a username/password, or ``None`` (disabled tokens too)."""
        if user == ACR_REFRESH_USER:
            return self.refresh_principal(password)
        if user in self.policy.disabled:
            return None
        if user in self.policy.users and self.policy.users[user] == password:
            return user
        return None

    def refusal(self, user: str) -> str:
        """ACR's 401 message for a refused user name."""
        if user and user != ACR_REFRESH_USER and user not in self.policy.users:
            return ACR_APP_NOT_REGISTERED
        return ACR_AUTH_REQUIRED

    def authenticate_basic(self, header: str) -> str | None:
        """The principal for a ``Basic`` Authorization header, or ``None``."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.check_password(user, password)

    def refresh_principal(self, refresh_token: str) -> str | None:
        """The identity behind a refresh token we issued, or ``None``."""
        with self._lock:
            return self._refresh.get(refresh_token)

    def _claims(self, principal: str | None, lifetime: int) -> dict[str, object]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": principal or "",
            "aud": self.service,  # a string: registry 2.8 does not accept a list
            "exp": now + lifetime,
            "nbf": now - 5,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }

    def issue(self, principal: str | None, scopes: Iterable[Scope]) -> str:
        """A signed access token for ``principal`` (None: anonymous)."""
        grants = self.policy.grants.get(principal, []) if principal else self.policy.anonymous
        claims = self._claims(principal, self.expires_in)
        claims["access"] = allowed_access(grants, scopes)
        return self.signer.sign(claims)

    def issue_refresh(self, identity: str) -> str:
        """An ACR-style refresh token (a JWT) for an exchanged AAD identity."""
        claims = self._claims(identity, 3 * 3600)
        claims["grant_type"] = "refresh_token"
        token = self.signer.sign(claims)
        with self._lock:
            self._refresh[token] = identity
        return token
