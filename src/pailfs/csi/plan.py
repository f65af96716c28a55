"""What one NodePublishVolume asks for, checked: the access mode, the volume's
attributes and options (pailfs.csi.attributes), the pod's fsGroup, the
credentials' shape — turned into a MountPlan of structured values before
anything touches the node. CsiError carries the gRPC status to answer with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import grpc

from pailfs.csi import attributes, csi_pb2
from pailfs.csi.attributes import BadVolume, option_name

AccessMode = csi_pb2.VolumeCapability.AccessMode
READER_ONLY_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})
# Modes the plugin can honour. The SINGLE_NODE_*_WRITER pair needs the
# SINGLE_NODE_MULTI_WRITER node capability, which pailfs does not advertise.
SUPPORTED_MODES = READER_ONLY_MODES | {AccessMode.SINGLE_NODE_WRITER, AccessMode.MULTI_NODE_SINGLE_WRITER,
                                       AccessMode.MULTI_NODE_MULTI_WRITER}
FS_TYPES = frozenset({"", "pailfs", "fuse.pailfs", "ossfs", "ossfs2"})

SECRET_KEYS = ("akId", "akSecret")
TOKEN_SECRET_KEY = "securityToken"
# The pod's service account tokens (CSIDriver tokenRequests): {"audience": {"token": ..., ...}}
POD_TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
TOKEN_AUDIENCES = attributes.TOKEN_AUDIENCES
# rw mounts with an fsGroup: the group may read and write, others nothing
GROUP_RW_UMASK = "007"


class CsiError(Exception):
    """A failed CSI call: a gRPC status code and a message safe to show the CO."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class MountPlan:
    """What one NodePublishVolume will run, secrets excluded."""

    source: str                # BUCKET[:/PATH]
    tokens: tuple[str, ...]    # -o options, one per argument; passwd_file is added at mount time
    read_only: bool
    mount_group: int | None
    warnings: tuple[str, ...] = ()
    auth: str = "secret"   # "secret" (akId/akSecret), "irsa" or "rrsa" (the pod's token)
    role_arn: str = ""
    oidc_provider_arn: str = ""

    def fingerprint(self) -> str:
        """Identifies what is mounted: a republish must match it."""
        what = [self.source, list(self.tokens), self.read_only, self.mount_group, self.auth, self.role_arn,
                self.oidc_provider_arn]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def mount_args(self, credential_tokens: Sequence[str]) -> list[str]:
        args: list[str] = []
        for token in (*self.tokens, *credential_tokens):
            if "," in token:  # each token is one option: checked when the plan was made
                raise CsiError(grpc.StatusCode.INTERNAL, "an option holds a comma")
            args += ["-o", token]
        return args


def plan_mount(req: csi_pb2.NodePublishVolumeRequest, buffer_budget_mb: int | None = None) -> MountPlan:
    """Check a publish request and turn it into a MountPlan; raises CsiError."""
    cap = req.volume_capability
    if cap.HasField("block"):
        raise invalid("block volumes are not supported: pailfs is a file system (use volumeMode: Filesystem)")
    if not cap.HasField("mount"):
        raise invalid("volume_capability needs an access type (mount)")
    if cap.mount.fs_type not in FS_TYPES:
        raise invalid(f"fs_type {cap.mount.fs_type!r} is not supported; leave it empty or use fuse.pailfs")
    if not cap.HasField("access_mode") or cap.access_mode.mode == AccessMode.UNKNOWN:
        raise invalid("volume_capability.access_mode is required")
    mode = cap.access_mode.mode
    if mode not in SUPPORTED_MODES:
        raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"access mode {AccessMode.Mode.Name(mode)} is not supported by pailfs")
    try:
        spec = attributes.parse_volume(req.volume_context, cap.mount.mount_flags)
    except BadVolume as exc:
        raise invalid(str(exc)) from None
    read_only = req.readonly or mode in READER_ONLY_MODES or spec.read_only
    group = _mount_group(cap.mount.volume_mount_group)

    tokens = ["allow_other"]  # pods rarely run as root, the mount is made by root
    # the access mode decides ro/rw: the user's tokens for either are dropped, `ro` goes last
    tokens += [t for t in spec.tokens if not (read_only and option_name(t) in ("ro", "rw"))]
    given = {option_name(t) for t in tokens}
    if group is not None:
        if "gid" not in given:
            tokens.append(f"gid={group}")
        if not read_only and "umask" not in given:
            tokens.append(f"umask={GROUP_RW_UMASK}")
    if buffer_budget_mb and "max_buffer_memory" not in given:
        tokens.append(f"max_buffer_memory={buffer_budget_mb}")
    tokens.append(f"url={spec.endpoint}")
    if read_only:
        tokens.append("ro")
    try:
        opts = attributes.validate_tokens(tokens)
    except BadVolume as exc:
        raise invalid(str(exc)) from None
    if buffer_budget_mb and opts.max_buffer_memory > buffer_budget_mb:
        raise invalid(f"max_buffer_memory={opts.max_buffer_memory} exceeds this plugin's per-mount budget of "
                       f"{buffer_budget_mb} MB (pailfs k8s deploy --max-buffer-memory)")
    if read_only and not opts.read_only:  # pragma: no cover - guarded by the filtering above
        raise CsiError(grpc.StatusCode.INTERNAL, "read-only could not be enforced")
    return MountPlan(source=spec.source, tokens=tuple(tokens), read_only=read_only, mount_group=group,
                     warnings=spec.warnings, auth=spec.auth, role_arn=spec.role_arn,
                     oidc_provider_arn=spec.oidc_provider_arn)


def pod_token(ctx: Mapping[str, str], auth: str) -> str:
    """The pod's service account token for the audience of `auth`'s STS; messages never quote it."""
    audience = TOKEN_AUDIENCES[auth]
    try:
        tokens = json.loads(ctx.get(POD_TOKENS_KEY) or "{}")
        token = tokens[audience]["token"] if isinstance(tokens, dict) else None
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token.strip() or any(c in token for c in "\n\r\0"):
        raise invalid(f"authType {auth} needs the pod's service account token for audience {audience}: "
                       f"add it to the CSIDriver's tokenRequests (pailfs k8s deploy does)")
    return token.strip()


def secret_token(secrets: Mapping[str, str]) -> str | None:
    """The optional session token of the node-publish secret (key securityToken)."""
    token = secrets.get(TOKEN_SECRET_KEY, "").strip()
    if any(c in token for c in ":\n\r\0"):
        raise invalid(f"secret key {TOKEN_SECRET_KEY} holds an invalid value (contains ':' or a newline)")
    return token or None


def _mount_group(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) >= 2**32:
        raise invalid(f"volume_mount_group {text!r} must be a numeric group id")
    return int(text)


def check_secrets(secrets: Mapping[str, str]) -> tuple[str, str]:
    """The access key pair from the node-publish secret; messages never quote a value."""
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    if missing:
        raise invalid(f"the volume's secret (nodePublishSecretRef) needs the keys {', '.join(missing)}")
    ak, sk = secrets["akId"].strip(), secrets["akSecret"].strip()
    for key, value in (("akId", ak), ("akSecret", sk)):
        if not value or any(c in value for c in ":\n\r\0"):
            raise invalid(f"secret key {key} holds an invalid value (empty, or contains ':' or a newline)")
    return ak, sk
