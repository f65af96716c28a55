"""NodePublishVolume / NodeUnpublishVolume: what the CSI node plugin does on a node.

Publishing runs `pailfs mount` as a child in its own session, so the FUSE
daemon outlives a restart of the plugin process. Everything the plugin is given
is checked before anything touches the node:

* volume_context `bucket`, `url`, `path`, `otherOpts` (and the PV's
  mountOptions) are parsed as `-o` tokens by `pailfs.config.parse_options`;
  options that name local files (`Option.local_path`) are refused, since a PV
  author must not point the plugin at files on the node;
* the secrets `akId`/`akSecret` (and `securityToken`, a session token) go to a
  passwd file (mode 0600 in a 0700 directory) that the mount reads through
  `-o passwd_file=`; they are never in argv, a log line or an error message;
* or the PV names a credential method, `authType: irsa` (`roleArn`) or
  `authType: rrsa` (`roleArn`, `oidcProviderArn`): the pod's own service
  account token, which kubelet passes in the volume context (CSIDriver
  `tokenRequests`), goes to a 0600 file that the mount exchanges at STS for
  temporary credentials (AWS_ROLE_ARN / ALIBABA_CLOUD_* in its environment);
  kubelet republishes (`requiresRepublish`) and the file is replaced, so the
  mount refreshes with the pod's current token. The STS endpoint comes from
  the plugin's environment, never from a PV: a PV must not send tokens elsewhere;
* `ro` is forced when the CO says readonly or the access mode is a reader-only
  one, and no user option can undo it (`rw`/`ro=...` tokens are dropped and a
  plain `ro` goes last).

Concurrency: one lock per volume id; a second call for a volume whose call is
still running gets ABORTED (the CO retries with backoff), as the spec allows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import grpc

from pailfs import config
from pailfs.csi import DEFAULT_MOUNT_TIMEOUT, DEFAULT_STATE_DIR, csi_pb2, mounts
from pailfs.errors import BadOption

log = logging.getLogger(__name__)

AccessMode = csi_pb2.VolumeCapability.AccessMode
READER_ONLY_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})
# Modes the plugin can honour. The SINGLE_NODE_*_WRITER pair needs the
# SINGLE_NODE_MULTI_WRITER node capability, which pailfs does not advertise.
SUPPORTED_MODES = READER_ONLY_MODES | {AccessMode.SINGLE_NODE_WRITER, AccessMode.MULTI_NODE_SINGLE_WRITER,
                                       AccessMode.MULTI_NODE_MULTI_WRITER}
FS_TYPES = frozenset({"", "pailfs", "fuse.pailfs"})

SECRET_KEYS = ("akId", "akSecret")
TOKEN_SECRET_KEY = "securityToken"
CONTEXT_KEYS = frozenset({"bucket", "url", "path", "otherOpts", "authType", "roleArn", "oidcProviderArn"})
# Keys kubelet adds to volume_context on its own (podInfoOnMount, ephemeral volumes).
KUBELET_CONTEXT_PREFIX = "csi.storage.k8s.io/"
# The pod's service account tokens (CSIDriver tokenRequests): {"audience": {"token": ..., ...}}
POD_TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
# authType -> the token audience its STS expects
TOKEN_AUDIENCES = {"irsa": "sts.amazonaws.com", "rrsa": "sts.aliyuncs.com"}
_ROLE_ARN_RE = {"irsa": re.compile(r"^arn:aws[a-z-]*:iam::(?:\d{1,12}:)?role/[\w+=,.@/-]{1,512}$"),
                "rrsa": re.compile(r"^acs:ram::\d{1,20}:role/[\w.-]{1,64}$")}
_OIDC_PROVIDER_RE = re.compile(r"^acs:ram::\d{1,20}:oidc-provider/[\w.-]{1,128}$")

# S3 and OSS bucket names; the strict form also keeps the argv positional from
# ever looking like an option.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # as pailfs.store.url
# Options the plugin sets itself; a user token naming one is refused.
_PLUGIN_OWNED = frozenset({"url", "passwd_file"})


class CsiError(Exception):
    """A failed CSI call: a gRPC status code and a message safe to show the CO."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class MountPlan:
    """What one NodePublishVolume will run, secrets excluded."""

    source: str            # BUCKET[:/PATH]
    tokens: tuple[str, ...]  # -o tokens, passwd_file excluded (it is added at mount time)
    read_only: bool
    auth: str = "secret"   # "secret" (akId/akSecret), "irsa" or "rrsa" (the pod's token)
    role_arn: str = ""
    oidc_provider_arn: str = ""


