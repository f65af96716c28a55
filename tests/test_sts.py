"""Temporary credentials against SeaweedFS's real STS (4-second sessions, which it
enforces: X-Amz-Security-Token is checked and expired sessions are refused).

Every source of the chain that gives temporary credentials is exercised for real:
a session token from the environment or a passwd file, credential_process,
web identity (IRSA: AssumeRoleWithWebIdentity against SeaweedFS; RRSA: the
Alibaba AssumeRoleWithOIDC shape, served by an adapter that asks SeaweedFS),
and instance metadata (ECS and EC2 shapes, served on 127.0.0.1 with credentials
from SeaweedFS). Refreshes are counted; a long-lived mount and a Checkpointer
keep working across expiries; a failing refresh is retried and logged without a
secret, and requests fail with one clear error only once the old credentials
have expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest

from mounts import mount_stats, mounted
from pailfs import Checkpointer
from pailfs.config import parse_options
from pailfs.credentials import Credentials, RefreshingCredentials, resolve_credentials
from pailfs.errors import AccessDenied, BadCredentials
from pailfs.server import free_port
from pailfs.store.s3 import S3Store
from weedcloud import ROLE_ARN, LocalService, QuietHandler

pytestmark = pytest.mark.timeout(240)
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OSS_ACCESS_KEY_ID",
                   "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
                   "PAILFS_ENDPOINT", "URL", "AWS_REGION", "PAILFS_CREDENTIAL_PROCESS", "AWS_STS_ENDPOINT",
                   "PAILFS_STS_ENDPOINT")


@pytest.fixture
def clean_env(monkeypatch, cloud):
    """No credentials in the environment; the endpoint is the cloud server's http port."""
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PAILFS_ENDPOINT", f"http://127.0.0.1:{cloud.http_port}")
    assert not any(Path(p).expanduser().exists() for p in ("/etc/passwd-pailfs", "~/.passwd-pailfs"))


@pytest.fixture
def irsa(clean_env, cloud, tmp_path, monkeypatch) -> Path:
    """EKS IRSA's environment: a projected token file and a role ARN (STS: the cloud server)."""
    token = tmp_path / "eks-token"
    token.write_text(cloud.issuer.token())
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_STS_ENDPOINT", cloud.sts_endpoint)
    return token


def source_for(bucket: str, *specs: str) -> RefreshingCredentials | Credentials | None:
    return resolve_credentials(bucket, parse_options(list(specs)))


async def exercise(store: S3Store, seconds: float, tag: str) -> tuple[int, list[str]]:
    """PUT, GET (obstore) and LIST, HEAD (S3Api) in a loop; (rounds, errors)."""
    errors: list[str] = []
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = f"{tag}/{rounds % 5}"
        body = f"{tag} round {rounds}".encode()
        try:
            await store.put(key, body)
            assert await store.get(key) == body
            assert (await store.head(key)).size == len(body)
            assert key in [o.key for o in (await store.list(f"{tag}/")).objects]
        except Exception as exc:  # noqa: BLE001 - counted; the assertion below shows them
            errors.append(f"{type(exc).__name__}: {exc}")
        rounds += 1
        await asyncio.sleep(0.1)
    return rounds, errors


def on_store(bucket: str, source, body):
    async def main():
        store = S3Store(bucket, endpoint=os.environ["PAILFS_ENDPOINT"], credentials=source)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


