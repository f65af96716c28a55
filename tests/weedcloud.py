"""SeaweedFS set up like a cloud endpoint, for the tests of endpoints, TLS and STS.

* `TestCA`: a certificate authority made in the test (openssl CLI), and server
  certificates it signs;
* `OidcIssuer`: an OpenID Connect issuer on 127.0.0.1 (discovery document and
  JWKS over HTTP) whose RS256 tokens SeaweedFS's STS accepts; tokens are signed
  with openssl, like a kubelet-projected service account token;
* `CloudWeed`: a real `weed server` with domain names for virtual-hosted
  buckets (`-s3.domainName`: a test domain and the OSS and AWS endpoint names),
  https on a second port with a certificate from
  TestCA, and STS (AssumeRoleWithWebIdentity) with sessions of a few seconds,
  next to the usual http port and static admin key pair;
* `private_hosts()`: argv prefix that runs a command in a private mount
  namespace whose /etc/hosts resolves the bucket host names to 127.0.0.1 —
  nothing outside that namespace sees it.

Everything listens on 127.0.0.1 and lives in the test's temp dir.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from pailfs.credentials import Credentials
from pailfs.server import SeaweedServer, free_port

DOMAIN = "s3.pailfs.test"
# host names SeaweedFS serves virtual-hosted buckets under: a test domain, and the
# OSS and AWS endpoint names, which resolve to 127.0.0.1 only inside private_hosts()
OSS_HOST = "oss-cn-hangzhou.aliyuncs.com"
AWS_HOST = "s3.us-west-2.amazonaws.com"
DOMAINS = (DOMAIN, OSS_HOST, AWS_HOST)
ROLE_ARN = "arn:aws:iam::role/PailfsTestRole"
AUDIENCE = "sts.amazonaws.com"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode()[-300:]}")
    return proc.stdout


class TestCA:
    """A CA made for one test session; `issue()` signs server certificates."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "pailfs test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = directory / "ca.key", directory / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
                 "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, name: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """(certificate, key) for a server known by these names."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.dir / f"{name}.ext"
        san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={dns[0] if dns else name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
        return cert, key


class LocalService:
    """A small HTTP service on 127.0.0.1 (an OIDC issuer, an STS, a metadata service)
    answering with `handler`, a BaseHTTPRequestHandler subclass; `reply()` sends a body."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, name="local-service", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def reply(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class OidcIssuer(LocalService):
    """An OIDC issuer on 127.0.0.1: /.well-known/openid-configuration and /keys (JWKS)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / "oidc.key"
        _openssl("genrsa", "-out", str(self.key), "2048")
        modulus = _openssl("rsa", "-in", str(self.key), "-noout", "-modulus").decode().strip().split("=", 1)[1]
        jwk = {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
               "n": _b64url(bytes.fromhex(modulus)), "e": _b64url((65537).to_bytes(3, "big"))}
        documents: dict[str, object] = {"/keys": {"keys": [jwk]}, "/.well-known/jwks.json": {"keys": [jwk]}}

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                self.reply(200 if path in documents else 404, documents.get(path, {}))

        super().__init__(Handler)
        documents["/.well-known/openid-configuration"] = {"issuer": self.url, "jwks_uri": self.url + "/keys"}

    def token(self, subject: str = "system:serviceaccount:default:pailfs", audience: str = AUDIENCE,
              ttl: int = 3600) -> str:
        """A signed RS256 JWT, as kubelet projects into a pod."""
        now = int(time.time())
        head = _b64url(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode())
        claims = _b64url(json.dumps({"iss": self.url, "sub": subject, "aud": audience,
                                     "iat": now, "exp": now + ttl}).encode())
        signature = _openssl("dgst", "-sha256", "-sign", str(self.key), input=f"{head}.{claims}".encode())
        return f"{head}.{claims}.{_b64url(signature)}"


class CloudWeed:
    """A SeaweedFS with a domain name, https and STS (see the module docstring)."""

    def __init__(self, directory: Path, ca: TestCA, issuer: OidcIssuer, session: str = "4s") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.https_port = free_port()
        cert, key = ca.issue("s3", dns=tuple(n for d in DOMAINS for n in (d, f"*.{d}")), ips=("127.0.0.1",))
        iam = directory / "iam.json"
        iam.write_text(json.dumps({
            "sts": {"tokenDuration": session, "maxSessionLength": "12h", "issuer": "pailfs-test-sts",
                    "signingKey": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "providers": [{"name": "test-oidc", "type": "oidc", "enabled": True,
                                   "config": {"issuer": issuer.url, "clientId": AUDIENCE,
                                              "jwksUri": issuer.url + "/keys"}}]},
            "policy": {"defaultEffect": "Deny"},
            "roles": [{"roleName": "PailfsTestRole", "roleArn": ROLE_ARN,
                       "trustPolicy": {"Version": "2012-10-17", "Statement": [{
                           "Effect": "Allow", "Principal": {"Federated": "test-oidc"},
                           "Action": ["sts:AssumeRoleWithWebIdentity"]}]},
                       "attachedPolicies": ["PailfsTestAll"]}],
            "policies": [{"name": "PailfsTestAll", "document": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]},
                {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]}]}}],
        }))
        iam.chmod(0o600)
        self.server = SeaweedServer(directory / "weed", extra_args=(
            f"-s3.domainName={','.join(DOMAINS)}", f"-s3.port.https={self.https_port}",
            f"-s3.cert.file={cert}", f"-s3.key.file={key}", f"-s3.iam.config={iam}"))
        self.ca = ca
        self.issuer = issuer

    def start(self) -> "CloudWeed":
        state = self.server.start()
        self.http_port = state.s3_port
        return self

    def stop(self) -> None:
        self.server.stop(timeout=3)

    @property
    def admin(self) -> Credentials:
        return self.server.credentials()

    def admin_env(self) -> dict[str, str]:
        """The static admin key pair, as pailfs reads it from the environment."""
        return {"AWS_ACCESS_KEY_ID": self.admin.access_key, "AWS_SECRET_ACCESS_KEY": self.admin.secret_key}

    @property
    def sts_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def assume(self, token: str, duration: int | None = None) -> Credentials:
        """Session credentials for a web identity token, straight from SeaweedFS's STS
        (the server's 4-second sessions, or `duration` seconds: 900 at least)."""
        form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": ROLE_ARN,
                "RoleSessionName": "pailfs-test", "WebIdentityToken": token}
        if duration:
            form["DurationSeconds"] = str(duration)
        resp = httpx.post(self.sts_endpoint + "/", data=form, timeout=10)
        assert resp.status_code == 200, resp.text[:300]
        text = resp.text

        def field(name: str) -> str:
            return text.split(f"<{name}>", 1)[1].split(f"</{name}>", 1)[0]

        expires = datetime.fromisoformat(field("Expiration").replace("Z", "+00:00")).timestamp()
        return Credentials(field("AccessKeyId"), field("SecretAccessKey"), field("SessionToken"), expires,
                           source="test STS")


def private_hosts(hosts_file: Path, names: tuple[str, ...]) -> list[str]:
    """argv prefix: run the rest in a private mount namespace where `names` resolve to
    127.0.0.1 (a bind mount over /etc/hosts that no other process sees)."""
    hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in names))
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts_file)]
