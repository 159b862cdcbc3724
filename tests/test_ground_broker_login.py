"""The ground service signing in to a broker that demands it: mosquitto with
``allow_anonymous false``, a password file (made by ``mosquitto_passwd``) and a TLS listener
whose certificate is signed by a CA made here. The ingest, the live feed and the dispatcher
all connect with the service's account over TLS; a wrong password or an unknown CA connects
nothing; a password file others may read is refused before anything starts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from companion.security.keys import KeyStore
from ground.web.config import WebConfigError
from sim.mqtt_broker import find_mosquitto, free_port
from tests.ground_web_fixtures import make_web
from tests.waiting import wait_until

PASSWORD = "broker pass phrase"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) files."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """mosquitto on a TLS listener with a password file; (port, CA file)."""
    binary = find_mosquitto()
    if binary is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    folder = tmp_path / "broker"
    folder.mkdir()
    ca, cert, key = make_pki(folder)
    passwd = folder / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "ground", PASSWORD],
        check=True,
        capture_output=True,
    )
    os.chmod(passwd, 0o600)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\npersistence false\n"
        # Started as root, mosquitto would switch to the user "mosquitto", who cannot read
        # this test's private folder: stay the user we are.
        + (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else "")
    )
    log = (folder / "mosquitto.log").open("wb")
    process = subprocess.Popen([str(binary), "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_until(lambda: _listening(port) or process.poll() is not None, "mosquitto up")
        assert process.poll() is None, (folder / "mosquitto.log").read_text()
        yield port, ca
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _password_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / f"broker-password-{time.monotonic_ns()}"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def test_ingest_live_feed_and_dispatch_sign_in_over_tls(tmp_path: Path, secured_broker) -> None:
    port, ca = secured_broker
    KeyStore(tmp_path / "dispatcher").init_dispatcher()
    web = make_web(
        tmp_path,
        broker=f"127.0.0.1:{port}",
        broker_username="ground",
        broker_password_file=_password_file(tmp_path, PASSWORD),
        broker_tls=True,
        broker_ca_file=ca,
        dispatcher_keys=tmp_path / "dispatcher",
    )
    try:
        with TestClient(web.app):
            assert web.ground.ingestor.wait_connected(20), web.ground.ingestor.stats()
            assert web.app.state.live.wait_connected(20)
            assert web.ground.dispatcher.publisher.wait_connected(20)
    finally:
        web.store.close()


@pytest.mark.parametrize("wrong", ["password", "ca"])
def test_a_wrong_password_or_an_unknown_ca_connects_nothing(
    tmp_path: Path, secured_broker, wrong: str
) -> None:
    port, ca = secured_broker
    other_ca = make_pki(_folder(tmp_path / "other"))[0]
    web = make_web(
        tmp_path,
        broker=f"127.0.0.1:{port}",
        broker_username="ground",
        broker_password_file=_password_file(
            tmp_path, PASSWORD + "x" if wrong == "password" else PASSWORD
        ),
        broker_tls=True,
        broker_ca_file=other_ca if wrong == "ca" else ca,
    )
    try:
        with TestClient(web.app):
            assert not web.ground.ingestor.wait_connected(3)
            assert not web.app.state.live.wait_connected(0.5)
    finally:
        web.store.close()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_a_password_file_others_may_read_or_an_empty_one_is_refused(tmp_path: Path) -> None:
    for path, why in (
        (_password_file(tmp_path, PASSWORD, 0o644), "chmod 600"),
        (_password_file(tmp_path, ""), "empty"),
        (tmp_path / "missing", "No such file"),
    ):
        with pytest.raises(WebConfigError, match=why):
            make_web(
                _folder(tmp_path / f"case-{time.monotonic_ns()}"),
                broker="127.0.0.1:1883",
                broker_username="ground",
                broker_password_file=path,
            )
    with pytest.raises(WebConfigError, match="without a broker user"):
        make_web(_folder(tmp_path / "no-user"), broker="127.0.0.1:1883", broker_password_file=path)
