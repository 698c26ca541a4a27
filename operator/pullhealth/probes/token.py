"""Token step: turn a credential into what the manifest request will send.

Flows, by challenge and credential kind:

- Bearer + user/password: the distribution token spec (``GET realm?service&scope`` with
  Basic auth); when the realm refuses GET, the OAuth2 form (``grant_type=password``).
- Bearer + refresh token: ``POST realm`` with ``grant_type=refresh_token`` (ACR).
- Bearer + Azure AD token: ``POST /oauth2/exchange`` (``grant_type=access_token``) for a
  refresh token, then ``POST /oauth2/token`` (``grant_type=refresh_token``) (ACR).
- Bearer + anonymous: ``GET realm`` without credentials.
- Basic: ``GET /v2/`` with the credentials.

The JWT's ``access`` claim is decoded (not verified): distribution grants the
intersection of what was asked, so a token without ``pull`` on the repository means
missing permission, not a failed login.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.probes.challenge import (
    Challenge,
    error_code,
    error_code_list,
    error_messages,
    fail_on_common,
    printable,
)
from pullhealth.probes.http import Http, Reply
from pullhealth.probes.identity import AadToken
from pullhealth.probes.net import StepError

CLIENT_ID = "pullhealth"


@dataclass(frozen=True)
class Authorization:
    """What to send on registry requests, and what the token grants.

    ``header`` is secret material: it is never logged or shown.
    """

    header: str | None
    flow: str
    granted: tuple[str, ...] | None = None  # actions on the repository; None = unknown

    def __repr__(self) -> str:
        return f"Authorization(flow={self.flow!r}, granted={self.granted!r})"


def basic_header(username: str, password: str) -> str:
    """An HTTP Basic Authorization value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, without verifying it; None for opaque tokens."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


def granted_actions(token: str, repository: str) -> tuple[str, ...] | None:
    """Actions the token's ``access`` claim grants on a repository (None if opaque).

    A claim of the wrong shape (``access`` not a list, ``actions`` not a list of strings)
    counts as opaque: the registry's own answer to the manifest request decides then.
    """
    claims = jwt_claims(token)
    if claims is None or not isinstance(claims.get("access"), list):
        return None
    actions: list[str] = []
    for entry in claims["access"]:
        if (
            isinstance(entry, dict)
            and entry.get("type") == "repository"
            and entry.get("name") in (repository, "*")
            and isinstance(entry.get("actions"), list)
        ):
            actions.extend(a for a in entry["actions"] if isinstance(a, str))
    return tuple(sorted(set(actions)))


def exchange_url(realm: str) -> str:
    """ACR's exchange endpoint beside its token endpoint."""
    parts = urlsplit(realm)
    path = parts.path
    path = path[: -len("/token")] + "/exchange" if path.endswith("/token") else "/oauth2/exchange"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _hostname(host_port: str) -> str:
    return (urlsplit(f"//{host_port}").hostname or host_port).lower().rstrip(".")


def _port_differs(realm: str, registry_host: str) -> bool:
    """The realm's port is not the registry's, for a registry on the default port 443.

    Every ACR serves its registry and its token endpoints on 443: a realm on another port
    of the same host is another service. A registry reached on an explicit other port (a
    port-forward, a test world whose token service listens beside the registry) is not
    held to it.
    """
    try:
        realm_port = urlsplit(realm).port or 443
        registry_port = urlsplit(f"//{registry_host}").port or 443
    except ValueError:
        return True
    return registry_port == 443 and realm_port != 443


def realm_elsewhere(realm: str, registry_host: str) -> str | None:
    """The realm's host[:port] when its host is not the registry's, else None."""
    parts = urlsplit(realm)
    if (parts.hostname or "").lower().rstrip(".") == _hostname(registry_host):
        return None
    return parts.netloc.rpartition("@")[2] or realm[:100]


def check_realm(realm: str, registry_host: str, credential: Credential) -> None:
    """Refuse to follow a realm the registry's challenge must not send the chain to.

    - Any credential, anonymous too: only over HTTPS (the chain reaches registries over
      HTTPS only; a plain-HTTP realm would carry the password or token in clear, and an
      anonymous token from it, forged on the way, would be forwarded to the registry).
    - An Azure AD token (managed or workload identity): only to the registry's own host,
      ACR's ``/oauth2/exchange`` beside ``/oauth2/token``. Another host would receive a
      token of an identity the operator holds.

    A realm on another host over HTTPS is followed for the other credentials (Docker Hub's
    realm is auth.docker.io): they belong to the namespace that named the registry.

    Raises:
        StepError: TOKEN_REALM_REFUSED, before anything is sent.
    """
    parts = urlsplit(realm)
    shown = printable(realm, 200)
    if parts.scheme.lower() != "https":
        what = (
            "no anonymous token is asked there"
            if credential.kind is CredentialKind.ANONYMOUS
            else f"{credential.describe()} was not sent"
        )
        raise StepError(
            Code.TOKEN_REALM_REFUSED,
            f"the token realm {shown} is not HTTPS: {what}",
            realm=shown,
            detail="the realm is not HTTPS; tokens are asked and credentials sent over HTTPS only",
        )
    if credential.kind is CredentialKind.AAD and (
        realm_elsewhere(realm, registry_host) or _port_differs(realm, registry_host)
    ):
        raise StepError(
            Code.TOKEN_REALM_REFUSED,
            f"the token realm {shown} is not on the registry's own host and port {registry_host}: "
            "an Azure AD token is exchanged only at the registry's own /oauth2/exchange",
            realm=shown,
            detail="an Azure AD token is exchanged only at the registry's own host",
        )


