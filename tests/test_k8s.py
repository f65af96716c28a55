"""`pailfs k8s manifests` and `pailfs k8s deploy`: the YAML a user applies.

Every document is validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest and newest
Kubernetes versions we claim."""

from __future__ import annotations

import os
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from pailfs import config
from pailfs.csi import DRIVER_NAME, csi_pb2
from pailfs.csi.node import plan_mount

K8S_VERSIONS = ("1.30.0", "1.34.0")
SEED = ["--bucket", "tf-bucket", "--url", "https://oss-cn-beijing.aliyuncs.com",
        "--data-path", "/tf-train/train/data", "--checkpoint-prefix", "tf-train/training_logs",
        "--image", "registry.example.com/ml/train:1.0"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OSS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pailfs", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def docs_of(*args: str, env: dict[str, str] | None = None) -> tuple[list[dict], str]:
    proc = run(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return list(yaml.safe_load_all(proc.stdout)), proc.stdout


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), "one document per kind"
    return kinds


def assert_valid(docs: list[dict]) -> None:
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_strict_enough_to_catch_a_typo():
    docs, _ = docs_of("k8s", "manifests", *SEED)
    pv = by_kind(docs)["PersistentVolume"]
    pv["spec"]["csi"]["volumeAtributes"] = pv["spec"]["csi"].pop("volumeAttributes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pv, K8S_VERSIONS[0], strict=True)


def test_pattern_manifests_are_valid_kubernetes():
    docs, _ = docs_of("k8s", "manifests", *SEED)
    assert [d["kind"] for d in docs] == ["Secret", "PersistentVolume", "PersistentVolumeClaim", "Job"]
    assert_valid(docs)


def test_pattern_secret_has_placeholders_unless_from_env():
    docs, out = docs_of("k8s", "manifests", *SEED)
    secret = by_kind(docs)["Secret"]
    assert set(secret["stringData"]) == {"akId", "akSecret"}
    assert all(v.startswith("<") for v in secret["stringData"].values())

    keys = {"OSS_ACCESS_KEY_ID": "LTAI5tExampleKeyId", "OSS_ACCESS_KEY_SECRET": "ExampleSecretValue0123456789"}
    docs, out = docs_of("k8s", "manifests", *SEED, "--from-env", env=keys)
    secret = by_kind(docs)["Secret"]
    assert secret["stringData"] == {"akId": keys["OSS_ACCESS_KEY_ID"], "akSecret": keys["OSS_ACCESS_KEY_SECRET"]}
    # the secret is written once, in the Secret; the Job only references it
    assert out.count(keys["OSS_ACCESS_KEY_SECRET"]) == 1
    assert_valid(docs)


def test_from_env_without_keys_fails_with_one_line():
    proc = run("k8s", "manifests", *SEED, "--from-env")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "OSS_ACCESS_KEY_ID" in proc.stderr and "Traceback" not in proc.stderr


def test_pattern_pv_pvc_job_wiring():
    docs, _ = docs_of("k8s", "manifests", *SEED, "--namespace", "ml")
    k = by_kind(docs)
    secret, pv, pvc, job = k["Secret"], k["PersistentVolume"], k["PersistentVolumeClaim"], k["Job"]

    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    csi = pv["spec"]["csi"]
    assert csi["driver"] == DRIVER_NAME and csi["readOnly"] is True
    assert csi["volumeAttributes"] == {
        "bucket": "tf-bucket", "url": "https://oss-cn-beijing.aliyuncs.com", "path": "/tf-train/train/data",
        "otherOpts": "kernel_cache,max_stat_cache_size=10000,umask=022"}
    assert csi["nodePublishSecretRef"] == {"name": secret["metadata"]["name"], "namespace": "ml"}

    assert pvc["metadata"]["namespace"] == "ml" and secret["metadata"]["namespace"] == "ml"
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"] and pvc["spec"]["storageClassName"] == ""

    pod = job["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": pvc["metadata"]["name"], "readOnly": True}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/ml/train:1.0"
    (vm,) = container["volumeMounts"]
    assert vm["name"] == volume["name"] and vm["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    for var, key in (("OSS_ACCESS_KEY_ID", "akId"), ("OSS_ACCESS_KEY_SECRET", "akSecret")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}
    assert env["URL"]["value"] == "https://oss-cn-beijing.aliyuncs.com"
    assert env["BUCKET"]["value"] == "tf-bucket"
    assert env["CHECKPOINT_PREFIX"]["value"] == "tf-train/training_logs"
    assert env["DATA_DIR"]["value"] == vm["mountPath"]


def test_pattern_pv_is_what_the_csi_plugin_accepts_and_mounts_read_only():
    """The generated volumeAttributes go through the plugin's own checks unchanged."""
    docs, _ = docs_of("k8s", "manifests", *SEED, "--other-opts", "kernel_cache,rw,max_stat_cache_size=10000")
    attrs = by_kind(docs)["PersistentVolume"]["spec"]["csi"]["volumeAttributes"]
    req = csi_pb2.NodePublishVolumeRequest(volume_id="v", target_path="/mnt/t", volume_context=attrs,
                                           readonly=True)
    req.volume_capability.mount.SetInParent()
    req.volume_capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    plan = plan_mount(req)
    assert plan.read_only and plan.source == "tf-bucket:/tf-train/train/data"
    opts = config.parse_options([",".join(plan.tokens)], env={})
    assert opts.read_only and opts.kernel_cache and opts.max_stat_cache_size == 10000


def test_job_command_is_split_without_a_shell():
    docs, _ = docs_of("k8s", "manifests", *SEED, "--command", "python train.py --epochs '3'")
    (container,) = by_kind(docs)["Job"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "train.py", "--epochs", "3"]
    assert_valid(docs)


def test_deploy_manifests_are_valid_kubernetes():
    docs, _ = docs_of("k8s", "deploy", "--image", "registry.example.com/pailfs:0.1.0")
    assert [d["kind"] for d in docs] == ["CSIDriver", "ServiceAccount", "DaemonSet"]
    assert_valid(docs)


def test_deploy_csidriver_and_daemonset():
    docs, _ = docs_of("k8s", "deploy", "--image", "registry.example.com/pailfs:0.1.0", "-n", "pailfs-system")
    k = by_kind(docs)
    driver = k["CSIDriver"]
    assert driver["metadata"]["name"] == DRIVER_NAME
    assert driver["spec"]["attachRequired"] is False
    assert driver["spec"]["podInfoOnMount"] is True
    assert driver["spec"]["volumeLifecycleModes"] == ["Persistent"]
    assert driver["spec"]["fsGroupPolicy"] == "None"  # kubelet never chowns the bucket

    ds = k["DaemonSet"]
    assert ds["metadata"]["namespace"] == "pailfs-system"
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == k["ServiceAccount"]["metadata"]["name"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    containers = {c["name"]: c for c in pod["containers"]}
    registrar, plugin, liveness = containers["node-driver-registrar"], containers["pailfs-csi"], \
        containers["liveness-probe"]
    assert registrar["image"].startswith("registry.k8s.io/sig-storage/csi-node-driver-registrar:")
    assert "--csi-address=/csi/csi.sock" in registrar["args"]

    assert plugin["image"] == "registry.example.com/pailfs:0.1.0"
    assert plugin["command"][:6] == ["pailfs", "csi", "--endpoint", "unix:///csi/csi.sock", "--node-id",
                                     "$(NODE_NAME)"]
    assert plugin["securityContext"]["privileged"] is True
    env = {e["name"]: e for e in plugin["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    volumes = {v["name"]: v for v in pod["volumes"]}
    host_paths = {name: v["hostPath"]["path"] for name, v in volumes.items()}
    assert host_paths["fuse-device"] == "/dev/fuse"
    assert host_paths["kubelet-dir"] == "/var/lib/kubelet"
    assert host_paths["registration-dir"] == "/var/lib/kubelet/plugins_registry"
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    assert mounts["kubelet-dir"] == {"name": "kubelet-dir", "mountPath": "/var/lib/kubelet",
                                     "mountPropagation": "Bidirectional"}
    assert mounts["fuse-device"]["mountPath"] == "/dev/fuse"
    # kubelet reaches the plugin through the host path of the socket the plugin serves
    socket_dir = host_paths["plugin-dir"]
    assert f"--kubelet-registration-path={socket_dir}/csi.sock" in registrar["args"]
    assert mounts["plugin-dir"]["mountPath"] == "/csi"
    assert {m["mountPath"] for m in registrar["volumeMounts"]} == {"/csi", "/registration"}
    # the state directory (credential files, publication records) is the host's, shared
    # by a plugin and the one that replaces it
    state = plugin["command"][plugin["command"].index("--state-dir") + 1]
    assert host_paths["state-dir"] == state and mounts["state-dir"]["mountPath"] == state

    # liveness: kubelet asks the sidecar, the sidecar calls Probe on the plugin's socket
    port = plugin["livenessProbe"]["httpGet"]["port"]
    (declared,) = [p for p in plugin["ports"] if p["name"] == port]
    assert f"--health-port={declared['containerPort']}" in liveness["args"]
    assert "--csi-address=/csi/csi.sock" in liveness["args"]
    assert plugin["readinessProbe"]["httpGet"] == plugin["livenessProbe"]["httpGet"]
    assert registrar["livenessProbe"]["httpGet"]["port"] == int(
        [a for a in registrar["args"] if a.startswith("--http-endpoint=")][0].rsplit(":", 1)[1])


def test_deploy_sizes_memory_from_the_buffer_budget():
    docs, _ = docs_of("k8s", "deploy", "--image", "pailfs:1", "--mounts-per-node", "3", "--max-buffer-memory", "100")
    pod = by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]
    (plugin,) = [c for c in pod["containers"] if c["name"] == "pailfs-csi"]
    # 128 MiB for the plugin, 3 x (100 MiB budget + 96 MiB daemon) for the mounts
    assert plugin["resources"]["requests"]["memory"] == "716Mi"
    assert plugin["resources"]["limits"] == {"memory": "1432Mi"}
    assert "cpu" not in plugin["resources"]["limits"]
    cmd = plugin["command"]
    assert cmd[cmd.index("--max-buffer-memory") + 1] == "100"  # the plugin holds volumes to the budget
    assert_valid(docs)


def test_deploy_with_another_kubelet_dir():
    docs, _ = docs_of("k8s", "deploy", "--image", "pailfs:1", "--kubelet-dir", "/var/lib/k0s/kubelet/")
    text = yaml.safe_dump_all(docs)
    assert "/var/lib/kubelet" not in text
    pod = by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host_paths["kubelet-dir"] == "/var/lib/k0s/kubelet"
    assert host_paths["plugin-dir"] == f"/var/lib/k0s/kubelet/plugins/{DRIVER_NAME}"
    assert host_paths["registration-dir"] == "/var/lib/k0s/kubelet/plugins_registry"
    (plugin,) = [c for c in pod["containers"] if c["name"] == "pailfs-csi"]
    assert {"name": "kubelet-dir", "mountPath": "/var/lib/k0s/kubelet",
            "mountPropagation": "Bidirectional"} in plugin["volumeMounts"]
    assert_valid(docs)


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pailfs: "), proc.stderr
    for word in words:
        assert word in lines[0]


def _with(flag: str, value: str) -> list[str]:
    args = list(SEED)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return args + [flag, value]


@pytest.mark.parametrize("flag, value, words", [
    ("--bucket", "TF_Bucket", ["bucket", "TF_Bucket"]),
    ("--bucket", "-o", ["bucket"]),
    ("--url", "https://oss-cn-beijing.aliyuncs.com,use_cache=/tmp", ["url"]),
    ("--url", "ftp://example.com", ["url", "http"]),
    ("--url", "https://oss-cn-beijing.aliyuncs.com/some/path", ["url"]),
    ("--other-opts", "kernel_cache,no_such_option", ["no_such_option"]),
    ("--other-opts", "use_cache=/var/tmp", ["use_cache"]),
    ("--other-opts", "max_stat_cache_size=lots", ["max_stat_cache_size"]),
    ("--data-path", "/tf-train/../etc", ["path"]),
    ("--name", "TF_Train", ["--name"]),
    ("--namespace", "ml space", ["--namespace"]),
    ("--mount-path", "relative/dir", ["--mount-path"]),
    ("--checkpoint-prefix", "/", ["--checkpoint-prefix"]),
])
def test_manifests_refuse_bad_input_with_one_line(flag, value, words):
    assert_refused(run("k8s", "manifests", *_with(flag, value)), *words)


@pytest.mark.parametrize("args, words", [
    (["--kubelet-dir", "var/lib/kubelet"], ["--kubelet-dir"]),
    (["--namespace", "Kube_System"], ["--namespace"]),
    (["--image", "my image"], ["--image"]),
    (["--mounts-per-node", "0"], ["--mounts-per-node"]),
])
def test_deploy_refuses_bad_input_with_one_line(args, words):
    assert_refused(run("k8s", "deploy", *args), *words)


def test_manifests_keep_an_endpoint_without_scheme_the_plugin_accepts():
    docs, _ = docs_of("k8s", "manifests", *_with("--url", "oss-cn-beijing-internal.aliyuncs.com"))
    k = by_kind(docs)
    attrs = k["PersistentVolume"]["spec"]["csi"]["volumeAttributes"]
    assert attrs["url"] == "oss-cn-beijing-internal.aliyuncs.com"
    env = {e["name"]: e for e in k["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["URL"]["value"] == "oss-cn-beijing-internal.aliyuncs.com"
    req = csi_pb2.NodePublishVolumeRequest(volume_id="v", target_path="/mnt/t", volume_context=attrs)
    req.volume_capability.mount.SetInParent()
    req.volume_capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    assert "url=https://oss-cn-beijing-internal.aliyuncs.com" in plan_mount(req).tokens
