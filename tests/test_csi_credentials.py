"""The CSI node plugin's credentials against SeaweedFS's real STS: a Secret that
carries a session token, and PVs that name a credential method (authType irsa /
rrsa) and mount with the pod's own service account token, which kubelet passes in
the volume context and refreshes by republishing. Plus the manifests that set it
up (CSIDriver tokenRequests, ServiceAccount annotations), validated like
test_k8s.py does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml

from pailfs.csi import csi_pb2, mounts
from pailfs.csi.node import POD_TOKENS_KEY, CsiError, NodeService, plan_mount
from weedcloud import ROLE_ARN

pytestmark = pytest.mark.timeout(180)
Mode = csi_pb2.VolumeCapability.AccessMode
FILES = {"data/a.txt": b"alpha\n", "data/b.bin": os.urandom(100_000)}


def request(target: Path, context: dict[str, str], secrets: dict[str, str] | None = None,
            volume_id: str = "pv-sts") -> csi_pb2.NodePublishVolumeRequest:
    req = csi_pb2.NodePublishVolumeRequest(volume_id=volume_id, target_path=str(target), volume_context=context,
                                           secrets=secrets or {})
    req.volume_capability.mount.SetInParent()
    req.volume_capability.access_mode.mode = Mode.MULTI_NODE_READER_ONLY
    return req


def pod_tokens(token: str, audience: str = "sts.amazonaws.com") -> str:
    """What kubelet puts under csi.storage.k8s.io/serviceAccount.tokens."""
    return json.dumps({audience: {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})


@pytest.fixture
def node(tmp_path, monkeypatch, cloud):
    """A NodeService whose environment has the admin's STS endpoint and nothing else of ours."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "PAILFS_ENDPOINT", "URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_STS_ENDPOINT", cloud.sts_endpoint)
    service = NodeService("node-1", state_dir=tmp_path / "state")
    targets: list[Path] = []
    yield service, targets
    for target in targets:
        if mounts.is_mount_point(str(target)):
            service.unpublish(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-sts", target_path=str(target)))


@pytest.fixture
def data(cloud, cloud_bucket, monkeypatch) -> str:
    from mounts import put_objects

    with monkeypatch.context() as env:
        for name, value in cloud.admin_env().items():
            env.setenv(name, value)
        env.setenv("PAILFS_ENDPOINT", f"http://127.0.0.1:{cloud.http_port}")
        put_objects(f"s3://{cloud_bucket}", FILES)
    return cloud_bucket


def context_for(cloud, bucket: str, **extra: str) -> dict[str, str]:
    return {"bucket": bucket, "url": f"http://127.0.0.1:{cloud.http_port}", "path": "/data",
            "otherOpts": "max_stat_cache_size=0", **extra}


@pytest.mark.mount
def test_secret_with_a_session_token(cloud, data, node, tmp_path):
    service, targets = node
    session = cloud.assume(cloud.issuer.token(), duration=900)
    target = tmp_path / "pod" / "mount"
    targets.append(target)
    secrets = {"akId": session.access_key, "akSecret": session.secret_key, "securityToken": session.token}
    service.publish(request(target, context_for(cloud, data), secrets))
    assert (target / "a.txt").read_bytes() == FILES["data/a.txt"]
    passwd = service.secret_dir("pv-sts", str(target)) / "passwd"
    assert passwd.read_text() == f"{data}:{session.access_key}:{session.secret_key}:{session.token}\n"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    argv = " ".join(open(f"/proc/{pid}/cmdline").read().replace("\0", " ") for pid in daemons(target))
    assert session.token not in argv and session.secret_key not in argv

    # without the token the same keys are refused: the mount fails, saying so, never quoting the key
    bad = tmp_path / "pod2" / "mount"
    targets.append(bad)
    with pytest.raises(CsiError) as caught:
        service.publish(request(bad, context_for(cloud, data), {"akId": session.access_key,
                                                               "akSecret": session.secret_key}, "pv-bad"))
    assert caught.value.code == grpc.StatusCode.INTERNAL and "access denied" in caught.value.message
    assert session.secret_key not in caught.value.message


@pytest.mark.mount
def test_irsa_pv_mounts_with_the_pods_token_and_follows_republish(cloud, data, node, tmp_path):
    service, targets = node
    target = tmp_path / "pod" / "mount"
    targets.append(target)
    subject = "system:serviceaccount:ml:train"
    first_expires = time.time() + 12
    first = cloud.issuer.token(subject=subject, ttl=12)  # STS refuses it after 12 s
    ctx = context_for(cloud, data, authType="irsa", roleArn=ROLE_ARN) | {POD_TOKENS_KEY: pod_tokens(first)}
    service.publish(request(target, ctx))
    token_file = service.secret_dir("pv-sts", str(target)) / "token"
    assert token_file.read_text() == first and stat.S_IMODE(token_file.stat().st_mode) == 0o600

    def read_until(deadline: float) -> int:
        reads = 0
        while time.time() < deadline:
            assert (target / "b.bin").read_bytes() == FILES["data/b.bin"]
            reads += 1
            time.sleep(0.2)
        return reads

    assert read_until(time.time() + 5) > 10  # across a 4-second session: refreshed with the token file
    # kubelet republishes with a rotated token: the file is replaced, the mount stays
    second = cloud.issuer.token(subject=subject, ttl=3600)
    service.publish(request(target, ctx | {POD_TOKENS_KEY: pod_tokens(second)}))
    assert token_file.read_text() == second and mounts.is_mount_point(str(target))
    # past the first token's end, every refresh needs the second one: reads go on
    assert read_until(first_expires + 6) > 10
    service.unpublish(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-sts", target_path=str(target)))
    assert not token_file.exists() and not mounts.is_mount_point(str(target))


@pytest.mark.parametrize("extra, reason", [
    ({"authType": "kerberos"}, "authType 'kerberos' is not one of secret, irsa, rrsa"),
    ({"authType": "irsa", "roleArn": "role/x"}, "roleArn must be a role ARN"),
    ({"authType": "rrsa", "roleArn": "acs:ram::123:role/r"}, "oidcProviderArn must be like"),
    ({"roleArn": ROLE_ARN}, "need authType irsa or rrsa"),
    ({"authType": "irsa", "roleArn": ROLE_ARN}, "needs the pod's service account token for audience sts.amazonaws.com"),
    ({"authType": "rrsa", "roleArn": "acs:ram::123:role/r", "oidcProviderArn": "acs:ram::123:oidc-provider/p",
      POD_TOKENS_KEY: pod_tokens("tok-for-aws-only")}, "audience sts.aliyuncs.com"),
])
def test_bad_credential_attributes_are_refused_before_mounting(extra, reason, tmp_path, node):
    service, _ = node
    ctx = {"bucket": "bk1", "url": "oss-cn-hangzhou.aliyuncs.com", **extra}
    with pytest.raises(CsiError) as caught:
        service.publish(request(tmp_path / "t", ctx, {"akId": "AKIDX", "akSecret": "skx"}))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and reason in caught.value.message
    assert "tok-for-aws-only" not in caught.value.message and not (tmp_path / "t").exists()


def test_ack_pv_url_without_scheme_plans_https_virtual_hosted():
    """An ACK PV as written for ossplugin.csi.alibabacloud.com, only the driver name changed."""
    req = request(Path("/mnt/t"), {"bucket": "tf-bucket", "url": "oss-cn-hangzhou-internal.aliyuncs.com",
                                   "path": "/tf-train/train/data", "otherOpts": "umask=022,max_stat_cache_size=0"})
    plan = plan_mount(req)
    from pailfs.config import parse_options
    from pailfs.store.endpoint import endpoint_of

    address = endpoint_of(parse_options([",".join(plan.tokens)], env={}))
    assert address.bucket_url("tf-bucket") == "https://tf-bucket.oss-cn-hangzhou-internal.aliyuncs.com"
    assert address.region == "cn-hangzhou"


# --- manifests -------------------------------------------------------------------------------------
SEED = ["--bucket", "tf-bucket", "--url", "oss-cn-beijing.aliyuncs.com", "--data-path", "/tf-train/train/data",
        "--checkpoint-prefix", "tf-train/training_logs", "--image", "registry.example.com/ml/train:1.0"]


def manifests(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "pailfs", "k8s", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    for doc in docs:
        for version in ("1.30.0", "1.34.0"):
            kubernetes_validate.validate(doc, version, strict=True)
    return docs


@pytest.mark.parametrize("auth, extra, annotation", [
    ("irsa", ["--role-arn", "arn:aws:iam::123456789012:role/train"],
     {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/train"}),
    ("rrsa", ["--role-arn", "acs:ram::1234567890:role/train", "--oidc-provider-arn",
              "acs:ram::1234567890:oidc-provider/ack-rrsa-c1"], {"pod-identity.alibabacloud.com/role-name": "train"}),
])
def test_pattern_manifests_for_irsa_and_rrsa(auth, extra, annotation):
    docs = manifests("manifests", *SEED, "--auth", auth, *extra)
    kinds = {d["kind"]: d for d in docs}
    assert list(kinds) == ["ServiceAccount", "PersistentVolume", "PersistentVolumeClaim", "Job"]
    assert kinds["ServiceAccount"]["metadata"]["annotations"] == annotation
    csi = kinds["PersistentVolume"]["spec"]["csi"]
    assert "nodePublishSecretRef" not in csi and csi["volumeAttributes"]["authType"] == auth
    assert csi["volumeAttributes"]["url"] == "oss-cn-beijing.aliyuncs.com"
    pod = kinds["Job"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "OSS_ACCESS_KEY_ID" not in env and env["PAILFS_ENDPOINT"]["value"] == "oss-cn-beijing.aliyuncs.com"
    # the PV the manifests make is one the plugin accepts (a token would come from kubelet)
    attrs = dict(csi["volumeAttributes"])
    with pytest.raises(CsiError, match="needs the pod's service account token"):
        NodeService("n").publish(request(Path("/nonexistent/t"), attrs))


def test_secret_pattern_passes_an_optional_session_token_and_the_driver_asks_for_pod_tokens():
    docs = manifests("manifests", *SEED)
    env = {e["name"]: e for e in docs[-1]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OSS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    driver = manifests("deploy", "--image", "registry.example.com/pailfs:0.1")[0]
    assert driver["spec"]["tokenRequests"] == [{"audience": "sts.amazonaws.com"}, {"audience": "sts.aliyuncs.com"}]
    assert driver["spec"]["requiresRepublish"] is True


def test_bad_auth_flags_are_one_line():
    for args, reason in ((["--auth", "kerberos"], "--auth must be secret, irsa or rrsa"),
                         (["--auth", "irsa"], "--auth irsa needs --role-arn"),
                         (["--auth", "rrsa", "--role-arn", "acs:ram::1:role/r"], "needs --oidc-provider-arn")):
        proc = subprocess.run([sys.executable, "-m", "pailfs", "k8s", "manifests", *SEED, *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout == "" and reason in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def daemons(target: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if " mount " in cmd and str(target) in cmd and "pailfs" in cmd:
                pids.append(int(p.name))
    return pids
