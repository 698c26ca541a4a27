"""Identity step: an Azure AD access token from managed identity or workload identity.

- Managed identity (the node's kubelet identity): the Instance Metadata Service,
  ``GET /metadata/identity/oauth2/token`` with ``Metadata: true``.
- Workload identity: the service account's federated token is exchanged at Azure AD's
  v2.0 token endpoint (client credentials with a JWT bearer client assertion).

Both endpoints are configurable so tests can point them at local fixtures.
The token returned is secret material; only its kind and expiry are ever shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from pullhealth.domain.codes import Code
from pullhealth.probes.net import StepError

IMDS_ENDPOINT = "http://169.254.169.254"
AAD_AUTHORITY = "https://login.microsoftonline.com"
ARM_RESOURCE = "https://management.azure.com/"
# An ACR-audience token is worthless outside ACR (a management token is not): asked first.
ACR_RESOURCE = "https://containerregistry.azure.net"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class AadToken:
    """An Azure AD access token (secret) and where it came from (not secret)."""

    token: str
    source: str
    audience: str = "ACR"

    def __repr__(self) -> str:
        return f"AadToken(source={self.source!r}, audience={self.audience!r})"


class TokenCache:
    """Azure AD tokens kept until shortly before they expire, per identity and audience.

    IMDS throttles per VM (and Azure AD per app): each chain asking again would be refused
    under load. Keys name the identity fully: managed identity by endpoint + client id +
    resource; workload identity also by the federated token's subject (the namespace's
    service account), so a namespace never gets a token its own account could not obtain.
    Bounded (least recently used out first).

    Args:
        limit: tokens kept at most.
        margin: seconds before expiry a token stops being reused (at most half its life).
    """

    def __init__(self, limit: int = 64, margin: float = 300.0) -> None:
        self.limit = limit
        self.margin = margin
        self._tokens: OrderedDict[tuple[str, ...], tuple[AadToken, float]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> AadToken | None:
        """The token for key while it is fresh, else None."""
        found = self._tokens.get(key)
        if found is None:
            return None
        if time.monotonic() >= found[1]:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return found[0]

    def put(self, key: tuple[str, ...], token: AadToken, expires_in: float | None) -> None:
        """Keep a token for ``expires_in`` seconds minus the margin (not at all if unknown)."""
        if not expires_in or expires_in <= 0:
            return
        keep = expires_in - min(self.margin, expires_in / 2)
        self._tokens[key] = (token, time.monotonic() + keep)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.limit:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)


# The process' token cache (operator and agent alike: one identity per VM either way).
TOKENS = TokenCache()


def _expires_in(response: httpx.Response) -> float | None:
    """``expires_in`` of a token answer (IMDS sends it as a string), else None."""
    try:
        doc = response.json()
    except ValueError:
        return None
    value = doc.get("expires_in") if isinstance(doc, dict) else None
    try:
        return float(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None


def _subject(federated_token: str) -> str:
    """The federated token's ``sub`` (``system:serviceaccount:ns:name``), else its hash."""
    parts = federated_token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
                return str(claims["sub"])
        except (ValueError, TypeError):
            pass
    return "sha256:" + hashlib.sha256(federated_token.encode()).hexdigest()


def audience_name(resource: str) -> str:
    """``ACR`` or ``ARM`` (what messages call an audience), else the resource itself."""
    if resource.rstrip("/") == ACR_RESOURCE:
        return "ACR"
    if resource.rstrip("/") == ARM_RESOURCE.rstrip("/"):
        return "ARM"
    return resource


def _error_text(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(doc, dict):
        text = doc.get("error_description") or doc.get("error") or ""
        # AAD descriptions carry trace ids and timestamps after the first line.
        return (
            f"HTTP {response.status_code}: {str(text).splitlines()[0][:300]}"
            if text
            else (f"HTTP {response.status_code}")
        )
    return f"HTTP {response.status_code}"


async def managed_identity_token(
    *,
    client_id: str | None,
    endpoint: str = IMDS_ENDPOINT,
    resource: str = ACR_RESOURCE,
    timeout: float = 5.0,
    cache: TokenCache | None = TOKENS,
) -> AadToken:
    """Ask IMDS for a token of the node's managed identity (reused from ``cache`` while
    fresh).

    Raises:
        StepError: IDENTITY_UNAVAILABLE with the reason.
    """
    params = {"api-version": "2018-02-01", "resource": resource}
    if client_id:
        params["client_id"] = client_id
    who = f"managed identity {client_id}" if client_id else "the node's managed identity"
    key = ("imds", endpoint, (client_id or "").lower(), resource)
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(
                f"{endpoint.rstrip('/')}/metadata/identity/oauth2/token",
                params=params,
                headers={"Metadata": "true"},
            )
    except httpx.HTTPError as exc:
        raise StepError(
            Code.IDENTITY_UNAVAILABLE,
            f"IMDS at {endpoint} did not answer for {who}: {type(exc).__name__}",
            detail=f"IMDS unreachable: {type(exc).__name__}",
        ) from None
    token = _access_token(response)
    if not token:
        reason = _error_text(response)
        raise StepError(
            Code.IDENTITY_UNAVAILABLE,
            f"IMDS gave no token for {who} ({reason})",
            detail=f"IMDS: {reason}",
        )
    found = AadToken(token, who, audience_name(resource))
    if cache is not None:
        cache.put(key, found, _expires_in(response))
    return found


async def workload_identity_token(
    *,
    client_id: str,
    tenant_id: str,
    federated_token: str,
    authority: str = AAD_AUTHORITY,
    resource: str = ACR_RESOURCE,
    timeout: float = 5.0,
    cache: TokenCache | None = TOKENS,
) -> AadToken:
    """Exchange a service account's federated token for an Azure AD token (reused from
    ``cache`` while fresh, for the same account, client id and audience).

    Raises:
        StepError: IDENTITY_UNAVAILABLE with AAD's reason (first line only).
    """
    who = f"workload identity {client_id}"
    key = ("aad", authority, tenant_id.lower(), client_id.lower(), resource, _subject(federated_token))
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    data = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "scope": resource.rstrip("/") + "/.default",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": federated_token,
    }
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.post(f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token", data=data)
    except httpx.HTTPError as exc:
        raise StepError(
            Code.IDENTITY_UNAVAILABLE,
            f"Azure AD at {authority} did not answer for {who}: {type(exc).__name__}",
            detail=f"AAD unreachable: {type(exc).__name__}",
        ) from None
    token = _access_token(response)
    if not token:
        reason = _error_text(response)
        raise StepError(
            Code.IDENTITY_UNAVAILABLE,
            f"Azure AD refused {who} ({reason})",
            detail=f"AAD: {reason}",
        )
    found = AadToken(token, who, audience_name(resource))
    if cache is not None:
        cache.put(key, found, _expires_in(response))
    return found


def _access_token(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None
    try:
        doc = response.json()
    except ValueError:
        return None
    token = doc.get("access_token") if isinstance(doc, dict) else None
    return token if isinstance(token, str) and token else None
