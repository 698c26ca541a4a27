"""Certificates the operator makes for itself: a small CA and serving certificates. Pure.

Used by the admission webhook (:mod:`pullhealth.admission.certs` keeps them in a Secret and
injects the CA) and by the secure ``/metrics`` endpoint (a fresh self-signed chain each
start, as controller-runtime's secure metrics serving does). EC P-256 keys; no I/O.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 365
RENEW_CERT_BEFORE = datetime.timedelta(days=30)
RENEW_CA_BEFORE = datetime.timedelta(days=365)
CA_CRT, CA_KEY, TLS_CRT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


@dataclass(frozen=True)
class Bundle:
    """PEM texts: the CA (key only when the operator generated it) and the serving pair."""

    ca_crt: str
    tls_crt: str
    tls_key: str
    ca_key: str = ""

    def data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64)."""
        values = {CA_CRT: self.ca_crt, CA_KEY: self.ca_key, TLS_CRT: self.tls_crt, TLS_KEY: self.tls_key}
        return {k: base64.b64encode(v.encode()).decode() for k, v in values.items() if v}

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> Bundle | None:
        """From a Secret's ``data``; None when a part is missing or not base64."""
        try:
            parts = {
                k: base64.b64decode(str((data or {})[k])).decode() for k in (CA_CRT, CA_KEY, TLS_CRT, TLS_KEY)
            }
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
        return cls(parts[CA_CRT], parts[TLS_CRT], parts[TLS_KEY], parts[CA_KEY])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def new_ca(now: datetime.datetime | None = None) -> tuple[str, str]:
    """A CA certificate and key (PEM)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("pullhealth admission CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def issue(ca_crt: str, ca_key: str, hosts: Sequence[str], now: datetime.datetime | None = None) -> Bundle:
    """A serving certificate for ``hosts`` (DNS names or IP addresses), signed by the CA."""
    now = now or _now()
    ca = x509.load_pem_x509_certificate(ca_crt.encode())
    signer = serialization.load_pem_private_key(ca_key.encode(), None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "pullhealth-admission"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=CERT_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return Bundle(ca_crt, cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key), ca_key)


def generate(hosts: Sequence[str], now: datetime.datetime | None = None) -> Bundle:
    """A new CA and a serving certificate for ``hosts``."""
    ca_crt, ca_key = new_ca(now)
    return issue(ca_crt, ca_key, hosts, now)


def _covers(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(n.value) for n in alt}
    return all(str(n.value) in present for n in _alt_names(hosts))


def renewed(
    current: Bundle | None, hosts: Sequence[str], now: datetime.datetime | None = None
) -> Bundle | None:
    """The bundle to store instead of ``current``, or None when it is good: a new CA when
    there is none (or it ends within a year), a new serving certificate from the same CA
    when it ends within 30 days or lacks one of ``hosts``."""
    now = now or _now()
    if current is None or not current.ca_key:
        return generate(hosts, now)
    try:
        ca = x509.load_pem_x509_certificate(current.ca_crt.encode())
        cert = x509.load_pem_x509_certificate(current.tls_crt.encode())
    except ValueError:
        return generate(hosts, now)
    if ca.not_valid_after_utc - now < RENEW_CA_BEFORE:
        return generate(hosts, now)
    if cert.not_valid_after_utc - now < RENEW_CERT_BEFORE or not _covers(cert, hosts):
        return issue(current.ca_crt, current.ca_key, hosts, now)
    return None