def plan_mount(req: csi_pb2.NodePublishVolumeRequest) -> MountPlan:
    """Check a publish request and turn it into a MountPlan; raises CsiError."""
    cap = req.volume_capability
    if cap.HasField("block"):
        raise _invalid("block volumes are not supported: pailfs is a file system (use volumeMode: Filesystem)")
    if not cap.HasField("mount"):
        raise _invalid("volume_capability needs an access type (mount)")
    if cap.mount.fs_type not in FS_TYPES:
        raise _invalid(f"fs_type {cap.mount.fs_type!r} is not supported; leave it empty or use fuse.pailfs")
    if not cap.HasField("access_mode") or cap.access_mode.mode == AccessMode.UNKNOWN:
        raise _invalid("volume_capability.access_mode is required")
    mode = cap.access_mode.mode
    if mode not in SUPPORTED_MODES:
        raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"access mode {AccessMode.Mode.Name(mode)} is not supported by pailfs")
    read_only = req.readonly or mode in READER_ONLY_MODES

    ctx = req.volume_context
    unknown = sorted(k for k in ctx if k not in CONTEXT_KEYS and not k.startswith(KUBELET_CONTEXT_PREFIX))
    if unknown:
        raise _invalid(f"unknown volumeAttributes {', '.join(unknown)}; valid: {', '.join(sorted(CONTEXT_KEYS))}")
    bucket = ctx.get("bucket", "").strip()
    if not bucket:
        raise _invalid("volumeAttributes.bucket is required")
    if not _BUCKET_RE.match(bucket):
        raise _invalid(f"volumeAttributes.bucket {bucket!r} is not a valid bucket name")
    url = ctx.get("url", "").strip()
    if not url:
        raise _invalid("volumeAttributes.url is required (the object store endpoint)")
    source = bucket + _subpath(ctx.get("path", ""))

    user_tokens = [*cap.mount.mount_flags, ctx.get("otherOpts", "")]
    tokens = ["allow_other"]  # pods rarely run as root, the mount is made by root
    for token in (t for spec in user_tokens for t in config.split_tokens(spec)):
        name = token.partition("=")[0].strip()
        opt = _lookup(name)
        if opt is not None and opt.local_path:
            raise _invalid(f"option '{name}' names a file on the node and is not allowed in a volume; "
                           "credentials come from the volume's secret (akId/akSecret)")
        if opt is not None and opt.name in _PLUGIN_OWNED:
            raise _invalid(f"option '{name}' is set by the plugin; use volumeAttributes.url for the endpoint")
        if read_only and opt is not None and opt.name in ("ro", "rw"):
            continue  # the access mode decides; `ro` is appended last below
        tokens.append(token)
    tokens.append(f"url={url}")
    if read_only:
        tokens.append("ro")
    try:
        # env={} keeps the plugin's own environment out of the check
        opts = config.parse_options([",".join(tokens)], env={})
    except BadOption as exc:
        raise _invalid(f"bad mount option: {exc}") from None
    if read_only and not opts.read_only:  # pragma: no cover - guarded by the filtering above
        raise CsiError(grpc.StatusCode.INTERNAL, "read-only could not be enforced")
    auth, role_arn, provider_arn = _auth_of(ctx)
    return MountPlan(source=source, tokens=tuple(tokens), read_only=read_only, auth=auth, role_arn=role_arn,
                     oidc_provider_arn=provider_arn)


def _auth_of(ctx: Mapping[str, str]) -> tuple[str, str, str]:
    """(authType, roleArn, oidcProviderArn) of a volume, checked."""
    auth = ctx.get("authType", "").strip().lower() or "secret"
    if auth not in ("secret", *TOKEN_AUDIENCES):
        raise _invalid(f"volumeAttributes.authType {auth!r} is not one of secret, irsa, rrsa")
    role, provider = ctx.get("roleArn", "").strip(), ctx.get("oidcProviderArn", "").strip()
    if auth == "secret":
        if role or provider:
            raise _invalid("volumeAttributes.roleArn/oidcProviderArn need authType irsa or rrsa")
        return auth, "", ""
    if not _ROLE_ARN_RE[auth].match(role):
        example = "arn:aws:iam::123456789012:role/NAME" if auth == "irsa" else "acs:ram::UID:role/NAME"
        raise _invalid(f"volumeAttributes.roleArn must be a role ARN like {example} for authType {auth}")
    if auth == "rrsa" and not _OIDC_PROVIDER_RE.match(provider):
        raise _invalid("volumeAttributes.oidcProviderArn must be like acs:ram::UID:oidc-provider/NAME "
                       "for authType rrsa")
    if auth == "irsa" and provider:
        raise _invalid("volumeAttributes.oidcProviderArn is for authType rrsa only")
    return auth, role, provider


