"""NodePublishVolume / NodeUnpublishVolume: what the CSI node plugin does on a node.

Publishing starts `pailfs mount -f` as a child in its own session and waits for
it to report the mount ready (or why it failed) on a pipe. Everything the plugin
is given is checked before anything touches the node (pailfs.csi.plan and
pailfs.csi.attributes): attributes, otherOpts and mountOptions become structured
values, and the mount's `-o` arguments are built from them, one option per
argument — no attribute text is pasted into an option string. Options naming node files are refused.

Credentials: the secrets `akId`/`akSecret` (and `securityToken`, a session token)
go to a passwd file (0600 in a 0700 directory) that the mount reads through
`passwd_file=`; they are never in argv, a log line or a message. Or the PV names
a credential method, `authType: irsa` (`roleArn`) or `authType: rrsa` (`roleArn`,
`oidcProviderArn`): the pod's own service account token, which kubelet passes in
the volume context (CSIDriver `tokenRequests`), goes to a 0600 file that the
mount exchanges at STS for temporary credentials (AWS_ROLE_ARN /
ALIBABA_CLOUD_* in its environment); kubelet republishes (`requiresRepublish`)
and the file is replaced, so the mount refreshes with the pod's current token.
The STS endpoint comes from the plugin's environment, never from a PV: a PV must
not send tokens elsewhere.

`ro` is forced when the CO says readonly, the access mode is a reader-only one or
the PV's readOnly attribute is true; no user option can undo it. The pod's fsGroup
(`volume_mount_group`, with the VOLUME_MOUNT_GROUP capability) becomes the files'
group, with group-accessible modes, unless the PV sets gid/umask itself.

Each publication has a record in the state directory (volume, what was mounted,
whether the plugin created the target): a second publish at a busy target is OK
only for the same volume mounted the same way, ALREADY_EXISTS otherwise, and an
unpublish removes only what a publish created — a pailfs mount and an empty
directory; a file, another file system's mount or a non-empty directory stay.

Concurrency: one lock per target path; a call for a target whose call is still
running gets ABORTED (the CO retries with backoff). Pods starting on the same
volume at once publish in parallel, each at its own target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import grpc

from pailfs.csi import DEFAULT_MOUNT_TIMEOUT, DEFAULT_STATE_DIR, csi_pb2, mounts
from pailfs.csi.plan import (  # noqa: F401 - CsiError, plan_mount, POD_TOKENS_KEY: the module's API
    POD_TOKENS_KEY, CsiError, MountPlan, check_secrets, invalid, plan_mount, pod_token, secret_token,
)
from pailfs.procs import pid_running

log = logging.getLogger(__name__)

POD_KEYS = ("csi.storage.k8s.io/pod.namespace", "csi.storage.k8s.io/pod.name")
UNMOUNT_WAIT = 60.0  # seconds an unpublish waits for the daemon's last uploads
RECORD = "publication.json"
INSTANCE_ENV = "PAILFS_CSI_INSTANCE"


def log_tag(volume_id: str) -> str:
    """The prefix of a mount daemon's log lines: the volume id, printable and bounded."""
    return "volume=" + re.sub(r"[^A-Za-z0-9._:/@+-]", "?", volume_id)[:128]


@dataclass
class Publication:
    """The on-disk record of one published target (no secrets)."""

    volume_id: str
    target: str
    fingerprint: str
    read_only: bool
    created_target: bool
    pid: int | None = None
    instance: str = ""      # the plugin (supervisor) whose daemon serves it
    auth: str = "secret"    # what a successor's daemon needs in its environment (no secret)
    role_arn: str = ""
    oidc_provider_arn: str = ""


