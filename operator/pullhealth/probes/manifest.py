"""Manifest step: does the image exist, for the wanted platform, for these credentials?

``HEAD`` first (cheap, what runtimes do); a ``GET`` only when the body matters: an index
(to check the platform) or an error (HEAD responses carry no error code).

An index whose digest was read before is not fetched again: its entries are remembered by
digest (:data:`INDEXES`), and only after the body's sha256 matched the digest the registry
named, so an untrusted registry cannot plant entries for another's content. Docker Hub
counts a manifest ``GET`` as a pull and a ``HEAD`` not: an unchanged multi-platform tag
checked again costs no pull.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pullhealth.bounded import BoundedDict
from pullhealth.domain.codes import Code
from pullhealth.domain.reference import ImageReference
from pullhealth.probes.challenge import error_codes, error_messages, fail_on_common
from pullhealth.probes.http import Http
from pullhealth.probes.net import StepError
from pullhealth.probes.token import Authorization

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
_INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_MAX_PLATFORMS_SHOWN = 8
_MAX_ENTRIES = 1000
#: Verified image indexes by digest: each entry's (platform, manifest digest). Content-addressed
#: (the digest is the body's sha256), so shared by every registry, credential and caller.
INDEXES: BoundedDict[str, tuple[tuple[str | None, object], ...]] = BoundedDict(4096)


@dataclass(frozen=True)
class ManifestFound:
    """The manifest that a pull would use."""

    media_type: str
    digest: str
    platforms: tuple[str, ...] = ()
    # For an index: the digest of the platform's manifest (the one a pull would fetch next).
    platform_digest: str | None = None
    # The registry's RateLimit-Limit / RateLimit-Remaining on this answer (Docker Hub sends
    # them: "100;w=21600"), the count only; empty when not sent.
    ratelimit: tuple[str, str] = ("", "")


_COUNT = re.compile(r"\s*(\d{1,12})\s*(?:;|$)")


def ratelimit_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(limit, remaining) counts of ``RateLimit-Limit`` / ``RateLimit-Remaining`` (Docker
    Hub: ``100;w=21600``), each "" when absent or not a count."""
    found = []
    for name in ("RateLimit-Limit", "RateLimit-Remaining"):
        match = _COUNT.match(str(headers.get(name, ""))[:200])
        found.append(match.group(1) if match else "")
    return found[0], found[1]