# --- the sessions are real -----------------------------------------------------------------
def test_session_tokens_are_sent_and_expire_for_real(cloud, cloud_bucket, clean_env, monkeypatch, tmp_path):
    session = cloud.assume(cloud.issuer.token())
    for prefix, token_var in (("AWS", "AWS_SESSION_TOKEN"), ("OSS", "OSS_SESSION_TOKEN")):
        key_var, secret_var = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if prefix == "AWS"
                               else ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"))
        monkeypatch.setenv(key_var, session.access_key)
        monkeypatch.setenv(secret_var, session.secret_key)
        monkeypatch.setenv(token_var, session.token)
        found = source_for(cloud_bucket)
        assert found == session and found.source == f"env {key_var}"

        async def body(store):
            await store.put("tok/k", b"with a session token")             # obstore
            listed = [o.key for o in (await store.list("tok/")).objects]  # S3Api
            return await store.get("tok/k"), listed

        assert on_store(cloud_bucket, found, body) == (b"with a session token", ["tok/k"])
        for var in (key_var, secret_var, token_var):
            monkeypatch.delenv(var)
    # the passwd file's bucket line may carry the token as a fourth field
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{cloud_bucket}:{session.access_key}:{session.secret_key}:{session.token}\n")
    passwd.chmod(0o600)
    assert source_for(cloud_bucket, f"passwd_file={passwd}") == session
    # without the token the key pair is refused, by both clients
    no_token = Credentials(session.access_key, session.secret_key, source="test")
    for call in ("get", "list"):
        with pytest.raises(AccessDenied):
            on_store(cloud_bucket, no_token, lambda s: s.get("tok/k") if call == "get" else s.list("tok/"))
    # and the session ends: the same credentials, used after their expiry, are refused
    while time.time() < session.expires_at + 1:
        time.sleep(0.2)
    with pytest.raises(AccessDenied):
        on_store(cloud_bucket, session, lambda s: s.get("tok/k"))


# --- web identity ----------------------------------------------------------------------------
def test_irsa_web_identity_refreshes_before_expiry(cloud, cloud_bucket, irsa, caplog):
    caplog.set_level(logging.INFO, logger="pailfs.credentials")
    source = source_for(cloud_bucket)
    assert isinstance(source, RefreshingCredentials) and source.source == f"web identity role {ROLE_ARN}"
    rounds, errors = on_store(cloud_bucket, source, lambda store: exercise(store, 10, "irsa"))
    print(f"\nIRSA: {rounds} rounds of PUT/GET/HEAD/LIST over 10 s of 4 s sessions: "
          f"{source.refreshes} refreshes, {len(errors)} errors")
    assert errors == [] and rounds > 20
    assert source.refreshes >= 2
    refreshed = [r.getMessage() for r in caplog.records if "refreshed" in r.getMessage()]
    assert len(refreshed) == source.refreshes
    secrets = [source.current().secret_key, source.current().token, irsa.read_text()]
    assert not any(s in r.getMessage() for r in caplog.records for s in secrets)


class AlibabaStsAdapter(LocalService):
    """Alibaba's STS API shape (POST AssumeRoleWithOIDC, JSON answer) on 127.0.0.1,
    answered with real session credentials from SeaweedFS's AssumeRoleWithWebIdentity."""

    def __init__(self, cloud) -> None:
        self.calls: list[dict[str, str]] = []
        calls = self.calls

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["content-length"])).decode()))
                calls.append(form)
                if form.get("Action") != "AssumeRoleWithOIDC" or not form.get("OIDCProviderArn"):
                    return self.reply(400, {"Code": "InvalidParameter"})
                creds = cloud.assume(form["OIDCToken"])
                self.reply(200, {"RequestId": "test", "Credentials": {
                    "AccessKeyId": creds.access_key, "AccessKeySecret": creds.secret_key,
                    "SecurityToken": creds.token, "Expiration": iso(creds.expires_at)}})

        super().__init__(Handler)


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_rrsa_ack_environment(cloud, cloud_bucket, clean_env, tmp_path, monkeypatch):
    token = tmp_path / "ack-token"
    token.write_text(cloud.issuer.token())
    adapter = AlibabaStsAdapter(cloud)
    try:
        monkeypatch.setenv("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1234567890:role/pailfs-reader")
        monkeypatch.setenv("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1234567890:oidc-provider/ack-rrsa-c1")
        monkeypatch.setenv("ALIBABA_CLOUD_OIDC_TOKEN_FILE", str(token))
        source = source_for(cloud_bucket, f"sts_endpoint={adapter.url}")
        assert isinstance(source, RefreshingCredentials)
        rounds, errors = on_store(cloud_bucket, source, lambda store: exercise(store, 6, "rrsa"))
    finally:
        adapter.close()
    assert errors == [] and source.refreshes >= 1
    assert len(adapter.calls) == source.refreshes + 1
    call = adapter.calls[0]
    assert call["RoleArn"] == "acs:ram::1234567890:role/pailfs-reader"
    assert call["OIDCProviderArn"] == "acs:ram::1234567890:oidc-provider/ack-rrsa-c1"
    assert (call["Format"], call["Version"], call["OIDCToken"]) == ("JSON", "2015-04-01", token.read_text())


