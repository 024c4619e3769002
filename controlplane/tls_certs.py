"""`controlplane tls-certs`: a private CA and a server certificate for Temporal's frontend.

docker-compose runs it once into a volume that Temporal (server certificate and key) and the
API (the CA, which it also hands to workers at start) mount; an existing set is kept, so
restarts do not change what workers trust. Bring your own certificates in production if you
have a PKI: the API needs only TEMPORAL_TLS_CA_FILE and TEMPORAL_TLS_SERVER_NAME.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CERT_FILE = "temporal.pem"
KEY_FILE = "temporal.key"
VALID_DAYS = 825


@dataclass(frozen=True)
class CertificateSet:
    directory: Path
    created: bool

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def certificate(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate(directory: Path, hosts: list[str]) -> CertificateSet:
    """A CA and a server certificate for `hosts` (names or IPs) in `directory`, unless the
    directory already holds a set."""
    if not hosts:
        raise ValueError("at least one host name is needed")
    certs = CertificateSet(directory, created=False)
    if certs.ca.exists() and certs.certificate.exists() and certs.key.exists():
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("controlplane Temporal CA"))
        .issuer_name(_name("controlplane Temporal CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    # Readable by the Temporal server's own user in its container; the volume is theirs only.
    fd = os.open(certs.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_pem_key(server_key))
    return CertificateSet(directory, created=True)