def pod_token(ctx: Mapping[str, str], auth: str) -> str:
    """The pod's service account token for the audience of `auth`'s STS; messages never quote it."""
    audience = TOKEN_AUDIENCES[auth]
    try:
        tokens = json.loads(ctx.get(POD_TOKENS_KEY) or "{}")
        token = tokens[audience]["token"] if isinstance(tokens, dict) else None
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token.strip() or any(c in token for c in "\n\r\0"):
        raise _invalid(f"authType {auth} needs the pod's service account token for audience {audience}: "
                       f"add it to the CSIDriver's tokenRequests (pailfs k8s deploy does)")
    return token.strip()


def _lookup(name: str) -> config.Option | None:
    try:
        return config.option(name)
    except KeyError:
        return None  # generic mount flags and unknown names: parse_options decides


def _subpath(path: str) -> str:
    path = path.strip()
    if not path or path == "/":
        return ""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts) or any(c in path for c in "\0\n\r"):
        raise _invalid(f"volumeAttributes.path {path!r} must be a plain path inside the bucket")
    return ":/" + "/".join(parts)


def secret_token(secrets: Mapping[str, str]) -> str | None:
    """The optional session token of the node-publish secret (key securityToken)."""
    token = secrets.get(TOKEN_SECRET_KEY, "").strip()
    if any(c in token for c in ":\n\r\0"):
        raise _invalid(f"secret key {TOKEN_SECRET_KEY} holds an invalid value (contains ':' or a newline)")
    return token or None


def check_secrets(secrets: Mapping[str, str]) -> tuple[str, str]:
    """The access key pair from the node-publish secret; messages never quote a value."""
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    if missing:
        raise _invalid(f"the volume's secret (nodePublishSecretRef) needs the keys {', '.join(missing)}")
    ak, sk = secrets["akId"].strip(), secrets["akSecret"].strip()
    for key, value in (("akId", ak), ("akSecret", sk)):
        if not value or any(c in value for c in ":\n\r\0"):
            raise _invalid(f"secret key {key} holds an invalid value (empty, or contains ':' or a newline)")
    return ak, sk


