"""Blob step (the data path): can one small blob of the image actually be downloaded?

ACR and most clouds answer a blob ``GET`` on the login server with a redirect to another
host: ACR's dedicated data endpoint ``<registry>.<region>.data.azurecr.io`` or a storage
account, S3, Cloud Storage, a CDN. A firewall that allows the login server but not that
host passes every step up to the manifest and still fails the pull. This step fetches the
first KiB of one small blob (the platform manifest's config blob; never a layer in full)
with a ``Range`` header, follows the redirect by hand and names the host and the step
(dns, tcp, tls, http) that failed.

Registry answers are untrusted: a redirect's host passes the admin's registry host
allow-list (as a token realm on another host does) and every address the destination
policy (:mod:`pullhealth.probes.destinations`, through :class:`~pullhealth.probes.http.Http`);
at most :data:`MAX_HOPS` redirects are followed. The ``Authorization`` header goes to the
login server only, never to a redirect's host (pre-signed URLs carry their own signature;
a bearer token sent there would leak a credential), and a redirect URL's query (the
signature) is masked out of every message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from pullhealth.domain.codes import Code
from pullhealth.domain.redact import clip
from pullhealth.domain.reference import ImageReference
from pullhealth.probes.challenge import error_messages, fail_on_common
from pullhealth.probes.destinations import DestinationPolicy
from pullhealth.probes.http import Http
from pullhealth.probes.manifest import ACCEPT, ManifestFound
from pullhealth.probes.net import StepError
from pullhealth.probes.token import Authorization

MAX_HOPS = 3
RANGE = "bytes=0-1023"
_READ = 2048  # bytes of a blob read at most (a server may ignore Range)
_MANIFEST_READ = 256 * 1024
_MAX_URL = 8192
_REDIRECTS = (301, 302, 303, 307, 308)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,256}")
# Which step of the data host a request error stands for.
_STEP_OF_CODE = {
    Code.DNS_NXDOMAIN: "dns",
    Code.DNS_TIMEOUT: "dns",
    Code.CONNECT_REFUSED: "tcp",
    Code.CONNECT_TIMEOUT: "tcp",
    Code.TLS_UNTRUSTED: "tls",
    Code.TLS_HOSTNAME_MISMATCH: "tls",
    Code.TLS_PROTOCOL_ERROR: "tls",
}


@dataclass(frozen=True)
class BlobPath:
    """Where the blob came from.

    Attributes:
        digest: the blob fetched.
        data_host: the host that served it when the registry redirected (``host[:port]``),
            None when the registry served it itself.
        status: the final answer's status (200, or 206 for a honoured Range).
        hops: every host redirected to, in order.
    """

    digest: str
    data_host: str | None
    status: int
    hops: tuple[str, ...] = ()


def small_blob(doc: object) -> str | None:
    """The digest of the smallest blob a manifest names (its config, usually), or None.

    Only OCI / Docker v2 image manifests (``config`` and ``layers`` with sizes); a
    digest of an unexpected shape counts as none (it goes into a URL path).
    """
    if not isinstance(doc, dict):
        return None
    candidates: list[tuple[int, str]] = []
    entries = [doc.get("config")]
    layers = doc.get("layers")
    if isinstance(layers, list):
        entries.extend(layers[:1000])
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        digest, size = entry.get("digest"), entry.get("size")
        if isinstance(digest, str) and _DIGEST.fullmatch(digest) and isinstance(size, int) and size >= 0:
            candidates.append((size, digest))
    return min(candidates)[1] if candidates else None


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port}" if parts.port else shown


def _shown(url: str) -> str:
    """A redirect URL without its query (a pre-signed URL's signature) or fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{_netloc(url)}{clip(parts.path, 120)}"


async def probe_blob(
    http: Http,
    image: ImageReference,
    auth: Authorization,
    found: ManifestFound,
    policy: DestinationPolicy,
) -> BlobPath | None:
    """Fetch the first KiB of the image's smallest blob, through the registry's redirects.

    Returns:
        Where it came from; None when the manifest names no blob to fetch (a schema 1
        manifest or an unexpected shape: the step is skipped).

    Raises:
        StepError: DATA_ENDPOINT_UNREACHABLE when a redirect's host fails (dns, tcp, tls or
            an HTTP refusal such as a storage firewall's 403) while the login server
            answered; DESTINATION_REFUSED for a redirect the policy refuses; the registry's
            own failures (REGISTRY_ERROR, FIREWALL_FORBIDDEN, ...) on the login server.
    """
    host = image.api_host
    headers = {"Accept": ACCEPT}
    if auth.header:
        headers["Authorization"] = auth.header
    reference = found.platform_digest or found.digest or image.manifest_ref
    manifest_url = f"https://{host}/v2/{image.repository}/manifests/{reference}"
    reply = await http.request("GET", manifest_url, headers=headers, limit=_MANIFEST_READ)
    fail_on_common(reply, host, "manifest request")
    if reply.status != 200:
        raise StepError(
            Code.REGISTRY_ERROR,
            f"the manifest {image.repository}@{clip(reference, 80)} answered HTTP {reply.status} "
            "when read for its blobs",
            detail=f"HTTP {reply.status}",
        )
    digest = small_blob(reply.json())
    if digest is None:
        return None

    url = f"https://{host}/v2/{image.repository}/blobs/{digest}"
    blob_headers = {"Range": RANGE}
    if auth.header:
        blob_headers["Authorization"] = auth.header
    reply = await http.request("GET", url, headers=blob_headers, limit=_READ)
    hops: list[str] = []
    while reply.status in _REDIRECTS:
        location = reply.headers.get("Location", "")
        if not location:
            raise StepError(
                Code.REGISTRY_ERROR,
                f"the blob request on {host} answered {reply.status} without a Location",
                detail=f"a redirect ({reply.status}) without a Location",
            )
        if len(hops) >= MAX_HOPS:
            raise StepError(
                Code.REGISTRY_ERROR,
                f"the blob download of {digest} was redirected more than {MAX_HOPS} times "
                f"(last to {hops[-1]})",
                detail=f"more than {MAX_HOPS} redirects",
            )
        try:
            parts = urlsplit(urljoin(url, location.strip()[:_MAX_URL]))
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            parts = urlsplit("")
        if parts.query:
            # A pre-signed URL's query is its signature: a credential, never shown.
            http.redactor.add([parts.query])
        if parts.password:
            http.redactor.add([parts.password])
        # Without user info (never sent: no credential travels on a redirect) or fragment.
        target = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))
        data_host = _netloc(target) if parts.hostname else ""
        if parts.scheme not in ("https", "http") or not parts.hostname or len(parts.hostname) > 253:
            raise StepError(
                Code.REGISTRY_ERROR,
                f"the blob request on {host} redirected to an unusable URL {clip(_shown(target), 200)!r}",
                detail="an unusable redirect URL",
            )
        hops.append(data_host)
        try:
            policy.check_host(parts.hostname)
        except StepError as exc:
            raise StepError(
                exc.code,
                f"the blob redirect's host: {exc.message}",
                host=data_host,
                data_host=data_host,
                detail="the blob redirect's host is not in the admin's registry allow-list",
            ) from None
        url = target
        try:
            # No Authorization: the redirect's host gets the URL the registry signed, nothing else.
            reply = await http.request("GET", url, headers={"Range": RANGE}, limit=_READ)
        except StepError as exc:
            if exc.code is Code.DESTINATION_REFUSED:
                raise StepError(exc.code, f"the blob redirect's host: {exc.message}",
                                **{**exc.facts, "data_host": data_host}) from None
            step = _STEP_OF_CODE.get(exc.code, "http")
            raise StepError(
                Code.DATA_ENDPOINT_UNREACHABLE,
                f"blob {digest} redirects to {_shown(url)}: {exc.message}",
                host=data_host,
                data_host=data_host,
                data_step=step,
                data_code=exc.code.value,
                detail=exc.message,
            ) from None
    if not hops:
        fail_on_common(reply, host, "blob request")
    if reply.status in (200, 206):
        return BlobPath(digest, hops[-1] if hops else None, reply.status, tuple(hops))
    if hops:
        data_host = hops[-1]
        refused = reply.status in (401, 403)
        what = "refused the download" if refused else "failed the download"
        raise StepError(
            Code.DATA_ENDPOINT_UNREACHABLE if refused else Code.REGISTRY_ERROR,
            f"blob {digest} redirects to {_shown(url)}, which answered HTTP {reply.status}",
            host=data_host,
            data_host=data_host,
            data_step="http",
            detail=f"{data_host} {what} (HTTP {reply.status}"
            + ("; a storage firewall or network rule" if refused else "")
            + ")",
        )
    detail = "; ".join(error_messages(reply)) or f"HTTP {reply.status}"
    raise StepError(
        Code.REGISTRY_ERROR,
        f"the blob request for {digest} on {host} answered HTTP {reply.status} ({detail})",
        detail=f"HTTP {reply.status}",
    )
