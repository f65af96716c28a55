"""Authentication on every port of the embedded SeaweedFS.

S3 requests are signed (SigV4, the key pair in credentials.json). The other
ports weed opens — master, volume server and filer over HTTP and gRPC, the S3
gateway's gRPC — would let any local user read, overwrite and delete every
object, so each start writes a fresh `security.toml` into the private data dir
(weed reads it from its working directory) with:

* mutual TLS on every gRPC port (`[grpc.*]`) and on the master, volume and filer
  HTTP ports (`[https.*]`): a client must present a certificate signed by a CA
  made for this start. The CA's key is never written down; only the node key
  (mode 0600) stays, for weed's own components talking to each other;
* JWT signing keys for volume-server writes and reads and for filer writes and
  reads (`[jwt.signing]`, `[jwt.signing.read]`, `[jwt.filer_signing]`,
  `[jwt.filer_signing.read]`), a second lock behind the first;
* the volume server UI off and no directory metadata in filer GETs.

Secrets (JWT keys, the node key) live only in files of mode 0600 in the 0700
data dir, never in argv (`ps`) or in logs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

CERT_DAYS = 3650
SERVICES = ("master", "volume", "filer", "s3")  # what opens a gRPC port in `weed server`
HTTPS_SERVICES = ("master", "volume", "filer")  # what opens a plain HTTP port besides S3
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
JWT_SECONDS = 10


@dataclass(frozen=True)
class TlsFiles:
    ca: Path    # the CA certificate clients and servers trust
    cert: Path  # the certificate every component presents (server and client)
    key: Path   # its private key (0600)


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file only its owner can read (created 0600, replaced if present)."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_certificates(directory: Path) -> TlsFiles:
    """A throwaway CA and one certificate for 127.0.0.1 signed by it (serverAuth and
    clientAuth: every weed component is both). The CA key is dropped after signing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pailfs embedded SeaweedFS CA")])
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = (x509.CertificateBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pailfs-seaweedfs")]))
                 .issuer_name(ca_name)
                 .public_key(node_key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(not_before).not_valid_after(not_after)
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                 .add_extension(x509.SubjectAlternativeName([
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                     critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                       ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                 .sign(ca_key, hashes.SHA256()))
    directory.mkdir(mode=0o700, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "node.crt", directory / "node.key")
    write_private(files.key, node_key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    write_private(files.cert, node_cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _toml_string(value: str | Path) -> str:
    text = str(value)
    if any(c in text for c in '"\\\n\r') or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"a path pailfs cannot write into security.toml: {text!r}")
    return f'"{text}"'


def security_toml(tls: TlsFiles) -> str:
    """The text of security.toml with new random JWT keys."""
    ca, cert, key = (_toml_string(p) for p in (tls.ca, tls.cert, tls.key))
    lines = ["# written by pailfs at each start; new keys and certificates every time", ""]
    for section in JWT_SECTIONS:
        lines += [f"[{section}]", f'key = "{secrets.token_hex(32)}"', f"expires_after_seconds = {JWT_SECONDS}", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false", ""]
    lines += ["[grpc]", f"ca = {ca}", ""]
    for service in SERVICES:
        lines += [f"[grpc.{service}]", f"cert = {cert}", f"key = {key}", ""]
    lines += ["[grpc.client]", f"cert = {cert}", f"key = {key}", ""]
    for service in HTTPS_SERVICES:
        lines += [f"[https.{service}]", f"cert = {cert}", f"key = {key}", f"ca = {ca}", ""]
    lines += ["[https.client]", "enabled = true", f"cert = {cert}", f"key = {key}", f"ca = {ca}", ""]
    return "\n".join(lines)


def write_security_config(directory: Path) -> Path:
    """Fresh certificates and security.toml in `directory` (weed's working dir)."""
    tls = make_certificates(directory / "tls")
    path = directory / "security.toml"
    write_private(path, security_toml(tls))
    return path