def test_web_identity_misconfiguration_is_one_line(clean_env, monkeypatch, tmp_path, cloud):
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    with pytest.raises(BadCredentials, match="AWS_WEB_IDENTITY_TOKEN_FILE is not set"):
        source_for("b")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_STS_ENDPOINT", cloud.sts_endpoint)
    source = source_for("b")
    with pytest.raises(BadCredentials) as caught:
        source.current()
    assert "cannot read the token file" in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "absent").write_text(cloud.issuer.token(audience="someone-else"))
    with pytest.raises(BadCredentials, match=r"STS http://127\.0\.0\.1:\d+/ refused web identity role .*HTTP 4"):
        source.current()


# --- credential_process ------------------------------------------------------------------------
PROCESS = r'''
import json, os, sys, urllib.parse, urllib.request
endpoint, role, token_file, log, flag, *extra = sys.argv[1:]
with open(log, "a") as f:
    f.write(json.dumps(extra) + "\n")
if os.path.exists(flag):
    sys.stderr.write("helper failed while holding secret HELPER-STDERR-SECRET\n")
    print("not json: HELPER-STDOUT-SECRET")
    sys.exit(3)
form = urllib.parse.urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role,
                               "RoleSessionName": "process", "WebIdentityToken": open(token_file).read()})
xml = urllib.request.urlopen(endpoint + "/", form.encode(), timeout=10).read().decode()
field = lambda n: xml.split(f"<{n}>")[1].split(f"</{n}>")[0]
print(json.dumps({"Version": 1, "AccessKeyId": field("AccessKeyId"), "SecretAccessKey": field("SecretAccessKey"),
                  "SessionToken": field("SessionToken"), "Expiration": field("Expiration")}))
'''


@pytest.fixture
def process(cloud, clean_env, tmp_path):
    """A credential_process helper that gets sessions from SeaweedFS's STS; it fails
    (printing secrets to stderr and stdout) while the flag file exists."""
    script = tmp_path / "helper.py"
    script.write_text(PROCESS)
    token = tmp_path / "token"
    token.write_text(cloud.issuer.token())
    calls, flag = tmp_path / "calls.log", tmp_path / "fail-now"
    command = (f"{sys.executable} {script} {cloud.sts_endpoint} {ROLE_ARN} {token} {calls} {flag} "
               "'$HOME and spaces' ;echo")
    return command, calls, flag


def test_credential_process_runs_without_a_shell_and_refreshes(cloud_bucket, process):
    command, calls, _ = process
    source = source_for(cloud_bucket, f"credential_process={command}")
    assert isinstance(source, RefreshingCredentials)
    rounds, errors = on_store(cloud_bucket, source, lambda store: exercise(store, 7, "process"))
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert errors == [] and source.refreshes >= 1 and len(runs) == source.refreshes + 1
    assert runs[0] == ["$HOME and spaces", ";echo"]  # words split like sh, nothing expanded or run


