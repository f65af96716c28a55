"""Kubernetes manifests for the read-write separation pattern and the CSI driver.

Documents are plain dicts dumped with yaml.safe_dump_all, so they are data
first (tests validate each one against the Kubernetes schemas) and YAML last.

* `pattern_manifests`: a Secret with the access key, a ReadOnlyMany PV/PVC
  mounting the data set through the pailfs CSI driver, and a Job that reads the
  PVC read-only and writes checkpoints through the SDK (env from the Secret).
  With `auth="irsa"`/`"rrsa"` there is no Secret: a ServiceAccount annotated
  for EKS IRSA / ACK RRSA, a PV that names the method (`authType`, `roleArn`),
  and a Job running as that account (the cloud's webhook injects the role and
  token file the SDK reads).
* `driver_manifests`: the CSIDriver object, a ServiceAccount and the node
  DaemonSet (node-driver-registrar sidecar + privileged `pailfs csi`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pailfs.csi import DEFAULT_STATE_DIR, DRIVER_NAME
from pailfs.csi.attributes import BadVolume, parse_volume, subpath

Doc = dict[str, Any]

DEFAULT_OTHER_OPTS = "kernel_cache,max_stat_cache_size=10000,umask=022"
SECRET_PLACEHOLDERS = {"akId": "<your-access-key-id>", "akSecret": "<your-access-key-secret>"}
REGISTRAR_IMAGE = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"
LIVENESSPROBE_IMAGE = "registry.k8s.io/sig-storage/livenessprobe:v2.15.0"
KUBELET_DIR = "/var/lib/kubelet"
HEALTH_PORT = 9808      # livenessprobe sidecar: /healthz calls the plugin's Probe
REGISTRAR_PORT = 9809   # node-driver-registrar: /healthz fails when its registration socket is gone

# Memory of the plugin container: the supervisor and gRPC server, plus per mount
# daemon its read-memory budget (max_buffer_memory) and the daemon's own footprint
# (Python, obstore, a 10,000-entry stat cache), measured in docs/kubernetes.md.
PLUGIN_BASE_MIB = 128
MOUNT_OVERHEAD_MIB = 96
DEFAULT_MOUNTS_PER_NODE = 4
DEFAULT_BUFFER_BUDGET_MB = 256

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class PatternSpec:
    bucket: str
    url: str
    data_path: str
    checkpoint_prefix: str
    image: str
    namespace: str = "default"
    name: str = "tf-train"
    other_opts: str = DEFAULT_OTHER_OPTS
    mount_path: str = "/mnt/data"
    capacity: str = "100Gi"  # required by the PV schema; an object store has no size
    command: list[str] = field(default_factory=list)
    # None -> placeholders the user edits; values only with --from-env
    ak_id: str | None = None
    ak_secret: str | None = None
    # "secret" (akId/akSecret), "irsa" (EKS) or "rrsa" (ACK): see docs/clouds.md
    auth: str = "secret"
    role_arn: str = ""
    oidc_provider_arn: str = ""  # rrsa only


def check_pattern(spec: PatternSpec) -> None:
    """Refuse what the plugin or Kubernetes would refuse later; BadVolume with one line."""
    _check_label("--name", spec.name, longest=40)  # object names add up to 23 characters
    _check_label("--namespace", spec.namespace)
    parse_volume(_volume_attributes(spec))
    if not spec.mount_path.startswith("/") or ".." in spec.mount_path.split("/"):
        raise BadVolume(f"--mount-path {spec.mount_path!r} must be an absolute path without '..'")
    if not subpath(spec.checkpoint_prefix):
        raise BadVolume("--checkpoint-prefix must name a prefix inside the bucket")
    if not spec.image.strip() or any(c.isspace() for c in spec.image):
        raise BadVolume(f"--image {spec.image!r} is not an image reference")


def _check_label(flag: str, value: str, longest: int = 63) -> None:
    if not _DNS_LABEL.match(value) or len(value) > longest:
        raise BadVolume(f"{flag} {value!r} must be at most {longest} lower-case letters, digits or '-'")


def _volume_attributes(spec: PatternSpec) -> dict[str, str]:
    attrs = {"bucket": spec.bucket, "url": spec.url, "path": "/" + spec.data_path.strip("/"),
             "otherOpts": spec.other_opts}
    if spec.auth != "secret":
        attrs.update({"authType": spec.auth, "roleArn": spec.role_arn})
        if spec.auth == "rrsa":
            attrs["oidcProviderArn"] = spec.oidc_provider_arn
    return attrs


def _meta(name: str, namespace: str | None = None, **labels: str) -> Doc:
    meta: Doc = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def pattern_manifests(spec: PatternSpec) -> list[Doc]:
    """Secret (or ServiceAccount), PV, PVC and Job for one training job (after check_pattern)."""
    secret_name = f"{spec.name}-oss-secret"
    account_name = f"{spec.name}-sa"
    pv_name = f"{spec.name}-data-pv"
    pvc_name = f"{spec.name}-data"
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "pailfs"}

    secret: Doc = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": _meta(secret_name, spec.namespace, **labels),
        "type": "Opaque",
        "stringData": {
            "akId": spec.ak_id if spec.ak_id is not None else SECRET_PLACEHOLDERS["akId"],
            "akSecret": spec.ak_secret if spec.ak_secret is not None else SECRET_PLACEHOLDERS["akSecret"],
        },
    }
    pv: Doc = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": _meta(pv_name, None, **labels),
        "spec": {
            "capacity": {"storage": spec.capacity},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "csi": {
                "driver": DRIVER_NAME,
                "volumeHandle": pv_name,  # unique per PV, as the CSI driver requires
                "readOnly": True,
                "volumeAttributes": _volume_attributes(spec),
                "nodePublishSecretRef": {"name": secret_name, "namespace": spec.namespace},
            },
        },
    }
    account: Doc | None = None
    if spec.auth != "secret":
        del pv["spec"]["csi"]["nodePublishSecretRef"]  # the pod's own token is the credential
        # EKS's pod identity webhook injects AWS_ROLE_ARN + the token file for this annotation;
        # ACK's ack-pod-identity-webhook the ALIBABA_CLOUD_* variables for its own
        annotation = ({"eks.amazonaws.com/role-arn": spec.role_arn} if spec.auth == "irsa" else
                      {"pod-identity.alibabacloud.com/role-name": spec.role_arn.rsplit("/", 1)[-1]})
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {**_meta(account_name, spec.namespace, **labels), "annotations": annotation}}
    pvc: Doc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": _meta(pvc_name, spec.namespace, **labels),
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": spec.capacity}},
        },
    }

    def secret_env(var: str, key: str) -> Doc:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}

    key_env = [secret_env("OSS_ACCESS_KEY_ID", "akId"), secret_env("OSS_ACCESS_KEY_SECRET", "akSecret"),
               # a session token, when the Secret holds one
               {"name": "OSS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": {
                   "name": secret_name, "key": "securityToken", "optional": True}}}]
    container: Doc = {
        "name": "train",
        "image": spec.image,
        "env": [
            *(key_env if spec.auth == "secret" else []),
            {"name": "PAILFS_ENDPOINT", "value": spec.url},
            {"name": "URL", "value": spec.url},
            {"name": "BUCKET", "value": spec.bucket},
            {"name": "CHECKPOINT_PREFIX", "value": spec.checkpoint_prefix.strip("/")},
            {"name": "DATA_DIR", "value": spec.mount_path},
        ],
        "volumeMounts": [{"name": "data", "mountPath": spec.mount_path, "readOnly": True}],
    }
    if spec.command:
        container["command"] = list(spec.command)
    job: Doc = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(spec.name, spec.namespace, **labels),
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    **({"serviceAccountName": account_name} if account is not None else {}),
                    "containers": [container],
                    "volumes": [{"name": "data",
                                 "persistentVolumeClaim": {"claimName": pvc_name, "readOnly": True}}],
                },
            },
        },
    }
    return [secret if account is None else account, pv, pvc, job]


@dataclass
class DriverSpec:
    image: str
    namespace: str = "kube-system"
    registrar_image: str = REGISTRAR_IMAGE
    livenessprobe_image: str = LIVENESSPROBE_IMAGE
    kubelet_dir: str = KUBELET_DIR
    state_dir: str = DEFAULT_STATE_DIR   # on the host; shared by a plugin and its successor
    mounts_per_node: int = DEFAULT_MOUNTS_PER_NODE
    buffer_budget_mb: int = DEFAULT_BUFFER_BUDGET_MB

    def memory_mib(self) -> int:
        """Requested memory of the plugin container (the limit is twice this)."""
        return PLUGIN_BASE_MIB + self.mounts_per_node * (self.buffer_budget_mb + MOUNT_OVERHEAD_MIB)


def check_driver(spec: DriverSpec) -> None:
    _check_label("--namespace", spec.namespace)
    for flag, path in (("--kubelet-dir", spec.kubelet_dir), ("--state-dir", spec.state_dir)):
        if not path.startswith("/") or ".." in path.split("/") or path.rstrip("/") in ("", "/"):
            raise BadVolume(f"{flag} {path!r} must be an absolute directory other than /")
    for flag, image in (("--image", spec.image), ("--registrar-image", spec.registrar_image),
                        ("--livenessprobe-image", spec.livenessprobe_image)):
        if not image.strip() or any(c.isspace() for c in image):
            raise BadVolume(f"{flag} {image!r} is not an image reference")
    if spec.mounts_per_node < 1 or spec.buffer_budget_mb < 1:
        raise BadVolume("--mounts-per-node and --max-buffer-memory must be at least 1")


def driver_manifests(spec: DriverSpec) -> list[Doc]:
    """CSIDriver, ServiceAccount and node DaemonSet of the pailfs CSI plugin (after check_driver)."""
    name = "pailfs-csi-node"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "pailfs"}
    kubelet_dir = spec.kubelet_dir.rstrip("/")
    plugin_dir = f"{kubelet_dir}/plugins/{DRIVER_NAME}"
    csidriver: Doc = {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": _meta(DRIVER_NAME, None, **labels),
        "spec": {
            "attachRequired": False,   # no controller: nothing to attach
            "podInfoOnMount": True,    # the pod's name in the plugin's log lines
            "volumeLifecycleModes": ["Persistent"],
            # The plugin applies fsGroup itself (VOLUME_MOUNT_GROUP: gid= and group
            # modes), which makes kubelet ignore this policy; None keeps a kubelet
            # without that delegation from chown'ing every object of the bucket.
            "fsGroupPolicy": "None",
            # authType irsa/rrsa PVs: kubelet passes the pod's token for these audiences, and
            # calls NodePublishVolume again as it rotates, so the mount keeps a fresh one
            "tokenRequests": [{"audience": "sts.amazonaws.com"}, {"audience": "sts.aliyuncs.com"}],
            "requiresRepublish": True,
        },
    }
    account: Doc = {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": _meta(name, spec.namespace, **labels),
        "automountServiceAccountToken": False,  # the node plugin never calls the API server
    }
    small = {"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "64Mi"}}

    def http_probe(port: str | int, period: int, failures: int) -> Doc:
        return {"httpGet": {"path": "/healthz", "port": port}, "initialDelaySeconds": 10,
                "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}

    registrar: Doc = {
        "name": "node-driver-registrar",
        "image": spec.registrar_image,
        "args": ["--v=2", "--csi-address=/csi/csi.sock",
                 f"--kubelet-registration-path={plugin_dir}/csi.sock",
                 f"--http-endpoint=:{REGISTRAR_PORT}"],
        # during an upgrade the old registrar removes the registration socket when it
        # stops; this probe restarts the new one, which registers again
        "livenessProbe": http_probe(REGISTRAR_PORT, 10, 3),
        "ports": [{"name": "registrar", "containerPort": REGISTRAR_PORT}],
        "resources": small,
        "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"},
                         {"name": "registration-dir", "mountPath": "/registration"}],
    }
    liveness: Doc = {
        "name": "liveness-probe",
        "image": spec.livenessprobe_image,
        "args": ["--csi-address=/csi/csi.sock", f"--health-port={HEALTH_PORT}"],
        "resources": small,
        "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"}],
    }
    memory = spec.memory_mib()
    plugin: Doc = {
        "name": "pailfs-csi",
        "image": spec.image,
        "command": ["pailfs", "csi", "--endpoint", "unix:///csi/csi.sock", "--node-id", "$(NODE_NAME)",
                    "--state-dir", spec.state_dir, "--max-buffer-memory", str(spec.buffer_budget_mb)],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        # mount(2) and /dev/fuse need it; Bidirectional propagation requires it
        "securityContext": {"privileged": True, "allowPrivilegeEscalation": True,
                            "capabilities": {"add": ["SYS_ADMIN"]}},
        # no CPU limit: a throttled FUSE daemon stalls every reader of its volume
        "resources": {"requests": {"cpu": "100m", "memory": f"{memory}Mi"},
                      "limits": {"memory": f"{2 * memory}Mi"}},
        "ports": [{"name": "healthz", "containerPort": HEALTH_PORT}],
        # Probe reads the mount table and writes the state directory; it is not
        # ready until the mounts of the pod it replaces are taken over
        "livenessProbe": http_probe("healthz", 10, 5),
        "readinessProbe": http_probe("healthz", 5, 1),
        "volumeMounts": [
            {"name": "plugin-dir", "mountPath": "/csi"},
            {"name": "kubelet-dir", "mountPath": kubelet_dir, "mountPropagation": "Bidirectional"},
            {"name": "fuse-device", "mountPath": "/dev/fuse"},
            {"name": "state-dir", "mountPath": spec.state_dir},
        ],
    }
    daemonset: Doc = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _meta(name, spec.namespace, **labels),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            # the new pod starts beside the old one and takes its mounts over before
            # the old one is stopped
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": name,
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"operator": "Exists"}],  # every node may run training pods
                    "terminationGracePeriodSeconds": 60,
                    "containers": [registrar, liveness, plugin],
                    "volumes": [
                        {"name": "plugin-dir", "hostPath": {"path": plugin_dir, "type": "DirectoryOrCreate"}},
                        {"name": "registration-dir",
                         "hostPath": {"path": f"{kubelet_dir}/plugins_registry", "type": "Directory"}},
                        {"name": "kubelet-dir", "hostPath": {"path": kubelet_dir, "type": "Directory"}},
                        {"name": "fuse-device", "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}},
                        {"name": "state-dir", "hostPath": {"path": spec.state_dir, "type": "DirectoryOrCreate"}},
                    ],
                },
            },
        },
    }
    return [csidriver, account, daemonset]


def to_yaml(docs: list[Doc]) -> str:
    import yaml  # the 'k8s' extra

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
