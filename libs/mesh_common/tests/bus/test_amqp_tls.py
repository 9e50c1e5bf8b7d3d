"""AMQP over TLS against a test-owned RabbitMQ node with certificates made by the test.

The node listens with TLS only for AMQP clients (plus a loopback plain listener for its own
tooling), requires a client certificate, and the bus must: connect with the right CA and client
certificate; refuse a broker whose certificate another CA signed; refuse a broker whose name does
not match; fail to connect without a client certificate; never fall back to plain AMQP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mesh_common.bus import BusSettings, MessageContext, create_bus
from mesh_common.bus.amqp import tls_context
from mesh_common.testing import rabbit_node
from mesh_common.testing.servers import in_ci
from pydantic import BaseModel, SecretStr

pytestmark = pytest.mark.rabbitmq

TLS_PORT = 5695


class Ping(BaseModel):
    __message_type__: ClassVar[str] = "tls.ping"
    text: str


class Pong(BaseModel):
    text: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(directory: Path, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
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
    (directory / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    names: list[str],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / f"{stem}.key", key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "edumesh-test-ca")
    other = _ca(d, "someone-else-ca")
    _leaf(d, "server", ca, server=True, names=["localhost"])  # not its IP: see the name test
    _leaf(d, "client", ca, server=False, names=["booking.edumesh"])
    _leaf(d, "rogue-client", other, server=False, names=["booking.edumesh"])
    return d


@pytest.fixture(scope="module")
def tls_node(pki: Path):
    if not rabbit_node.available():
        message = "rabbitmq-server is not installed on this machine"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    config = (
        f"listeners.ssl.default = 127.0.0.1:{TLS_PORT}\n"
        f"ssl_options.cacertfile = {pki / 'edumesh-test-ca.pem'}\n"
        f"ssl_options.certfile = {pki / 'server.pem'}\n"
        f"ssl_options.keyfile = {pki / 'server.key'}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"
        "ssl_options.versions.1 = tlsv1.3\n"
        "ssl_options.versions.2 = tlsv1.2\n"
    )
    node = rabbit_node.RabbitNode(
        name="meshtlstest", port=5694, dist_port=25694, extra_config=config
    )
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


def _settings(pki: Path, service: str, host: str = "localhost", **tls: str | None) -> BusSettings:
    files = {
        "tls_ca_file": str(pki / "edumesh-test-ca.pem"),
        "tls_cert_file": str(pki / "client.pem"),
        "tls_key_file": str(pki / "client.key"),
        **tls,
    }
    return BusSettings(
        service=service,
        amqp_url=SecretStr(f"amqps://guest:guest@{host}:{TLS_PORT}/"),
        connect_timeout=5,
        reconnect_interval=0.2,
        **files,
    )


async def test_rpc_over_mutual_tls(tls_node, pki: Path) -> None:
    server = create_bus(_settings(pki, "tlsserver"))

    @server.rpc()
    async def ping(msg: Ping, ctx: MessageContext) -> Pong:
        return Pong(text=msg.text.upper())

    client = create_bus(_settings(pki, "tlsclient"))
    await server.start()
    await client.start()
    try:
        reply = await client.call(Ping(text="über tls"), Pong, timeout=10)
        assert reply.text == "ÜBER TLS"
        # The broker's view: every connection of ours is TLS 1.2+ (none fell back to plain).
        listing = tls_node.ctl("list_connections", "client_properties", "ssl", "ssl_protocol")
        ours = [line for line in listing.splitlines() if "edumesh:tls" in line]
        assert len(ours) >= 2, listing
        assert all("true" in line and ("tlsv1.3" in line or "tlsv1.2" in line) for line in ours)
    finally:
        await client.stop()
        await server.stop()


async def _fails_to_connect(settings: BusSettings) -> BaseException:
    bus = create_bus(settings)
    with pytest.raises(BaseException) as err:
        await asyncio.wait_for(bus.start(), 15)
    await bus.stop()
    return err.value


async def test_a_broker_signed_by_another_ca_is_refused(tls_node, pki: Path) -> None:
    error = await _fails_to_connect(
        _settings(pki, "tlsbadca", tls_ca_file=str(pki / "someone-else-ca.pem"))
    )
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error) or isinstance(error, ssl.SSLError), error


async def test_a_broker_whose_name_does_not_match_is_refused(tls_node, pki: Path) -> None:
    # Same broker and a valid certificate, but addressed by a name not in its certificate.
    error = await _fails_to_connect(_settings(pki, "tlsname", host="127.0.0.1"))
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error) or "mismatch" in repr(error), error


async def test_without_a_trusted_client_certificate_the_broker_refuses(tls_node, pki: Path) -> None:
    await _fails_to_connect(_settings(pki, "tlsnocert", tls_cert_file=None, tls_key_file=None))
    await _fails_to_connect(
        _settings(
            pki,
            "tlsrogue",
            tls_cert_file=str(pki / "rogue-client.pem"),
            tls_key_file=str(pki / "rogue-client.key"),
        )
    )


def test_tls_files_with_a_plain_url_are_a_configuration_error(pki: Path) -> None:
    settings = BusSettings(
        service="x",
        amqp_url=SecretStr("amqp://guest:guest@localhost/"),
        tls_ca_file=str(pki / "edumesh-test-ca.pem"),
    )
    with pytest.raises(ValueError, match="not amqps"):
        tls_context(settings, "amqp://guest:guest@localhost/")
