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

from dataclasses import dataclass, field
from typing import Any

import yaml

from pailfs.csi import DRIVER_NAME

Doc = dict[str, Any]

DEFAULT_OTHER_OPTS = "kernel_cache,max_stat_cache_size=10000,umask=022"
SECRET_PLACEHOLDERS = {"akId": "<your-access-key-id>", "akSecret": "<your-access-key-secret>"}
REGISTRAR_IMAGE = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"
KUBELET_DIR = "/var/lib/kubelet"
PLUGIN_DIR = f"{KUBELET_DIR}/plugins/{DRIVER_NAME}"
REGISTRATION_DIR = f"{KUBELET_DIR}/plugins_registry"


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


def _meta(name: str, namespace: str | None = None, **labels: str) -> Doc:
    meta: Doc = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def pattern_manifests(spec: PatternSpec) -> list[Doc]:
    """Secret (or ServiceAccount), PV, PVC and Job for one training job."""
    secret_name = f"{spec.name}-oss-secret"
    account_name = f"{spec.name}-sa"
    pv_name = f"{spec.name}-data-pv"
    pvc_name = f"{spec.name}-data"
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "pailfs"}
    data_path = "/" + spec.data_path.strip("/")

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
                "volumeAttributes": {
                    "bucket": spec.bucket,
                    "url": spec.url,
                    "path": data_path,
                    "otherOpts": spec.other_opts,
                },
                "nodePublishSecretRef": {"name": secret_name, "namespace": spec.namespace},
            },
        },
    }
    account: Doc | None = None
    if spec.auth != "secret":
        attrs = pv["spec"]["csi"]["volumeAttributes"]
        attrs.update({"authType": spec.auth, "roleArn": spec.role_arn})
        if spec.auth == "rrsa":
            attrs["oidcProviderArn"] = spec.oidc_provider_arn
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


def driver_manifests(image: str, namespace: str = "kube-system",
                     registrar_image: str = REGISTRAR_IMAGE) -> list[Doc]:
    """CSIDriver, ServiceAccount and node DaemonSet of the pailfs CSI plugin."""
    name = "pailfs-csi-node"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "pailfs"}
    csidriver: Doc = {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": _meta(DRIVER_NAME, None, **labels),
        "spec": {
            "attachRequired": False,   # no controller: nothing to attach
            "podInfoOnMount": False,
            "volumeLifecycleModes": ["Persistent"],
            "fsGroupPolicy": "None",   # owners come from uid=/gid= options, not chown
            # authType irsa/rrsa PVs: kubelet passes the pod's token for these audiences, and
            # calls NodePublishVolume again as it rotates, so the mount keeps a fresh one
            "tokenRequests": [{"audience": "sts.amazonaws.com"}, {"audience": "sts.aliyuncs.com"}],
            "requiresRepublish": True,
        },
    }
    account: Doc = {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": _meta(name, namespace, **labels),
        "automountServiceAccountToken": False,  # the node plugin never calls the API server
    }
    registrar: Doc = {
        "name": "node-driver-registrar",
        "image": registrar_image,
        "args": ["--v=2", "--csi-address=/csi/csi.sock",
                 f"--kubelet-registration-path={PLUGIN_DIR}/csi.sock"],
        "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"},
                         {"name": "registration-dir", "mountPath": "/registration"}],
    }
    plugin: Doc = {
        "name": "pailfs-csi",
        "image": image,
        "command": ["pailfs", "csi", "--endpoint", "unix:///csi/csi.sock", "--node-id", "$(NODE_NAME)"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        # mount(2) and /dev/fuse need it; Bidirectional propagation requires it
        "securityContext": {"privileged": True, "allowPrivilegeEscalation": True,
                            "capabilities": {"add": ["SYS_ADMIN"]}},
        "volumeMounts": [
            {"name": "plugin-dir", "mountPath": "/csi"},
            {"name": "kubelet-dir", "mountPath": KUBELET_DIR, "mountPropagation": "Bidirectional"},
            {"name": "fuse-device", "mountPath": "/dev/fuse"},
        ],
    }
    daemonset: Doc = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _meta(name, namespace, **labels),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": name,
                    "tolerations": [{"operator": "Exists"}],  # every node may run training pods
                    "containers": [registrar, plugin],
                    "volumes": [
                        {"name": "plugin-dir", "hostPath": {"path": PLUGIN_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "registration-dir", "hostPath": {"path": REGISTRATION_DIR, "type": "Directory"}},
                        {"name": "kubelet-dir", "hostPath": {"path": KUBELET_DIR, "type": "Directory"}},
                        {"name": "fuse-device", "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}},
                    ],
                },
            },
        },
    }
    return [csidriver, account, daemonset]


def to_yaml(docs: list[Doc]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