def test_refresh_failure_is_retried_logged_without_secrets_then_one_clear_error(cloud_bucket, process, caplog):
    caplog.set_level(logging.INFO, logger="pailfs")
    command, calls, flag = process
    source = source_for(cloud_bucket, f"credential_process={command}")

    async def body(store):
        await store.put("f/k", b"v")
        first = source.current()
        flag.write_text("fail")  # the helper breaks
        outcomes: list[tuple[float, str]] = []
        while time.time() < first.expires_at + 1.5:
            try:
                await store.get("f/k")
                outcomes.append((time.time(), "ok"))
            except AccessDenied as exc:
                outcomes.append((time.time(), str(exc)))
            await asyncio.sleep(0.1)
        flag.unlink()  # the helper works again
        await store.put("f/k2", b"after")
        return first, outcomes, await store.get("f/k2")

    first, outcomes, recovered = on_store(cloud_bucket, source, body)
    before = [o for t, o in outcomes if t < first.expires_at - 0.3]
    after = [o for t, o in outcomes if t > first.expires_at + 0.3]
    assert before and all(o == "ok" for o in before)  # the old credentials kept working
    assert source.failures >= 2  # a failed refresh is tried again
    assert after
    for message in after:
        assert message.startswith(f"read s3://{cloud_bucket}/f/k: credentials from credential_process "), message
        assert "expired at" in message and "could not be refreshed" in message, message
        assert "exited with status 3" in message and "\n" not in message
    assert recovered == b"after" and source.refreshes >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not refresh credentials from credential_process" in w and "retrying" in w
               for w in warnings)
    logged = " ".join(r.getMessage() for r in caplog.records) + " ".join(after)
    assert "SECRET" not in logged and first.secret_key not in logged and first.token not in logged


# --- instance metadata -----------------------------------------------------------------------------
class MetadataService(LocalService):
    """ECS (100.100.100.200) and EC2 (IMDSv2) metadata shapes on 127.0.0.1, handing out
    SeaweedFS STS sessions for the role PailfsRole."""

    def __init__(self, cloud) -> None:
        self.fetches = {"ecs": 0, "ec2": 0}
        fetches = self.fetches

        class Handler(QuietHandler):
            def do_PUT(self) -> None:  # noqa: N802
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self.reply(200, "ec2-session-token", "text/plain")
                if self.path == "/latest/api/token" and self.headers.get("X-aliyun-ecs-metadata-token-ttl-seconds"):
                    return self.reply(200, "ecs-session-token", "text/plain")
                self.reply(400, "", "text/plain")

            def do_GET(self) -> None:  # noqa: N802
                ecs = re.fullmatch(r"/latest/meta-data/ram/security-credentials/(\w*)", self.path)
                ec2 = re.fullmatch(r"/latest/meta-data/iam/security-credentials/(\w*)", self.path)
                if ec2 and self.headers.get("X-aws-ec2-metadata-token") != "ec2-session-token":
                    return self.reply(401, "", "text/plain")
                if ecs and self.headers.get("X-aliyun-ecs-metadata-token") != "ecs-session-token":
                    return self.reply(403, "", "text/plain")
                match = ecs or ec2
                if match is None or match.group(1) not in ("", "PailfsRole"):
                    return self.reply(404, "", "text/plain")
                if not match.group(1):
                    return self.reply(200, "PailfsRole\n", "text/plain")
                creds = cloud.assume(cloud.issuer.token())
                fetches["ecs" if ecs else "ec2"] += 1
                if ecs:
                    body = {"AccessKeyId": creds.access_key, "AccessKeySecret": creds.secret_key,
                            "SecurityToken": creds.token, "Expiration": iso(creds.expires_at), "Code": "Success"}
                else:
                    body = {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": creds.access_key,
                            "SecretAccessKey": creds.secret_key, "Token": creds.token,
                            "Expiration": iso(creds.expires_at)}
                self.reply(200, body)

        super().__init__(Handler)


