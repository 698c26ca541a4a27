"""Azure identity fixtures: IMDS managed identity and Entra ID (AAD) workload identity.

Both hand out opaque JWT-shaped AAD access tokens recorded in a shared
:class:`AADTokenBook`; the ACR token server's ``/oauth2/exchange`` accepts
exactly the tokens in that book.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from ._common import LOOPBACK, BackgroundHTTPServer, QuietHandler

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ARM_RESOURCE = "https://management.azure.com/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT-shaped string with a random signature (nobody verifies it here).

    Clients commonly decode AAD tokens for ``exp``/``tid``, so the shape matters.
    """
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


def make_federated_token(subject: str, issuer: str = "https://oidc.example.test/") -> str:
    """A Kubernetes-projected-service-account-like token for workload identity."""
    now = int(time.time())
    return unsigned_jwt(
        {
            "aud": ["api://AzureADTokenExchange"],
            "iss": issuer,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
    )


@dataclass(frozen=True)
class AADToken:
    """What the book knows about an issued AAD access token."""

    identity: str
    tenant: str
    audience: str
    expires_on: int


class AADTokenBook:
    """Thread-safe registry of AAD access tokens the fixtures issued (or pre-seeded)."""

    def __init__(self, tenant: str) -> None:
        """Create an empty book for ``tenant``."""
        self.tenant = tenant
        self._tokens: dict[str, AADToken] = {}
        self._lock = threading.Lock()

    def mint(self, identity: str, audience: str = ARM_RESOURCE, lifetime: int = 3600) -> tuple[str, AADToken]:
        """Issue a token for ``identity`` and remember it."""
        now = int(time.time())
        info = AADToken(identity, self.tenant, audience, now + lifetime)
        token = unsigned_jwt(
            {
                "aud": audience,
                "iss": f"https://sts.windows.net/{self.tenant}/",
                "tid": self.tenant,
                "oid": str(uuid.uuid5(uuid.NAMESPACE_OID, identity)),
                "sub": identity,
                "iat": now,
                "nbf": now,
                "exp": info.expires_on,
            }
        )
        with self._lock:
            self._tokens[token] = info
        return token, info

    def lookup(self, token: str) -> AADToken | None:
        """The record for an unexpired token, else ``None``."""
        with self._lock:
            info = self._tokens.get(token)
        if info is None or info.expires_on < time.time():
            return None
        return info

    def revoke(self, token: str) -> None:
        """Forget a token (exchange will then reject it)."""
        with self._lock:
            self._tokens.pop(token, None)


def _imds_error(desc: str) -> dict[str, str]:
    return {"error": "invalid_request", "error_description": desc}


class _IMDSHandler(QuietHandler):
    def do_GET(self) -> None:
        fx: IMDSServer = self.fixture
        self.server.count(self.route)
        if self.route != "/metadata/identity/oauth2/token":
            self.send_json(404, {"error": "not_found"})
            return
        q = {k: v[0] for k, v in parse_qs(self.path.partition("?")[2]).items()}
        # IMDS rejects requests without the header (SSRF protection).
        if (self.headers.get("Metadata") or "").lower() != "true":
            self.send_json(400, _imds_error("Required metadata header not specified"))
            return
        if "api-version" not in q:
            self.send_json(400, _imds_error("Required query variable 'api-version' is missing"))
            return
        resource = q.get("resource")
        if not resource:
            self.send_json(400, _imds_error("Required audience not specified"))
            return
        client_id = q.get("client_id") or q.get("object_id") or q.get("msi_res_id")
        identity = fx.user_identities.get(client_id) if client_id else fx.system_identity
        if identity is None:
            self.send_json(400, _imds_error("Identity not found"))
            return
        token, info = fx.book.mint(identity, resource, fx.lifetime)
        now = int(time.time())
        # IMDS returns numbers as strings; clients must cope with that.
        self.send_json(
            200,
            {
                "access_token": token,
                "client_id": client_id or fx.system_client_id,
                "expires_in": str(info.expires_on - now),
                "expires_on": str(info.expires_on),
                "ext_expires_in": str(info.expires_on - now),
                "not_before": str(now),
                "resource": resource,
                "token_type": "Bearer",
            },
        )


class IMDSServer(BackgroundHTTPServer):
    """Azure Instance Metadata Service managed-identity token endpoint (plain HTTP).

    Attributes:
        url: ``http://127.0.0.1:PORT`` (the real one is http://169.254.169.254).
        system_identity: Identity used when no ``client_id`` is given (None: 400).
        user_identities: client_id -> identity name for user-assigned identities.
    """

    def __init__(
        self,
        book: AADTokenBook,
        *,
        system_identity: str | None = None,
        user_identities: dict[str, str] | None = None,
        lifetime: int = 3600,
    ) -> None:
        """Configure identities; tokens go into ``book``."""
        super().__init__(_IMDSHandler)
        self.book = book
        self.system_identity = system_identity
        self.system_client_id = str(uuid.uuid4())
        self.user_identities = dict(user_identities or {})
        self.lifetime = lifetime

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"


@dataclass
class WorkloadApp:
    """An Entra app registration with federated credentials.

    ``assertions`` lists accepted federated tokens; empty means any non-empty one.
    """

    identity: str
    assertions: set[str] = field(default_factory=set)


def _aad_error(code: int, error: str, desc: str) -> dict[str, object]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {desc}\r\nTrace ID: {uuid.uuid4()}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }


class _AADHandler(QuietHandler):
    def do_POST(self) -> None:
        fx: AADServer = self.fixture
        self.server.count(self.route)
        parts = self.route.strip("/").split("/")
        form = {k: v[0] for k, v in parse_qs(self.read_body().decode()).items()}
        if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
            self.send_json(404, {"error": "not_found"})
            return
        if parts[0] != fx.book.tenant:
            self.send_json(
                400,
                _aad_error(90002, "invalid_request", f"Tenant '{parts[0]}' not found."),
            )
            return
        if form.get("grant_type") != "client_credentials":
            self.send_json(
                400,
                _aad_error(
                    70003,
                    "unsupported_grant_type",
                    "The app requested an unsupported grant type.",
                ),
            )
            return
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            self.send_json(
                400,
                _aad_error(
                    1002012,
                    "invalid_scope",
                    f"The provided value for scope {scope} is not valid. Client credential "
                    "flows must have a scope value with /.default suffixed to the resource "
                    "identifier (application ID URI).",
                ),
            )
            return
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            self.send_json(
                400,
                _aad_error(
                    7000218,
                    "invalid_client",
                    "The request body must contain the following parameter: "
                    "'client_assertion' or 'client_secret'.",
                ),
            )
            return
        client_id = form.get("client_id", "")
        app = fx.apps.get(client_id)
        if app is None:
            self.send_json(
                400,
                _aad_error(
                    700016,
                    "unauthorized_client",
                    f"Application with identifier '{client_id}' was not found in the "
                    f"directory '{fx.book.tenant}'.",
                ),
            )
            return
        if app.assertions and form["client_assertion"] not in app.assertions:
            self.send_json(
                401,
                _aad_error(
                    700213,
                    "invalid_client",
                    "No matching federated identity record found for presented assertion subject.",
                ),
            )
            return
        audience = scope.removesuffix(".default")
        token, info = fx.book.mint(app.identity, audience, fx.lifetime)
        expires_in = info.expires_on - int(time.time())
        self.send_json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
            },
        )


class AADServer(BackgroundHTTPServer):
    """Entra ID token endpoint for workload identity (client_credentials + assertion).

    ``authority`` is what AZURE_AUTHORITY_HOST would be; the token URL is
    ``{authority}/{tenant}/oauth2/v2.0/token``. Plain HTTP unless ``cert`` given.
    """

    def __init__(
        self,
        book: AADTokenBook,
        apps: dict[str, WorkloadApp],
        *,
        cert: tuple[Path, Path] | None = None,
        lifetime: int = 3600,
    ) -> None:
        """Configure app registrations (client_id -> :class:`WorkloadApp`)."""
        super().__init__(_AADHandler, cert)
        self.book = book
        self.apps = apps
        self.lifetime = lifetime

    @property
    def authority(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def token_url(self) -> str:
        """Full token endpoint URL for the book's tenant."""
        return f"{self.authority}/{self.book.tenant}/oauth2/v2.0/token"