class NodeService:
    """Publish/unpublish logic, free of gRPC plumbing so it can be tested directly."""

    def __init__(self, node_id: str, state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
                 mount_command: Sequence[str] | None = None, mount_timeout: float = DEFAULT_MOUNT_TIMEOUT,
                 buffer_budget_mb: int | None = None):
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.mount_command = list(mount_command or [sys.executable, "-m", "pailfs", "mount"])
        self.mount_timeout = mount_timeout
        self.buffer_budget_mb = buffer_budget_mb
        # A supervisor names its plugin instance; records of another instance are the
        # mounts of the plugin this one replaces (an upgrade), to be taken over.
        self.instance = os.environ.get(INSTANCE_ENV) or uuid.uuid4().hex
        self.ready = True
        self._locks_guard = threading.Lock()
        self._busy: set[str] = set()
        self._daemons: dict[str, subprocess.Popen] = {}  # target -> our child serving it
        self._finishing: list[subprocess.Popen] = []     # unmounted, still uploading
        self._stop = threading.Event()
        threading.Thread(target=self._reap_loop, name="csi-reaper", daemon=True).start()

    # -- locking ---------------------------------------------------------------
    @contextmanager
    def target_lock(self, target: str) -> Iterator[None]:
        with self._locks_guard:
            if target in self._busy:
                raise CsiError(grpc.StatusCode.ABORTED, f"an operation on {target} is already in progress")
            self._busy.add(target)
        try:
            yield
        finally:
            with self._locks_guard:
                self._busy.discard(target)

    # -- health ----------------------------------------------------------------
    def health(self) -> str | None:
        """Why the plugin cannot serve (None when it can): what Probe reports."""
        if not self.ready:
            return "still taking over the mounts of the previous plugin"
        try:
            mounts.is_mount_point("/")
        except (OSError, ValueError) as exc:
            return f"the mount table cannot be read: {exc}"
        try:
            self._private_dir(self.state_dir)
            fd, probe = tempfile.mkstemp(dir=self.state_dir, prefix=".probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"the state directory {self.state_dir} is not writable: {exc.strerror}"
        return None

    # -- state -----------------------------------------------------------------
    def publication_dir(self, target: str) -> Path:
        # One directory per target: a target holds at most one publication.
        return self.state_dir / hashlib.sha256(target.encode()).hexdigest()[:32]

    def secret_dir(self, volume_id: str, target_path: str) -> Path:
        """Where a publication's credential files are (its publication directory)."""
        return self.publication_dir(mounts.canonical(target_path))

    @staticmethod
    def _private_dir(path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)

    def _write_private(self, path: Path, text: str) -> None:
        self._private_dir(self.state_dir)
        self._private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_record(self, target: str) -> Publication | None:
        return self.load_record_file(self.publication_dir(target) / RECORD)

    @staticmethod
    def load_record_file(path: Path) -> Publication | None:
        try:
            return Publication(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save_record(self, record: Publication) -> None:
        self._write_private(self.publication_dir(record.target) / RECORD, json.dumps(asdict(record)))

    # -- publish -------------------------------------------------------------------
    def publish(self, req: csi_pb2.NodePublishVolumeRequest) -> None:
        if not req.volume_id:
            raise invalid("volume_id is required")
        if not req.target_path:
            raise invalid("target_path is required")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        if not os.path.isabs(req.target_path):
            raise invalid("target_path must be an absolute path")
        plan = plan_mount(req, self.buffer_budget_mb)
        if plan.auth == "secret":
            check_secrets(req.secrets)
            secret_token(req.secrets)
        else:
            pod_token(req.volume_context, plan.auth)
        target = mounts.canonical(req.target_path)
        pod = "/".join(req.volume_context.get(k, "") for k in POD_KEYS).strip("/")
        for warning in plan.warnings:
            log.warning("volume %s: %s", req.volume_id, warning)
        with self.target_lock(target):
            if self._already_published(req.volume_id, plan, target):
                if plan.auth != "secret":  # a republish: the pod's fresh token for the next refresh
                    self._write_private(self.publication_dir(target) / "token",
                                        pod_token(req.volume_context, plan.auth))
                return
            if os.path.lexists(target) and not os.path.isdir(target):
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, "target_path exists and is not a directory")
            created = not os.path.lexists(target)
            try:
                os.makedirs(target, mode=0o750, exist_ok=True)
            except OSError as exc:
                raise CsiError(grpc.StatusCode.INTERNAL, f"cannot create target_path: {exc.strerror}") from None
            record = Publication(req.volume_id, target, plan.fingerprint(), plan.read_only, created,
                                 instance=self.instance, auth=plan.auth, role_arn=plan.role_arn,
                                 oidc_provider_arn=plan.oidc_provider_arn)
            pub_dir = self.publication_dir(target)
            try:
                self._save_record(record)
                cred_tokens, cred_env, secrets = self._credentials(req, plan, pub_dir)
                proc = self._run_daemon(req.volume_id, target, [plan.source, target], plan.mount_args(cred_tokens),
                                        secrets, cred_env)
            except BaseException:
                self._remove_target(target, created)
                shutil.rmtree(pub_dir, ignore_errors=True)
                raise
            record.pid = proc.pid
            self._save_record(record)
            self._daemons[target] = proc
            log.info("volume %s published at %s (%s%s)", req.volume_id, target,
                     "read-only" if plan.read_only else "read-write", f", pod {pod}" if pod else "")

    def _already_published(self, volume_id: str, plan: MountPlan, target: str) -> bool:
        """True when target holds this very publication, live; a dead one is detached.
        Raises ALREADY_EXISTS when target holds anything else."""
        info = mounts.mount_at(target)
        if info is None:
            return False
        record = self.load_record(target)
        if info.fstype != mounts.PAILFS_FSTYPE or record is None:
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                           f"target_path already holds a {info.fstype} mount that this plugin did not publish")
        if record.volume_id != volume_id:
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                           f"target_path already holds volume {record.volume_id}")
        if record.fingerprint != plan.fingerprint():
            mode = "read-only" if record.read_only else "read-write"
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                           f"volume {volume_id} is already published at target_path with other settings "
                           f"({mode}); unpublish it first")
        if not mounts.is_dead_mount(target):
            log.info("volume %s already published at %s", volume_id, target)
            return True
        log.warning("volume %s: mount at %s is dead (its daemon is gone); detaching and mounting again",
                    volume_id, target)
        self._unmount(target)
        return False

    @property
    def control_dir(self) -> Path:
        """Where mount daemons listen for a successor: in the state directory, which the
        plugin that replaces this one shares."""
        return self.state_dir / "control"

    def _credentials(self, req: csi_pb2.NodePublishVolumeRequest, plan: MountPlan,
                     directory: Path) -> tuple[list[str], dict[str, str], tuple[str, ...]]:
        """Write the volume's credentials (0600); the mount's extra -o tokens, its extra
        environment, and the values to scrub from its error output."""
        if plan.auth == "secret":
            ak, sk = check_secrets(req.secrets)
            token = secret_token(req.secrets)
            # a session token needs the bucket form of the passwd line: bucket:AK:SK:TOKEN
            line = f"{plan.source.split(':', 1)[0]}:{ak}:{sk}:{token}" if token else f"{ak}:{sk}"
            passwd = directory / "passwd"
            self._write_private(passwd, line + "\n")
            return [f"passwd_file={passwd}"], {}, tuple(v for v in (ak, sk, token) if v)
        token = pod_token(req.volume_context, plan.auth)
        self._write_private(directory / "token", token)
        return [], self._token_env(plan.auth, plan.role_arn, plan.oidc_provider_arn, directory), (token,)

    @staticmethod
    def _token_env(auth: str, role_arn: str, provider_arn: str, directory: Path) -> dict[str, str]:
        """The environment of a mount that exchanges the pod's token (in directory/token) at STS."""
        token_file = str(directory / "token")
        if auth == "irsa":
            return {"AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": token_file}
        return {"ALIBABA_CLOUD_ROLE_ARN": role_arn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": provider_arn,
                "ALIBABA_CLOUD_OIDC_TOKEN_FILE": token_file}

    def _run_daemon(self, volume_id: str, target: str, positional: list[str], options: list[str],
                    secrets: tuple[str, ...], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start a mount daemon and wait until it serves target (or say why it failed)."""
        read_end, write_end = os.pipe()
        argv = [*self.mount_command, *positional, "-f", "--ready-fd", str(write_end),
                "--control-dir", str(self.control_dir), "--log-tag", log_tag(volume_id), *options]
        log.info("volume %s: running %s", volume_id, " ".join(argv))
        try:
            # stderr is the plugin's: the daemon's log lines reach `kubectl logs`, tagged
            proc = subprocess.Popen(argv, pass_fds=(write_end,), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, env={**_child_env(), **(env or {})},
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(write_end)
        try:
            answer = _read_answer(read_end, self.mount_timeout)
        finally:
            os.close(read_end)
        if answer is None:
            _kill_group(proc)
            self._unmount_quietly(target)
            raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"pailfs mount did not answer within {self.mount_timeout:g}s")
        if answer != "ok":
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                code = proc.returncode
            self._unmount_quietly(target)
            detail = _scrub(answer.removeprefix("error: "), secrets) or f"it exited with status {code}"
            raise CsiError(grpc.StatusCode.INTERNAL, f"pailfs mount failed: {_last_line(detail)}")
        if not mounts.is_mount_point(target):
            _kill_group(proc)
            raise CsiError(grpc.StatusCode.INTERNAL, "pailfs mount returned but nothing is mounted at target_path")
        return proc

    # -- unpublish -----------------------------------------------------------------
    def unpublish(self, req: csi_pb2.NodeUnpublishVolumeRequest) -> None:
        if not req.volume_id:
            raise invalid("volume_id is required")
        if not req.target_path:
            raise invalid("target_path is required")
        target = mounts.canonical(req.target_path)
        with self.target_lock(target):
            record = self.load_record(target)
            if record is not None and record.volume_id != req.volume_id:
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"target_path holds volume {record.volume_id}, not {req.volume_id}; left alone")
            if mounts.is_mount_point(target):
                self._unmount(target)
                self._wait_daemon(target, record)
            self._remove_target(target, record is None or record.created_target)
            shutil.rmtree(self.publication_dir(target), ignore_errors=True)
            log.info("volume %s unpublished from %s", req.volume_id, target)

    def _unmount(self, target: str) -> None:
        try:
            mounts.unmount_pailfs(target)
        except OSError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.errno == errno.EPERM else grpc.StatusCode.INTERNAL
            raise CsiError(code, f"cannot unmount target_path: {exc.strerror}; left alone") from None

    def _unmount_quietly(self, target: str) -> None:
        try:
            mounts.unmount_pailfs(target)
        except OSError as exc:
            log.warning("could not clean up %s after a failed mount: %s", target, exc.strerror)

    def _wait_daemon(self, target: str, record: Publication | None) -> None:
        """Let the daemon finish its last uploads (it exits once the kernel ends the connection)."""
        proc = self._daemons.pop(target, None)
        if proc is not None:
            try:
                proc.wait(timeout=UNMOUNT_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("the mount daemon of %s is still finishing after %gs", target, UNMOUNT_WAIT)
                self._finishing.append(proc)  # reaped later
        elif record is not None and record.pid and record.instance == self.instance:
            # a daemon of this plugin's earlier gRPC server, adopted by the supervisor
            deadline = time.monotonic() + UNMOUNT_WAIT
            while pid_running(record.pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    @staticmethod
    def _remove_target(target: str, created: bool) -> None:
        """Remove target when publish created it and it is an empty directory: never a
        file, a directory with data, or a path someone else made."""
        if not created or not os.path.lexists(target):
            return
        if os.path.islink(target) or not os.path.isdir(target):
            log.warning("target_path %s is not a directory; left in place", target)
            return
        try:
            os.rmdir(target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                log.warning("target_path %s is not empty; left in place", target)
            elif exc.errno != errno.ENOENT:
                raise CsiError(grpc.StatusCode.INTERNAL, f"cannot remove target_path: {exc.strerror}") from None

    # -- taking over from the plugin this one replaces ------------------------------
    def take_over_previous(self) -> None:
        """Take over the live mounts another plugin instance published (an upgrade: the
        DaemonSet starts this plugin beside the old one). Probe says not ready until done."""
        self.ready = False
        try:
            for record_file in sorted(self.state_dir.glob(f"*/{RECORD}")):
                record = self.load_record_file(record_file)
                if record is None or record.instance == self.instance:
                    continue
                try:
                    with self.target_lock(record.target):
                        self._take_over(record)
                except CsiError as exc:
                    log.warning("volume %s at %s stays with the previous plugin: %s", record.volume_id,
                                record.target, exc.message)
        finally:
            self.ready = True

    def _take_over(self, record: Publication) -> None:
        info = mounts.mount_at(record.target)
        if info is None or info.fstype != mounts.PAILFS_FSTYPE or mounts.is_dead_mount(record.target):
            return  # gone, or dead: the next publish mounts afresh
        started = time.monotonic()
        env = None
        if record.auth != "secret":  # the token file stays where it is: the state directory is shared
            env = self._token_env(record.auth, record.role_arn, record.oidc_provider_arn,
                                  self.publication_dir(record.target))
        proc = self._run_daemon(record.volume_id, record.target, ["--takeover", record.target], [], (), env)
        self._daemons[record.target] = proc
        record.pid, record.instance = proc.pid, self.instance
        self._save_record(record)
        log.warning("volume %s at %s taken over from the previous plugin in %.0f ms", record.volume_id,
                    record.target, (time.monotonic() - started) * 1000)

    # -- children ------------------------------------------------------------------
    def _reap_loop(self) -> None:
        # Daemons that end on their own (a crash, a lazy unmount finishing) are reaped
        # here, so no zombie waits for the plugin's exit.
        while not self._stop.wait(2.0):
            self.reap()

    def reap(self) -> None:
        for proc in list(self._daemons.values()):
            proc.poll()
        self._finishing = [p for p in self._finishing if p.poll() is None]

    def close(self) -> None:
        self._stop.set()


# Credentials and endpoints of the plugin's own environment must not leak into a
# volume's mount: the volume's secret (or the pod's token) and url are the only ones it
# may use. What stays: AWS_CA_BUNDLE, AWS_STS_ENDPOINT, ALIBABA_CLOUD_STS_REGION (the admin's).
_ENV_DROP = frozenset({"OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                       "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
                       "PAILFS_CREDENTIAL_PROCESS", "PAILFS_ENDPOINT", "URL"})


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _ENV_DROP}


def _read_answer(fd: int, timeout: float) -> str | None:
    """What the daemon wrote on its ready pipe before closing it; None on timeout."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)


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
