"""``make_dev_certs``: the files it writes verify as a chain, with the SANs, usages and permissions promised."""

from __future__ import annotations

import datetime
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from runner.certs import DevCerts, make_dev_certs
from runner.errors import InvalidArgument


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def common_name(certificate: x509.Certificate) -> str:
    (attribute,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)


def eku(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs") / "sub", clients=("alice", "bob.svc_1-x"))


def test_writes_the_promised_files(certs: DevCerts) -> None:
    directory = certs.ca_cert.parent
    assert certs.ca_cert == directory / "ca.pem"
    assert certs.server_cert == directory / "server.pem"
    assert certs.server_key == directory / "server-key.pem"
    assert dict(certs.clients) == {
        "alice": (directory / "alice.pem", directory / "alice-key.pem"),
        "bob.svc_1-x": (directory / "bob.svc_1-x.pem", directory / "bob.svc_1-x-key.pem"),
    }
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "alice.pem",
            "alice-key.pem",
            "bob.svc_1-x.pem",
            "bob.svc_1-x-key.pem",
        ]
    )


def test_private_keys_are_0600_and_certificates_world_readable(certs: DevCerts) -> None:
    directory = certs.ca_cert.parent
    for key in (directory / "ca-key.pem", certs.server_key, *(k for _, k in certs.clients.values())):
        assert mode(key) == 0o600, key
    for cert in (certs.ca_cert, certs.server_cert, *(c for c, _ in certs.clients.values())):
        assert mode(cert) == 0o644, cert


def test_keys_are_p256_and_match_their_certificates(certs: DevCerts) -> None:
    directory = certs.ca_cert.parent
    pairs = [(certs.ca_cert, directory / "ca-key.pem"), (certs.server_cert, certs.server_key), *certs.clients.values()]
    for cert_path, key_path in pairs:
        key = load_key(key_path)
        assert isinstance(key.curve, ec.SECP256R1)
        assert load_cert(cert_path).public_key() == key.public_key(), cert_path


def test_ca_is_a_ca(certs: DevCerts) -> None:
    ca = load_cert(certs.ca_cert)
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_server_certificate_verifies_for_each_name(certs: DevCerts) -> None:
    ca, server = load_cert(certs.ca_cert), load_cert(certs.server_cert)
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    assert common_name(server) == "localhost"
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]

    builder = PolicyBuilder().store(Store([ca])).time(datetime.datetime.now(datetime.UTC))
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = builder.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(x509.verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("example.com")).verify(server, [])


def test_client_certificates_carry_their_name_and_client_auth(certs: DevCerts) -> None:
    ca = load_cert(certs.ca_cert)
    for name, (cert_path, _) in certs.clients.items():
        client = load_cert(cert_path)
        assert client.issuer == ca.subject
        client.verify_directly_issued_by(ca)
        assert common_name(client) == name
        assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_validity_follows_days(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, days=3)
    server = load_cert(made.server_cert)
    now = datetime.datetime.now(datetime.UTC)
    assert server.not_valid_before_utc < now
    assert datetime.timedelta(days=2, hours=23) < server.not_valid_after_utc - now <= datetime.timedelta(days=3)


def test_custom_server_names_become_dns_and_ip_sans(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, server_names=("runner.internal", "10.1.2.3", "fd00::7"), clients=())
    server = load_cert(made.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["runner.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("fd00::7"),
    ]
    assert common_name(server) == "runner.internal"
    assert made.clients == {}


def test_two_runs_make_unrelated_cas(tmp_path: Path) -> None:
    first, second = make_dev_certs(tmp_path / "a"), make_dev_certs(tmp_path / "b")
    ca_a, ca_b = load_cert(first.ca_cert), load_cert(second.ca_cert)
    assert ca_a.subject != ca_b.subject
    with pytest.raises(ValueError):
        load_cert(second.clients["alice"][0]).verify_directly_issued_by(ca_a)


def test_refuses_to_overwrite_and_leaves_files_alone(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(InvalidArgument, match=re.escape("ca.pem already exists")):
        make_dev_certs(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before

    # Only one of the targets exists (another client's files): still refused, naming that file, nothing written.
    other = tmp_path / "other"
    other.mkdir()
    (other / "bob-key.pem").write_text("keep me")
    with pytest.raises(InvalidArgument, match=re.escape("bob-key.pem already exists")):
        make_dev_certs(other, clients=("alice", "bob"))
    assert [p.name for p in other.iterdir()] == ["bob-key.pem"]
    assert (other / "bob-key.pem").read_text() == "keep me"

    made.server_key.chmod(0o644)
    again = make_dev_certs(tmp_path, overwrite=True)
    assert again.ca_cert.read_bytes() != before[made.ca_cert]
    assert mode(again.server_key) == 0o600
    load_cert(again.server_cert).verify_directly_issued_by(load_cert(again.ca_cert))


@pytest.mark.parametrize(
    "name",
    ["", "a" * 65, "a/b", "../x", "bob smith", "x\n", "é", ".hidden", "-rf", "ca", "server", "ca-key", "server-key"],
)
def test_bad_client_names_are_refused_before_writing(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="client name"):
        make_dev_certs(tmp_path / "out", clients=(name,))
    assert not (tmp_path / "out").exists()


def test_longest_client_name_is_accepted(tmp_path: Path) -> None:
    name = "a" * 64
    made = make_dev_certs(tmp_path, clients=(name,))
    assert common_name(load_cert(made.clients[name][0])) == name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": ("alice", "alice")}, "unique"),
        ({"server_names": ()}, "at least one server name"),
        ({"server_names": ("localhost", "")}, "empty"),
        ({"server_names": ("two words",)}, "white space"),
        ({"server_names": ("bücher.example",)}, "ASCII"),
        ({"days": 0}, "days"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make_dev_certs(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
