"""Identity step: an Azure AD access token from managed identity or workload identity.

- Managed identity (the node's kubelet identity): the Instance Metadata Service,
  ``GET /metadata/identity/oauth2/token`` with ``Metadata: true``.
- Workload identity: the service account's federated token is exchanged at Azure AD's
  v2.0 token endpoint (client credentials with a JWT bearer client assertion).

Both endpoints are configurable so tests can point them at local fixtures.
The token returned is secret material; only its kind and expiry are ever shown.
"""

from __future__ import annotations

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
) -> AadToken:
    """Ask IMDS for a token of the node's managed identity.

    Raises:
        StepError: IDENTITY_UNAVAILABLE with the reason.
    """
    params = {"api-version": "2018-02-01", "resource": resource}
    if client_id:
        params["client_id"] = client_id
    who = f"managed identity {client_id}" if client_id else "the node's managed identity"
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
    return AadToken(token, who, audience_name(resource))


async def workload_identity_token(
    *,
    client_id: str,
    tenant_id: str,
    federated_token: str,
    authority: str = AAD_AUTHORITY,
    resource: str = ACR_RESOURCE,
    timeout: float = 5.0,
) -> AadToken:
    """Exchange a service account's federated token for an Azure AD token.

    Raises:
        StepError: IDENTITY_UNAVAILABLE with AAD's reason (first line only).
    """
    who = f"workload identity {client_id}"
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
    return AadToken(token, who, audience_name(resource))


def _access_token(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None
    try:
        doc = response.json()
    except ValueError:
        return None
    token = doc.get("access_token") if isinstance(doc, dict) else None
    return token if isinstance(token, str) and token else None
