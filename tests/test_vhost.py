"""Virtual-hosted buckets for real: SeaweedFS serves `BUCKET.oss-cn-hangzhou.aliyuncs.com`,
`BUCKET.s3.us-west-2.amazonaws.com` and `BUCKET.s3.pailfs.test` (tests/weedcloud.py), and
inside a private mount namespace only those bucket host names resolve, to 127.0.0.1
(the machine's resolver is untouched). The bare endpoint hosts do not resolve there,
so a path-style request could not succeed: everything that works below went to the
bucket's own host name.

What a user does runs inside the namespace — `pailfs cp`, `pailfs ls`, a mount, the
Checkpointer, a CSI NodePublishVolume of an ACK-style PV (url without a scheme) —
and the outcome is checked from outside through a plain path-style store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from pailfs.store import open_store
from weedcloud import AWS_HOST, DOMAIN, OSS_HOST, private_hosts

pytestmark = [pytest.mark.timeout(300), pytest.mark.mount]

# Runs inside the namespace; prints one JSON object of what each step saw.
JOB = textwrap.dedent('''
    import hashlib, json, os, subprocess, sys, time
    from pathlib import Path

    bucket, work, https_port, http_port = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    PAILFS = [sys.executable, "-m", "pailfs"]
    out = {}

    def run(name, *args, env=None):
        proc = subprocess.run([*PAILFS, *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {})})
        out[name] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        return proc

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    # 1. OSS as ACK and ossfs users write it: no scheme (https), auto addressing (virtual),
    #    region cn-hangzhou from the host
    oss = f"oss-cn-hangzhou.aliyuncs.com:{https_port}"
    run("cp_up", "cp", "-r", "-q", str(work / "src"), f"s3://{bucket}/data", "--endpoint", oss)
    run("ls", "ls", "-r", f"s3://{bucket}/data/", "--endpoint", oss)
    run("path_forced", "ls", f"s3://{bucket}/data/", "--endpoint", oss, "-o", "addressing=path")
    mnt = work / "mnt"
    mnt.mkdir()
    mounted = run("mount", "mount", f"{bucket}:/data", str(mnt), "-o", f"ro,url={oss}")
    if mounted.returncode == 0:
        try:
            out["mount_files"] = {p.name: digest(p) for p in sorted(mnt.iterdir()) if p.is_file()}
            out["mount_sub"] = digest(mnt / "sub" / "b.bin")
        finally:
            run("umount", "umount", str(mnt))

    from pailfs import Checkpointer
    ckpt_src = work / "ckpt"
    ckpt_src.mkdir()
    (ckpt_src / "model.bin").write_bytes(b"m" * 300_000)
    with Checkpointer(f"s3://{bucket}/ckpt", options=f"url={oss}") as ckpt:
        ckpt.save(7, ckpt_src).result(60)
        ckpt.restore(work / "restored")
        out["ckpt"] = {"latest": ckpt.latest(), "restored": digest(work / "restored" / "model.bin")}

    # an ACK PV: url without a scheme, published by the CSI node plugin
    from pailfs.csi import csi_pb2
    from pailfs.csi.node import NodeService
    req = csi_pb2.NodePublishVolumeRequest(
        volume_id="pv-oss", target_path=str(work / "pod" / "mount"), volume_context={
            "bucket": bucket, "url": oss, "path": "/data", "otherOpts": "max_stat_cache_size=0,umask=022"},
        secrets={"akId": os.environ["AWS_ACCESS_KEY_ID"], "akSecret": os.environ["AWS_SECRET_ACCESS_KEY"]})
    req.volume_capability.mount.SetInParent()
    req.volume_capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    node = NodeService("node-1", state_dir=work / "csi-state")
    try:
        node.publish(req)
        out["csi_files"] = {p.name: digest(p) for p in sorted((work / "pod" / "mount").iterdir()) if p.is_file()}
    except Exception as exc:
        out["csi_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        node.unpublish(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-oss", target_path=str(work / "pod" / "mount")))

    # 2. AWS: region us-west-2 from the host
    run("aws_cp", "cp", "-q", str(work / "src" / "a.txt"), f"s3://{bucket}/aws/a.txt",
        "--endpoint", f"https://s3.us-west-2.amazonaws.com:{https_port}")
    # 3. any other host, marked virtual-hosted (one option; the s3fs/ossfs flag spells it too)
    run("marked_cp", "cp", "-q", str(work / "src" / "a.txt"), f"s3://{bucket}/marked/a.txt",
        "--endpoint", f"http://s3.pailfs.test:{http_port}", "-o", "addressing=virtual")
    run("marked_flag_ls", "ls", f"s3://{bucket}/marked/", "--endpoint", f"http://s3.pailfs.test:{http_port}",
        "-o", "virtual_hosted")
    print(json.dumps(out))
''')


def test_virtual_hosted_end_to_end(cloud, cloud_bucket, tmp_path, monkeypatch):
    bucket = cloud_bucket
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(200_000), "big.bin": os.urandom(11 * 1024 * 1024)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, **cloud.admin_env(), "AWS_CA_BUNDLE": str(cloud.ca.cert)}
    for var in ("PAILFS_ENDPOINT", "URL", "AWS_REGION", "PAILFS_REGION", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        env.pop(var, None)
    names = tuple(f"{bucket}.{host}" for host in (OSS_HOST, AWS_HOST, DOMAIN))  # bucket hosts only
    argv = [*private_hosts(tmp_path / "hosts", names), sys.executable, str(script), bucket, str(tmp_path),
            str(cloud.https_port), str(cloud.http_port)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for step in ("cp_up", "ls", "mount", "umount", "aws_cp", "marked_cp", "marked_flag_ls"):
        assert out[step]["rc"] == 0, (step, out[step]["stderr"])
    sha = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert {line.split()[-1] for line in out["ls"]["stdout"].splitlines()} == {f"data/{r}" for r in files}
    assert out["mount_files"] == {"a.txt": sha["a.txt"], "big.bin": sha["big.bin"]}
    assert out["mount_sub"] == sha["sub/b.bin"]
    assert out["ckpt"] == {"latest": 7, "restored": hashlib.sha256(b"m" * 300_000).hexdigest()}
    assert "csi_error" not in out, out.get("csi_error")
    assert out["csi_files"]["a.txt"] == sha["a.txt"] and out["csi_files"]["big.bin"] == sha["big.bin"]
    assert "marked/a.txt" in out["marked_flag_ls"]["stdout"]
    # path style had nowhere to go: the bare host does not resolve in the namespace
    assert out["path_forced"]["rc"] == 1 and len(out["path_forced"]["stderr"].strip().splitlines()) == 1
    assert f"cannot reach https://{OSS_HOST}:{cloud.https_port}" in out["path_forced"]["stderr"]

    # from outside, path style on 127.0.0.1: the same bucket holds what the namespace wrote
    async def check() -> dict[str, bytes]:
        store = open_store(f"s3://{bucket}", url=f"http://127.0.0.1:{cloud.http_port}")
        try:
            keys = [o.key for o in (await store.list()).objects]
            return {k: await store.get(k) for k in keys if not k.startswith("ckpt/")}
        finally:
            await store.close()

    for name, value in cloud.admin_env().items():
        monkeypatch.setenv(name, value)
    stored = asyncio.run(check())
    assert stored == {**{f"data/{r}": d for r, d in files.items()},
                      "aws/a.txt": files["a.txt"], "marked/a.txt": files["a.txt"]}
