"""A throw-away certificate authority for tests, the demo and benchmarks.

Servers started by the harness present a certificate issued here, and clients verify it
against ``ca.pem``: the same checks as in production, without touching the system store.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
# Back-dated so that a server whose clock is a little behind still accepts the chain.
CLOCK_SKEW = datetime.timedelta(days=1)
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=365)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: as strong as RSA 3072, generated in microseconds, understood by LuaSec,
    # fast_tls (ejabberd), OpenSSL and Twisted alike.
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so that a private key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A self-signed CA kept as ``ca.pem`` and ``ca.key`` in one directory."""

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = Path(directory)
        self.cert = cert
        self._key = key

    @classmethod
    def create(cls, directory: os.PathLike | str,
               name: str = "Medulla test CA") -> CertificateAuthority:
        """Make a new CA in ``directory`` (created if missing), overwriting any there."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(directory / CA_KEY_NAME, _key_pem(key), 0o600)
        _write(directory / CA_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: os.PathLike | str) -> CertificateAuthority:
        """Open a CA that :meth:`create` wrote earlier."""
        directory = Path(directory)
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_NAME).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY_NAME).read_bytes(), password=None)
        return cls(directory, cert, key)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_NAME

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_NAME

    @property
    def fingerprint_sha256(self) -> str:
        """SHA-256 of the DER certificate, lower-case hex without separators."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def issued(self, cert_path: os.PathLike | str) -> bool:
        """Whether the PEM certificate at ``cert_path`` exists and was signed by this CA."""
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
            cert.verify_directly_issued_by(self.cert)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue_server(self, domain: str, directory: os.PathLike | str,
                     owner: str | None = None) -> tuple[Path, Path]:
        """Issue a server certificate for ``domain`` into ``directory``.

        The names cover ``domain``, ``*.domain``, ``localhost`` and ``127.0.0.1``, so one
        certificate serves the XMPP domain and clients that connect by address. Returns
        ``(cert_path, key_path)``. ``owner`` (a user name) gets the files when we are root,
        because the server reads its key after dropping to that user.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName(domain), x509.DNSName(f"*.{domain}"),
                 x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            # clientAuth too: XMPP servers present the same certificate on outgoing s2s.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_path = directory / f"{domain}.pem"
        key_path = directory / f"{domain}.key"
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        if owner is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            for path in (cert_path, key_path):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return cert_path, key_path