def _token_of(reply: Reply) -> str | None:
    doc = reply.json()
    if isinstance(doc, dict):
        for key in ("token", "access_token"):
            if isinstance(doc.get(key), str) and doc[key]:
                token = str(doc[key])
                if not token.isascii() or not token.isprintable():
                    # No client can send it in an Authorization header.
                    raise StepError(
                        Code.REGISTRY_ERROR,
                        "the token service answered a token that is not printable ASCII",
                        detail="a malformed token from the token service",
                    )
                return token
    return None


def _why(reply: Reply) -> str:
    """What a token service's refusal may show: its HTTP status and OCI error codes, else
    its OAuth2 ``error`` code; never a message, ``error_description`` or another body (the
    realm may be any service the registry named, and a body can echo the request)."""
    codes = error_code_list(reply)
    if codes:
        return f"HTTP {reply.status} " + ", ".join(codes)
    doc = reply.json()
    code = error_code(doc.get("error")) if isinstance(doc, dict) else "?"
    return f"HTTP {reply.status}" + (f" {code}" if code != "?" else "")


# ACR's refusal of a user name its tenant does not know (a service principal deleted, or a
# multitenant app not provisioned there): Azure/acr#366, Azure/AKS#3109.
_APP_NOT_REGISTERED = "application not registered with aad"


def _rejected(reply: Reply) -> Code:
    """The code of a token service's refusal of credentials. Its message decides between
    two codes and is never shown (:func:`_why`)."""
    if any(_APP_NOT_REGISTERED in m.lower() for m in error_messages(reply)):
        return Code.AAD_APP_NOT_REGISTERED
    return Code.CREDENTIALS_REJECTED


async def _exchange(http: Http, url: str, service: str, aad_token: str) -> tuple[str | None, Reply]:
    """``POST /oauth2/exchange``: an ACR refresh token for an Azure AD token, or None."""
    data = {"grant_type": "access_token", "service": service, "access_token": aad_token}
    reply = await http.request("POST", url, data=data)
    doc = reply.json()
    refresh = doc.get("refresh_token") if isinstance(doc, dict) and reply.status == 200 else None
    return (refresh if isinstance(refresh, str) and refresh else None), reply


async def _aad_refresh(
    http: Http, challenge: Challenge, credential: Credential, also: tuple[AadToken, ...]
) -> str:
    """Exchange the Azure AD token (and the other audiences' to compare); the refresh token.

    Raises:
        StepError: TOKEN_EXCHANGE_DENIED, or AAD_AUDIENCE_REJECTED when the registry takes
            one audience and refuses another.
    """
    realm_host = urlsplit(challenge.realm).hostname or challenge.realm
    url = exchange_url(challenge.realm)
    refresh, reply = await _exchange(http, url, challenge.service, credential.secret or "")
    fail_on_common(reply, realm_host, "POST /oauth2/exchange", codes_only=True)
    for other in also:
        other_refresh, other_reply = await _exchange(http, url, challenge.service, other.token)
        fail_on_common(other_reply, realm_host, "POST /oauth2/exchange", codes_only=True)
        if (refresh is None) == (other_refresh is None):
            continue
        refused = other.audience if refresh else "ACR"
        taken = "ACR" if refresh else other.audience
        raise StepError(
            Code.AAD_AUDIENCE_REJECTED,
            f"POST /oauth2/exchange took the {taken}-audience token of {credential.describe()} "
            f"but refused the {refused}-audience one ({_why(other_reply if refresh else reply)})",
            audience=refused,
            detail=f"it accepts {taken}-audience tokens only",
        )
    if refresh is None:
        raise StepError(
            Code.TOKEN_EXCHANGE_DENIED,
            f"POST /oauth2/exchange refused the Azure AD token of {credential.describe()} ({_why(reply)})",
        )
    return refresh


