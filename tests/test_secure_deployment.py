"""A secured Deployment Engine on 127.0.0.1: TLS (a CA and a server certificate made here with
``cryptography``, which Flower itself depends on) and SuperNode authentication (EC P-384 keys
registered with ``flwr supernode register``). A run over it completes; an unregistered SuperNode
and a plain-text client are refused."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import Processes, free_port, read_rounds, run_dirs, semanticfl, wait_for_port

from semanticfl.engine.deployment import CONNECTION, write_connection

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("fashion_mnist_available"),
    pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH"),
]

NODES = ("node0", "node1")
GIVE_UP = ["--max-retries", "1", "--max-wait-time", "15"]  # a refused SuperNode exits instead of retrying


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: x509.Name, signer, extensions: list) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def make_credentials(folder: Path) -> dict[str, Path]:
    """A CA, the SuperLink's certificate for 127.0.0.1/localhost signed by it, and one OpenSSH
    EC P-384 key pair per SuperNode (plus an ``intruder`` whose key is never registered)."""
    folder.mkdir()
    pem = serialization.Encoding.PEM
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("semanticfl test CA", ca_key, _name("semanticfl test CA"), ca_key,
                      [(x509.BasicConstraints(ca=True, path_length=None), True)])
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = _certificate("localhost", server_key, ca.subject, ca_key, [(names, False)])
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(server.public_bytes(pem))
    files["key"].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for node in (*NODES, "intruder"):
        key = ec.generate_private_key(ec.SECP384R1())
        files[node] = folder / node
        files[node].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        files[node + ".pub"] = folder / f"{node}.pub"
        files[node + ".pub"].write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
    return files


def flwr_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["flwr", *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLWR_HOME": str(home)})


@pytest.fixture(scope="module")
def secure_link(tmp_path_factory):
    """A TLS SuperLink with SuperNode authentication and two registered, connected SuperNodes."""
    folder = tmp_path_factory.mktemp("secure")
    files = make_credentials(folder / "credentials")
    port = free_port()
    cli_home = folder / "cli-home"
    write_connection(cli_home, f"127.0.0.1:{port}", str(files["ca"]))
    procs = Processes(folder)
    try:
        procs.start(
            "superlink", "flower-superlink", "--port", str(port), "--enable-supernode-auth",
            "--ssl-ca-certfile", str(files["ca"]), "--ssl-certfile", str(files["cert"]),
            "--ssl-keyfile", str(files["key"]),
        )
        wait_for_port(port)
        for i, node in enumerate(NODES):
            registered = flwr_cli("supernode", "register", str(files[node + ".pub"]), CONNECTION, home=cli_home)
            assert "registered successfully" in registered.stdout, registered.stdout + registered.stderr
            procs.start(
                node, "flower-supernode", "--root-certificates", str(files["ca"]),
                "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                "--auth-supernode-private-key", str(files[node]),
                "--node-config", f"partition-id={i} num-partitions=2",
            )
        yield {"port": port, "files": files, "procs": procs, "folder": folder, "cli_home": cli_home}
    finally:
        procs.stop_all()


def test_a_run_completes_over_tls_with_authenticated_supernodes(secure_link, tmp_path):
    out = tmp_path / "runs"
    result = semanticfl(
        "run", "quickstart", "partition.num_clients=2", "data.train_fraction=0.05", "train.rounds=1",
        "engine.backend=deployment", f"experiment.output_dir={out}",
        "--superlink", f"127.0.0.1:{secure_link['port']}", "--root-certificates", str(secure_link["files"]["ca"]),
        cwd=tmp_path, timeout=500, env={"FLWR_HOME": str(tmp_path / "cli-home")},
    )
    assert result.returncode == 0, result.stderr[-3000:] + secure_link["procs"].log("superlink")
    (record,) = read_rounds(run_dirs(out)[0])
    assert (record["clients"], record["failures"]) == (2, {})
    assert record["test_accuracy"] > 10.0


@pytest.mark.parametrize("key", ["intruder", None], ids=["unregistered-key", "no-key"])
def test_a_supernode_without_a_registered_key_is_refused(secure_link, key):
    files, procs = secure_link["files"], secure_link["procs"]
    name = f"refused-{key}"
    auth = ["--auth-supernode-private-key", str(files[key])] if key else []
    node = procs.start(
        name, "flower-supernode", "--root-certificates", str(files["ca"]),
        "--superlink", f"127.0.0.1:{secure_link['port']}", "--port", str(free_port()), *auth,
        "--node-config", "partition-id=0 num-partitions=2", *GIVE_UP,
    )
    assert node.wait(timeout=120) != 0
    assert "could not establish a connection to the SuperLink" in procs.log(name)
    if key:
        assert "No SuperNode found with the given public key" in procs.log("superlink")


def test_plain_text_clients_cannot_connect_to_a_tls_superlink(secure_link, tmp_path):
    procs, port = secure_link["procs"], secure_link["port"]
    node = procs.start(
        "plaintext-supernode", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
        "--port", str(free_port()), "--node-config", "partition-id=0 num-partitions=2", *GIVE_UP,
    )
    assert node.wait(timeout=120) != 0
    assert "could not establish a connection to the SuperLink" in procs.log("plaintext-supernode")

    plain_home = tmp_path / "plain-home"
    write_connection(plain_home, f"127.0.0.1:{port}", None)
    listing = flwr_cli("supernode", "ls", CONNECTION, home=plain_home)
    assert "Connection to the SuperLink is unavailable" in listing.stdout + listing.stderr
    secure = flwr_cli("supernode", "ls", CONNECTION, "--format", "json", home=secure_link["cli_home"])
    assert secure.returncode == 0 and secure.stdout.count('"online"') == len(NODES), secure.stdout
