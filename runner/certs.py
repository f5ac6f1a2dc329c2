"""``mcp-runner certs``: a throw-away certificate authority and certificates for trying mTLS on one machine.

Development only: the CA key sits next to the certificates it signs, unencrypted. In production the
certificates come from the organisation's own CA and this module is not involved. Keys are ECDSA P-256
(small, fast, accepted by every gRPC TLS stack); private key files are created 0600 from the start, never
chmod-ed after being written, so there is no moment when another user could read them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runner.errors import InvalidArgument

# A client name becomes a certificate CN (the caller's identity) and a file name: keep it boring.
# It must start with a letter or digit so it is neither a hidden file nor mistaken for a CLI option.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"

# Certificates start a little in the past so a client whose clock lags behind still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class DevCerts:
    """Where ``make_dev_certs`` wrote everything; ``clients`` maps a client name to its (cert, key)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    clients: Mapping[str, tuple[Path, Path]]


def make_dev_certs(
    directory: Path,
    *,
    server_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    clients: Sequence[str] = ("alice",),
    days: int = 365,
    overwrite: bool = False,
) -> DevCerts:
    """Write a development CA, a server certificate and one client certificate per name into ``directory``.

    ``server_names`` become the server certificate's SANs (IP entries for addresses, DNS entries otherwise;
    the first is also its CN). Each client certificate has CN=<name> and the clientAuth usage, which is
    what the runner's mTLS authentication reads as the caller's name. Every input is checked and every
    target file looked at before anything is written, so a refusal leaves the directory as it was.
    """
    if days < 1:
        raise InvalidArgument(f"days must be at least 1, not {days}")
    sans = _server_sans(server_names)
    for name in clients:
        if not CLIENT_NAME.fullmatch(name):
            raise InvalidArgument(
                f"client name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    if len(set(clients)) != len(clients):
        raise InvalidArgument("client names must be unique")

    directory = Path(directory)
    ca_cert, ca_key = directory / CA_CERT, directory / CA_KEY
    server_cert, server_key = directory / SERVER_CERT, directory / SERVER_KEY
    client_files = {name: (directory / f"{name}.pem", directory / f"{name}-key.pem") for name in clients}
    targets = [ca_cert, ca_key, server_cert, server_key]
    for name, pair in client_files.items():
        for path in pair:
            if path in targets:
                raise InvalidArgument(f"client name {name!r} would overwrite {path.name}; choose another name")
            targets.append(path)
    if not overwrite:
        for path in targets:
            if path.exists() or path.is_symlink():
                raise InvalidArgument(f"{path} already exists; remove it or overwrite it (mcp-runner certs --force)")

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - _BACKDATE, now + datetime.timedelta(days=days)

    # A random suffix tells two development CAs apart in error messages and certificate dumps.
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mcp-sandbox-runner (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mcp-runner development CA {secrets.token_hex(4)}"),
        ]
    )
    ca_private = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_private.public_key()), critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    _write_key(ca_key, ca_private, overwrite)
    _write_cert(ca_cert, ca_certificate, overwrite)

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName] | None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        private = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_private.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return private, builder.sign(ca_private, hashes.SHA256())

    private, certificate = issue(server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write_key(server_key, private, overwrite)
    _write_cert(server_cert, certificate, overwrite)
    for name, (cert_path, key_path) in client_files.items():
        private, certificate = issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, None)
        _write_key(key_path, private, overwrite)
        _write_cert(cert_path, certificate, overwrite)
    return DevCerts(ca_cert=ca_cert, server_cert=server_cert, server_key=server_key, clients=client_files)


def _server_sans(server_names: Sequence[str]) -> list[x509.GeneralName]:
    """IP SANs for addresses (clients dialling 127.0.0.1 check those), DNS SANs for everything else."""
    if not server_names:
        raise InvalidArgument("at least one server name is needed")
    sans: list[x509.GeneralName] = []
    for name in server_names:
        if not name or name != name.strip() or any(c.isspace() for c in name):
            raise InvalidArgument(f"server name {name!r} is empty or contains white space")
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name.isascii():
                raise InvalidArgument(f"server name {name!r} must be ASCII (use its IDNA 'xn--' form)") from None
            sans.append(x509.DNSName(name))
    return sans


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, overwrite: bool) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600, overwrite)


def _write_cert(path: Path, certificate: x509.Certificate, overwrite: bool) -> None:
    _write(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Create ``path`` with ``mode`` already set; O_EXCL keeps a file that appeared meanwhile intact."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    if not overwrite:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise InvalidArgument(f"{path} already exists; remove it or overwrite it (mcp-runner certs --force)") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # exact mode: an overwritten file keeps its old one, umask alters a new one
        out.write(data)
