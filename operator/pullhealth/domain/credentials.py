"""Credentials: docker config JSON, pull secrets and identities -> candidate credentials.

Matching follows kubelet's keyring (pkg/credentialprovider/keyring.go): a key is a
schemeless URL ``host[:port][/path]``; hosts match label by label with ``*`` globs, the
port must be equal, the image path must start with the key path, the most specific key
wins, and Docker Hub keys (``https://index.docker.io/v1/``) match images without a domain.

Secrets never leave this module in readable form: :class:`Credential` hides its secret
from ``repr`` and exposes only a fingerprint for logs and coalescing.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pullhealth.domain.codes import ACR_REFRESH_USER, Code
from pullhealth.domain.redact import Redactor
from pullhealth.domain.reference import DOCKER_HUB, ImageReference

DOCKER_HUB_KEY = "index.docker.io"
# `az acr login --expose-token` and ACR's docker credential helper use this user name with
# an ACR refresh token as the password.
ACR_TOKEN_USER = ACR_REFRESH_USER

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"


class CredentialKind(StrEnum):
    """How a credential authenticates."""

    ANONYMOUS = "anonymous"
    BASIC = "basic"  # user name + password (also ACR admin user, scope-map tokens, SPs)
    REFRESH_TOKEN = "refresh_token"  # ACR refresh token (docker config identitytoken)
    AAD = "aad"  # an Azure AD access token, exchanged at /oauth2/exchange


@dataclass(frozen=True)
class Credential:
    """One way to authenticate to a registry.

    Attributes:
        kind: how it authenticates.
        source: where it came from, safe to show (``secret ns/name``, ``--username``).
        username: the user name, if any (shown: user names are not secrets).
        secret: password, refresh token or AAD token; never shown, never logged.
    """

    kind: CredentialKind
    source: str
    username: str | None = None
    secret: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible id: equal credentials share it, nothing leaks."""
        material = f"{self.kind}\0{self.username or ''}\0{self.secret or ''}"
        return hashlib.sha256(material.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """A human description with no secret in it."""
        if self.kind is CredentialKind.ANONYMOUS:
            return "anonymous"
        who = f"user {self.username}" if self.username else str(self.kind).replace("_", " ")
        return f"{who} from {self.source}"

    def secrets(self) -> list[str]:
        """The secret values, for the redactor."""
        return [self.secret] if self.secret else []


ANONYMOUS = Credential(CredentialKind.ANONYMOUS, source="anonymous")


def teach(redactor: Redactor, credentials: Iterable[Credential]) -> None:
    """Make a redactor mask these credentials' secrets (and ``user:secret`` forms)."""
    for credential in credentials:
        secrets = credential.secrets()
        redactor.add(secrets, [(credential.username or "", s) for s in secrets])


class SecretProblem(ValueError):
    """A pull secret or docker config that cannot be used.

    Attributes:
        code: PULL_SECRET_INVALID (or PULL_SECRET_MISSING).
        detail: what is wrong, without any secret value.
    """

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class KeyringEntry:
    """One server key of a docker config with its credential."""

    key: str
    credential: Credential


def _key_of(server: str) -> str:
    """Kubelet's key for a docker config server entry: schemeless host[:port][/path]."""
    value = server.strip()
    for prefix in ("https://", "http://"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    host, sep, path = value.partition("/")
    path = "/" + path if sep else ""
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    if path in ("", "/"):
        return host.lower()
    return host.lower() + path.rstrip("/")


def _credential_from_entry(server: str, entry: Any, source: str) -> Credential:
    if not isinstance(entry, Mapping):
        raise SecretProblem(Code.PULL_SECRET_INVALID, f"entry for {server!r} is not an object")
    username = entry.get("username")
    password = entry.get("password")
    auth = entry.get("auth")
    identity = entry.get("identitytoken") or entry.get("identityToken")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise SecretProblem(
                Code.PULL_SECRET_INVALID, f"the auth field for {server!r} is not valid base64"
            ) from None
        if ":" not in decoded:
            raise SecretProblem(
                Code.PULL_SECRET_INVALID,
                f"the auth field for {server!r} does not decode to user:password",
            )
        username, _, password = decoded.partition(":")
    if isinstance(identity, str) and identity:
        return Credential(CredentialKind.REFRESH_TOKEN, source, username or None, identity)
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise SecretProblem(
            Code.PULL_SECRET_INVALID,
            f"entry for {server!r} has no auth, username/password or identitytoken",
        )
    if username == ACR_TOKEN_USER:
        return Credential(CredentialKind.REFRESH_TOKEN, source, username, password)
    return Credential(CredentialKind.BASIC, source, username, password)


def parse_docker_config(raw: bytes | str, source: str, *, legacy: bool = False) -> list[KeyringEntry]:
    """Parse ``.dockerconfigjson`` (``{"auths": {...}}``) or legacy ``.dockercfg``.

    Args:
        raw: the JSON document.
        source: a safe description of where it came from.
        legacy: True for the ``kubernetes.io/dockercfg`` format (no ``auths`` wrapper).

    Raises:
        SecretProblem: bad JSON, wrong shape or a bad entry (never echoing values).
    """
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SecretProblem(
            Code.PULL_SECRET_INVALID, f"{source} is not valid JSON (line {getattr(exc, 'lineno', '?')})"
        ) from None
    if not isinstance(doc, dict):
        raise SecretProblem(Code.PULL_SECRET_INVALID, f"{source} is not a JSON object")
    auths = doc if legacy else doc.get("auths", {})
    if not isinstance(auths, dict):
        raise SecretProblem(Code.PULL_SECRET_INVALID, f"{source}: 'auths' is not an object")
    if not legacy and not auths and (doc.get("credsStore") or doc.get("credHelpers")):
        raise SecretProblem(
            Code.PULL_SECRET_INVALID,
            f"{source} uses a credential helper (credsStore/credHelpers), which kubelet "
            "cannot use; log in with the helper disabled or create the secret with kubectl",
        )
    return [
        KeyringEntry(_key_of(server), _credential_from_entry(server, entry, source))
        for server, entry in sorted(auths.items())
    ]


def parse_pull_secret(secret: Mapping[str, Any], namespace: str) -> list[KeyringEntry]:
    """Parse a Kubernetes Secret (as a dict from the API) used in imagePullSecrets.

    Raises:
        SecretProblem: wrong type, missing key, bad base64 or bad JSON.
    """
    meta = secret.get("metadata") or {}
    name = meta.get("name", "?")
    source = f"secret {namespace}/{name}"
    stype = secret.get("type", "")
    data = secret.get("data") or {}
    if stype == DOCKERCONFIGJSON:
        key, legacy = ".dockerconfigjson", False
    elif stype == DOCKERCFG:
        key, legacy = ".dockercfg", True
    else:
        raise SecretProblem(
            Code.PULL_SECRET_INVALID,
            f"{source} has type {stype or '<none>'!r}; kubelet only uses {DOCKERCONFIGJSON} or {DOCKERCFG}",
        )
    if key not in data or not data[key]:
        raise SecretProblem(Code.PULL_SECRET_INVALID, f"{source} has no key {key}")
    try:
        raw = base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SecretProblem(Code.PULL_SECRET_INVALID, f"{source}: {key} is not valid base64") from None
    return parse_docker_config(raw, source, legacy=legacy)


def _hosts_match(pattern: str, host: str) -> bool:
    p_parts = pattern.split(".")
    h_parts = host.split(".")
    if len(p_parts) != len(h_parts):
        return False
    return all(fnmatch.fnmatchcase(h, p) for p, h in zip(p_parts, h_parts, strict=True))


def _url_matches(key: str, target: str) -> bool:
    """kubelet's URLsMatchStr for schemeless key and image (host[:port]/path)."""
    k_host, _, k_path = key.partition("/")
    t_host, _, t_path = target.partition("/")
    k_name, _, k_port = k_host.partition(":")
    t_name, _, t_port = t_host.partition(":")
    if k_port != t_port or not _hosts_match(k_name, t_name):
        return False
    return ("/" + t_path).startswith("/" + k_path) if k_path else True


def _is_default_registry(image_path: str) -> bool:
    first, sep, _ = image_path.partition("/")
    if not first:
        return False
    if not sep or first in ("docker.io", DOCKER_HUB_KEY):
        return True
    return not any(c in first for c in ".:")


def lookup(entries: list[KeyringEntry], image: ImageReference) -> list[Credential]:
    """The credentials kubelet would try for an image, most specific key first."""
    target = f"{image.registry}/{image.repository}"
    by_key: dict[str, list[Credential]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry.credential)
    found: list[Credential] = []
    for key in sorted(by_key, reverse=True):
        if _url_matches(key, target):
            found.extend(by_key[key])
    if not found and image.registry == DOCKER_HUB and _is_default_registry(target):
        found = by_key.get(DOCKER_HUB_KEY, [])
    return found


def for_target(entries: list[KeyringEntry], registry: str, image: ImageReference | None) -> list[Credential]:
    """Credentials for an image (kubelet's rules), or for a bare registry host.

    For a registry with no image, entries whose host part is that registry match (Docker
    Hub aliases included).
    """
    if image is not None:
        return lookup(entries, image)
    wanted = {registry, DOCKER_HUB_KEY} if registry == DOCKER_HUB else {registry}
    return [e.credential for e in entries if e.key.split("/")[0] in wanted]