@pytest.mark.parametrize("option, kind", [("ram_role=PailfsRole", "ecs"), ("ram_role=auto", "ecs"),
                                          ("iam_role=auto", "ec2")])
def test_instance_metadata_ecs_and_ec2(cloud, cloud_bucket, clean_env, option, kind):
    service = MetadataService(cloud)
    try:
        source = source_for(cloud_bucket, f"{option},metadata_url={service.url}")
        rounds, errors = on_store(cloud_bucket, source, lambda store: exercise(store, 6, kind))
    finally:
        service.close()
    assert errors == [] and source.refreshes >= 1
    assert service.fetches[kind] == source.refreshes + 1


def test_instance_metadata_unreachable_is_one_line(cloud_bucket, clean_env):
    source = source_for(cloud_bucket, f"ram_role=PailfsRole,metadata_url=http://127.0.0.1:{free_port()}")
    with pytest.raises(BadCredentials) as caught:
        on_store(cloud_bucket, source, lambda store: store.check())
    assert re.fullmatch(rf"open s3://{cloud_bucket}/: no credentials from ram_role PailfsRole: "
                        r"ram_role PailfsRole: cannot reach 127\.0\.0\.1:\d+ \(ConnectError\)", str(caught.value))


# --- long-lived users: a mount and a Checkpointer ------------------------------------------------------
@pytest.mark.mount
def test_long_lived_mount_reads_across_five_refreshes(cloud, cloud_bucket, irsa, tmp_path):
    """The measurement of the closing note: a mount on 4-second STS sessions, a reader
    looping over its files (every open asks the store: max_stat_cache_size=0) until
    the mount has refreshed its credentials at least 5 times."""
    files = {f"data/f{i:02d}.bin": os.urandom(10_000 + i) for i in range(40)}

    async def upload(store):
        for key, data in files.items():
            await store.put(key, data)

    on_store(cloud_bucket, source_for(cloud_bucket), upload)
    log = tmp_path / "mount.log"
    reads = errors = 0
    with mounted(cloud_bucket, tmp_path / "mnt", f"ro,max_stat_cache_size=0,logfile={log}",
                 env=dict(os.environ)) as mnt:
        deadline = time.monotonic() + 90
        refreshes = 0
        while refreshes < 5 and time.monotonic() < deadline:
            for key, data in files.items():
                try:
                    with open(mnt / key, "rb") as f:
                        if f.read() != data:
                            errors += 1
                except OSError:
                    errors += 1
                reads += 1
            refreshes = log.read_text().count("refreshed (access key")
        stats = mount_stats(mnt)
    text = log.read_text()
    print(f"\nlong-lived mount: {refreshes} credential refreshes (4 s STS sessions), {reads} reads, "
          f"{errors} read errors, {sum(stats['store']['requests'].values()) if 'store' in stats else '?'} "
          "store requests")
    assert refreshes >= 5 and errors == 0 and reads > 0
    assert "could not refresh" not in text and irsa.read_text() not in text


def test_checkpointer_saves_across_expiries(cloud, cloud_bucket, irsa, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pailfs.credentials")
    src = tmp_path / "ckpt"
    src.mkdir()
    with Checkpointer(f"s3://{cloud_bucket}/run", max_to_keep=2) as ckpt:
        for step in range(1, 5):
            (src / "weights.bin").write_bytes(os.urandom(200_000))
            ckpt.save(step, src).result(60)
            # the next save starts after the credentials in use have expired
            until = [m for r in caplog.records for m in re.findall(r"valid until (\S+)\)", r.getMessage())][-1]
            expiry = datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
            while time.time() < expiry + 0.5:
                time.sleep(0.2)
        ckpt.wait()
        latest, kept = ckpt.latest(), [c.step for c in ckpt.list()]
        ckpt.restore(tmp_path / "restored")
    assert latest == 4 and kept == [3, 4]
    assert (tmp_path / "restored" / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert sum("refreshed" in r.getMessage() for r in caplog.records) >= 3