async def _bearer(
    http: Http,
    challenge: Challenge,
    credential: Credential,
    scope: str | None,
    also: tuple[AadToken, ...] = (),
) -> tuple[str, str]:
    """Run the bearer flow for a credential; return (token, flow name)."""
    realm_host = urlsplit(challenge.realm).hostname or challenge.realm
    params: dict[str, str | list[str]] = {"service": challenge.service}
    form = {"service": challenge.service}
    if scope:
        params["scope"] = scope
        form["scope"] = scope
    kind = credential.kind
    secret = credential.secret or ""

    if kind is CredentialKind.ANONYMOUS:
        reply = await http.request("GET", challenge.realm, params=params)
        fail_on_common(reply, realm_host, "GET token", codes_only=True)
        token = _token_of(reply) if reply.status == 200 else None
        if not token:
            raise StepError(
                Code.AUTH_REQUIRED,
                f"the token service refused an anonymous token ({_why(reply)})",
            )
        return token, "anonymous token"

    if kind is CredentialKind.BASIC:
        auth = {"Authorization": basic_header(credential.username or "", secret)}
        reply = await http.request("GET", challenge.realm, params=params, headers=auth)
        flow = "distribution token (GET)"
        if reply.status in (404, 405):
            data = {
                "grant_type": "password",
                "client_id": CLIENT_ID,
                "username": credential.username or "",
                "password": secret,
                **form,
            }
            reply = await http.request("POST", challenge.realm, data=data)
            flow = "OAuth2 password grant (POST)"
        fail_on_common(reply, realm_host, "token request", codes_only=True)
        token = _token_of(reply) if reply.status == 200 else None
        if not token:
            raise StepError(
                _rejected(reply),
                f"the token service rejected {credential.describe()} ({_why(reply)})",
            )
        return token, flow

    if kind is CredentialKind.AAD:
        secret, flow_prefix = await _aad_refresh(http, challenge, credential, also), "ACR exchange + "
    else:
        flow_prefix = ""

    data = {"grant_type": "refresh_token", "refresh_token": secret, **form}
    reply = await http.request("POST", challenge.realm, data=data)
    fail_on_common(reply, realm_host, "POST /oauth2/token", codes_only=True)
    token = _token_of(reply) if reply.status == 200 else None
    if not token:
        code = Code.TOKEN_EXCHANGE_DENIED if kind is CredentialKind.AAD else _rejected(reply)
        raise StepError(
            code,
            f"POST /oauth2/token refused the refresh token of {credential.describe()} ({_why(reply)})",
        )
    return token, flow_prefix + "refresh token grant"


async def probe_token(
    http: Http,
    registry_host: str,
    challenge: Challenge,
    credential: Credential,
    repository: str | None,
    also: tuple[AadToken, ...] = (),
) -> Authorization:
    """Obtain the Authorization for pulling ``repository`` (or just log in).

    Args:
        http: the chain's client.
        registry_host: the registry's host[:port].
        challenge: what ``GET /v2/`` asked for.
        credential: what to authenticate with.
        repository: the repository to ask pull on, or None to log in only.
        also: Azure AD tokens of the same identity for other audiences, exchanged only to
            compare (AAD credentials).

    Raises:
        StepError: AUTH_REQUIRED, CREDENTIALS_REJECTED, TOKEN_EXCHANGE_DENIED,
            AAD_AUDIENCE_REJECTED, TOKEN_REALM_REFUSED, PERMISSION_DENIED, or a
            network/registry code.
    """
    anonymous = credential.kind is CredentialKind.ANONYMOUS
    if challenge.scheme == "none":
        return Authorization(None, "none (the registry allows anonymous access)")

    if challenge.scheme == "basic":
        if anonymous:
            raise StepError(Code.AUTH_REQUIRED, f"{registry_host} requires Basic authentication; none given")
        header = basic_header(credential.username or "", credential.secret or "")
        reply = await http.request("GET", f"https://{registry_host}/v2/", headers={"Authorization": header})
        fail_on_common(reply, registry_host, "GET /v2/ (authenticated)")
        if reply.status != 200:
            raise StepError(
                Code.CREDENTIALS_REJECTED,
                f"{registry_host} rejected {credential.describe()} (HTTP {reply.status})",
            )
        return Authorization(header, "basic")

    check_realm(challenge.realm, registry_host, credential)
    scope = f"repository:{repository}:pull" if repository else None
    token, flow = await _bearer(http, challenge, credential, scope, also)
    granted = granted_actions(token, repository) if repository else None
    if repository and granted is not None and "pull" not in granted and "*" not in granted:
        shown = ",".join(granted) or "nothing"
        if anonymous:
            raise StepError(
                Code.AUTH_REQUIRED,
                f"an anonymous token grants {shown} on {repository}: the repository is not public",
            )
        raise StepError(
            Code.PERMISSION_DENIED,
            f"the token for {credential.describe()} grants {shown} on {repository}, not pull",
        )
    return Authorization(f"Bearer {token}", flow, granted)