class NodeService:
    """Publish/unpublish logic, free of gRPC plumbing so it can be tested directly."""

    def __init__(self, node_id: str, state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
                 mount_command: Sequence[str] | None = None, mount_timeout: float = DEFAULT_MOUNT_TIMEOUT):
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.mount_command = list(mount_command or [sys.executable, "-m", "pailfs", "mount"])
        self.mount_timeout = mount_timeout
        self._locks_guard = threading.Lock()
        self._busy: set[str] = set()

    # -- locking ---------------------------------------------------------------
    @contextmanager
    def volume_lock(self, volume_id: str) -> Iterator[None]:
        with self._locks_guard:
            if volume_id in self._busy:
                raise CsiError(grpc.StatusCode.ABORTED,
                               f"an operation on volume {volume_id} is already in progress")
            self._busy.add(volume_id)
        try:
            yield
        finally:
            with self._locks_guard:
                self._busy.discard(volume_id)

    # -- secrets -------------------------------------------------------------------
    def secret_dir(self, volume_id: str, target_path: str) -> Path:
        # One directory per publication: two pods on a node may publish the same
        # volume at two targets, and unpublishing one must not pull the other's file.
        digest = hashlib.sha256(f"{volume_id}\0{mounts.canonical(target_path)}".encode()).hexdigest()[:32]
        return self.state_dir / digest

    def _write_private(self, directory: Path, name: str, text: str) -> Path:
        """`directory/name` holding `text`, mode 0600 in a 0700 directory, replaced atomically."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        path = directory / name
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _credentials(self, req: csi_pb2.NodePublishVolumeRequest, plan: MountPlan,
                     directory: Path) -> tuple[list[str], dict[str, str], tuple[str, ...]]:
        """Write the volume's credentials (0600); the mount's extra -o tokens, its extra
        environment, and the values to scrub from its error output."""
        if plan.auth == "secret":
            ak, sk = check_secrets(req.secrets)
            token = secret_token(req.secrets)
            # a session token needs the bucket form of the passwd line: bucket:AK:SK:TOKEN
            line = f"{plan.source.split(':', 1)[0]}:{ak}:{sk}:{token}" if token else f"{ak}:{sk}"
            passwd = self._write_private(directory, "passwd", line + "\n")
            return [f"passwd_file={passwd}"], {}, tuple(v for v in (ak, sk, token) if v)
        token = pod_token(req.volume_context, plan.auth)
        token_file = self._write_private(directory, "token", token)
        if plan.auth == "irsa":
            env = {"AWS_ROLE_ARN": plan.role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}
        else:
            env = {"ALIBABA_CLOUD_ROLE_ARN": plan.role_arn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": plan.oidc_provider_arn,
                   "ALIBABA_CLOUD_OIDC_TOKEN_FILE": str(token_file)}
        return [], env, (token,)

    # -- publish -------------------------------------------------------------------
    def publish(self, req: csi_pb2.NodePublishVolumeRequest) -> None:
        if not req.volume_id:
            raise _invalid("volume_id is required")
        if not req.target_path:
            raise _invalid("target_path is required")
        if not req.HasField("volume_capability"):
            raise _invalid("volume_capability is required")
        if not os.path.isabs(req.target_path):
            raise _invalid("target_path must be an absolute path")
        plan = plan_mount(req)
        if plan.auth == "secret":
            check_secrets(req.secrets)
            secret_token(req.secrets)
        else:
            pod_token(req.volume_context, plan.auth)
        target = mounts.canonical(req.target_path)
        with self.volume_lock(req.volume_id):
            if mounts.is_mount_point(target):
                if not mounts.is_dead_mount(target):
                    if plan.auth != "secret":  # a republish: the pod's fresh token for the next refresh
                        self._write_private(self.secret_dir(req.volume_id, target), "token",
                                            pod_token(req.volume_context, plan.auth))
                    log.info("volume %s already published at %s", req.volume_id, target)
                    return
                log.warning("volume %s: mount at %s is dead (its daemon is gone); detaching and mounting again",
                            req.volume_id, target)
                mounts.unmount_all(target)
            try:
                os.makedirs(target, mode=0o750, exist_ok=True)
            except OSError as exc:
                raise CsiError(grpc.StatusCode.INTERNAL, f"cannot create target_path: {exc.strerror}") from None
            secret_dir = self.secret_dir(req.volume_id, target)
            try:
                cred_tokens, cred_env, secrets = self._credentials(req, plan, secret_dir)
                self._run_mount(req.volume_id, plan, target, cred_tokens, cred_env, secrets)
            except BaseException:
                shutil.rmtree(secret_dir, ignore_errors=True)
                raise
            log.info("volume %s published at %s (%s)", req.volume_id, target,
                     "read-only" if plan.read_only else "read-write")

    def _run_mount(self, volume_id: str, plan: MountPlan, target: str, cred_tokens: list[str],
                   cred_env: dict[str, str], secrets: tuple[str, ...]) -> None:
        opts = ",".join([*plan.tokens, *cred_tokens])
        argv = [*self.mount_command, plan.source, target, "-o", opts]
        log.info("volume %s: running %s", volume_id, " ".join(argv))
        # stderr goes to a file, not a pipe: the daemon the mount leaves behind
        # could hold a pipe open and make us wait for it forever.
        with tempfile.TemporaryFile(mode="w+b") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env={**_child_env(), **cred_env}, start_new_session=True, close_fds=True)
            try:
                code = proc.wait(timeout=self.mount_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                _cleanup_failed(target)
                raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"pailfs mount did not answer within {self.mount_timeout:g}s") from None
            err.seek(0)
            detail = _scrub(err.read().decode(errors="replace"), secrets)
        if code != 0:
            _cleanup_failed(target)
            raise CsiError(grpc.StatusCode.INTERNAL,
                           f"pailfs mount failed (exit {code}): {_last_line(detail) or 'no message'}")
        if not mounts.is_mount_point(target):
            raise CsiError(grpc.StatusCode.INTERNAL, "pailfs mount returned but nothing is mounted at target_path")

    # -- unpublish -----------------------------------------------------------------
    def unpublish(self, req: csi_pb2.NodeUnpublishVolumeRequest) -> None:
        if not req.volume_id:
            raise _invalid("volume_id is required")
        if not req.target_path:
            raise _invalid("target_path is required")
        target = mounts.canonical(req.target_path)
        with self.volume_lock(req.volume_id):
            try:
                mounts.unmount_all(target)
            except OSError as exc:
                raise CsiError(grpc.StatusCode.INTERNAL, f"cannot unmount target_path: {exc.strerror}") from None
            try:
                if os.path.isdir(target):
                    os.rmdir(target)
                elif os.path.lexists(target):
                    os.unlink(target)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise CsiError(grpc.StatusCode.INTERNAL,
                                   f"cannot remove target_path: {exc.strerror}") from None
            shutil.rmtree(self.secret_dir(req.volume_id, target), ignore_errors=True)
            log.info("volume %s unpublished from %s", req.volume_id, target)


# Credentials and endpoints of the plugin's own environment must not leak into a
# volume's mount: the volume's secret (or the pod's token) and url are the only ones it
# may use. What stays: AWS_CA_BUNDLE, AWS_STS_ENDPOINT, ALIBABA_CLOUD_STS_REGION (the admin's).
_ENV_DROP = frozenset({"OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                       "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
                       "PAILFS_CREDENTIAL_PROCESS", "PAILFS_ENDPOINT", "URL"})


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _ENV_DROP}


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _cleanup_failed(target: str) -> None:
    try:
        mounts.unmount_all(target)
    except OSError as exc:
        log.warning("could not clean up %s after a failed mount: %s", target, exc.strerror)
