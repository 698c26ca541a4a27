"""Throwaway certificate authorities for the local test servers."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import trustme


class PKI:
    """A trusted CA, an unrelated "untrusted" CA, and leaf issuance to files.

    Attributes:
        directory: Where PEM files are written.
        ca: The CA whose certificate is in ``ca_bundle`` (clients trust it).
        untrusted_ca: A second CA that clients are never told about.
        ca_bundle: PEM file with the trusted CA certificate.
        untrusted_ca_bundle: PEM file with the untrusted CA certificate.
    """

    def __init__(self, directory: Path) -> None:
        """Create both CAs and write their bundles under ``directory``."""
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="pullhealth test CA")
        self.untrusted_ca = trustme.CA(organization_name="pullhealth UNTRUSTED CA")
        self.ca_bundle = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.untrusted_ca_bundle = directory / "untrusted-ca.pem"
        self.untrusted_ca.cert_pem.write_to_path(str(self.untrusted_ca_bundle))
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def issue(self, hosts: list[str] | tuple[str, ...]) -> tuple[Path, Path]:
        """Issue a server certificate from the trusted CA.

        Args:
            hosts: DNS names and/or IP addresses to put in subjectAltName.

        Returns:
            ``(cert_path, key_path)``; the cert file holds the full chain.
        """
        return self._issue(self.ca, hosts, "leaf")

    def issue_untrusted(self, hosts: list[str] | tuple[str, ...]) -> tuple[Path, Path]:
        """Issue a server certificate from the untrusted CA (see :meth:`issue`)."""
        return self._issue(self.untrusted_ca, hosts, "untrusted")

    def _issue(self, ca: trustme.CA, hosts: list[str] | tuple[str, ...], prefix: str) -> tuple[Path, Path]:
        if not hosts:
            raise ValueError("at least one host is required")
        with self._lock:  # unique file names even when servers start in parallel
            n = next(self._seq)
        leaf = ca.issue_cert(*hosts)
        cert_path = self.directory / f"{prefix}-{n}.crt"
        key_path = self.directory / f"{prefix}-{n}.key"
        with cert_path.open("wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path