def platform_of(entry: object) -> str | None:
    """``os/arch[/variant]`` of an index entry, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("platform"), dict):
        return None
    p = entry["platform"]
    os_name, arch, variant = p.get("os", "?"), p.get("architecture", "?"), p.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    out = f"{os_name[:64]}/{arch[:64]}"
    return out + f"/{variant[:64]}" if isinstance(variant, str) and variant else out


def platform_matches(available: str, wanted: str) -> bool:
    """Compare ``os/arch[/variant]``; a wanted platform without variant matches any."""
    a = available.split("/")
    w = wanted.split("/")
    if a[:2] != w[:2]:
        return False
    if len(w) > 2 and len(a) > 2:
        return a[2] == w[2] or (w[2] == "v8" and a[2] == "v8")
    return True


async def probe_manifest(
    http: Http,
    image: ImageReference,
    auth: Authorization,
    platform: str,
    anonymous: bool,
) -> ManifestFound:
    """Check that the image's manifest exists and lists the platform.

    Raises:
        StepError: REPOSITORY_NOT_FOUND, TAG_NOT_FOUND, IMAGE_NOT_FOUND,
            PLATFORM_NOT_FOUND, AUTH_REQUIRED, PERMISSION_DENIED or a registry code.
    """
    host = image.api_host
    url = f"https://{host}/v2/{image.repository}/manifests/{image.manifest_ref}"
    headers = {"Accept": ACCEPT}
    if auth.header:
        headers["Authorization"] = auth.header
    reply = await http.request("HEAD", url, headers=headers)
    media = reply.headers.get("Content-Type", "").split(";")[0].strip()
    known = INDEXES.get(reply.headers.get("Docker-Content-Digest", "")) if reply.status == 200 else None
    if known is not None and media in _INDEX_TYPES:
        return _index_found(media, reply.headers.get("Docker-Content-Digest", ""), known, platform,
                            f"{image.repository}:{image.manifest_ref}", ratelimit_headers(reply.headers))
    if reply.status != 200 or media in _INDEX_TYPES:
        reply = await http.request("GET", url, headers=headers)
        media = reply.headers.get("Content-Type", "").split(";")[0].strip()
    fail_on_common(reply, host, "manifest request")
    what = f"{image.repository}:{image.manifest_ref}"
    if reply.status in (401, 403):
        detail = "; ".join(error_messages(reply)) or f"HTTP {reply.status}"
        if anonymous:
            raise StepError(Code.AUTH_REQUIRED, f"{what} needs authentication ({detail})")
        raise StepError(Code.PERMISSION_DENIED, f"pull of {what} was denied ({detail})")
    if reply.status == 404:
        codes = error_codes(reply)
        detail = "; ".join(error_messages(reply)) or "HTTP 404"
        if "NAME_UNKNOWN" not in codes:
            # distribution answers MANIFEST_UNKNOWN for a missing repository too; its tag
            # list tells the two apart (NAME_UNKNOWN / 404 when the repository is missing).
            tags = await http.request(
                "GET", f"https://{host}/v2/{image.repository}/tags/list", headers=headers, params={"n": "1"}
            )
            if tags.status == 200:
                raise StepError(Code.TAG_NOT_FOUND, f"{what} not found; the repository exists ({detail})")
            # A 404 with the registry's error codes (NAME_UNKNOWN) speaks for the repository;
            # a plain 404 (no registry error body) is "no such endpoint": the registry has no
            # tag list, and the manifest's own code decides below.
            if tags.status == 404:
                codes |= error_codes(tags)
        if "NAME_UNKNOWN" in codes:
            raise StepError(Code.REPOSITORY_NOT_FOUND, f"repository {image.repository} not found ({detail})")
        if "MANIFEST_UNKNOWN" in codes:
            raise StepError(Code.TAG_NOT_FOUND, f"{what} not found ({detail})")
        raise StepError(Code.IMAGE_NOT_FOUND, f"{what} not found ({detail})")
    if reply.status != 200:
        raise StepError(
            Code.REGISTRY_ERROR,
            f"manifest request for {what} answered HTTP {reply.status}",
            detail=f"HTTP {reply.status}",
        )
    digest = reply.headers.get("Docker-Content-Digest", "")
    limits = ratelimit_headers(reply.headers)
    if media not in _INDEX_TYPES:
        return ManifestFound(media or "unknown", digest, ratelimit=limits)
    doc = reply.json()
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise StepError(
            Code.REGISTRY_ERROR,
            f"{what} is served as an index ({media}) whose manifests field is not a list",
            detail="a malformed image index",
        )
    kept = tuple(
        (platform_of(e), e.get("digest") if isinstance(e, dict) else None) for e in entries[:_MAX_ENTRIES]
    )
    if digest and digest == "sha256:" + hashlib.sha256(reply.body).hexdigest():
        INDEXES[digest] = kept
    return _index_found(media, digest, kept, platform, what, limits)


def _index_found(
    media: str, digest: str, entries: tuple[tuple[str | None, object], ...], platform: str, what: str,
    limits: tuple[str, str],
) -> ManifestFound:
    """An index's answer for ``platform``: the entry a pull would use, or PLATFORM_NOT_FOUND."""
    real = tuple(p for p, _ in entries if p and p != "unknown/unknown")  # not attestation entries
    chosen = next(
        (d for p, d in entries if p and p != "unknown/unknown" and platform_matches(p, platform)), None
    )
    if not any(platform_matches(p, platform) for p in real):
        shown = ", ".join(real[:_MAX_PLATFORMS_SHOWN]) or "none"
        raise StepError(
            Code.PLATFORM_NOT_FOUND,
            f"{what} is an index without {platform} (it has {shown})",
            detail=shown,
        )
    return ManifestFound(media, digest, real, chosen if isinstance(chosen, str) else None, ratelimit=limits)
