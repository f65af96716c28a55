"""Mount handover: a running mount passes /dev/fuse and its state to a new pailfs
process, and readers never see an error.

* `pailfs mount --takeover MNT` upgrades a plain mount in place, read-only and
  read-write (data written before the takeover and closed after it reaches the
  bucket whole);
* the CSI plugin: plugin A and plugin B, each PID 1 of its own PID namespace
  (`unshare --pid --fork --mount-proc`, as a container runtime runs them) and
  sharing a state directory and a kubelet directory with shared mount
  propagation (kubelet's Bidirectional); A publishes, a reader loops, B starts
  and takes over, A's namespace is killed.

Each test prints the reader's error count and its longest read (the stall a
takeover causes): `pytest -s tests/test_handover.py`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from csiplugin import Mode, publish_request
from mounts import get_object, is_mounted, mounted, pailfs, put_objects, wait_for
from pailfs.csi import csi_pb2, csi_pb2_grpc
from pailfs.procs import pid_running, pids_with_argument

DATA = {
    "data/a.bin": random.Random(7).randbytes(2 * 1024 * 1024),
    "data/b.txt": b"small object\n",
    "data/sub/c.txt": b"in a subdirectory\n",
}

pytestmark = pytest.mark.mount


class Reader(threading.Thread):
    """Reads files through a mount in a loop, each time asking the daemon (the page
    cache is dropped first), counting errors, wrong bytes and the longest read."""

    def __init__(self, files: dict[Path, bytes]) -> None:
        super().__init__(daemon=True)
        self.files = files
        self.errors: list[str] = []
        self.reads = 0
        self.longest = 0.0
        self.longest_before = 0.0  # the longest read before the takeover began (see mark)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for path, expected in self.files.items():
                started = time.perf_counter()
                try:
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        chunks = []
                        while chunk := os.read(fd, 1 << 20):
                            chunks.append(chunk)
                    finally:
                        os.close(fd)
                    os.listdir(path.parent)
                    if b"".join(chunks) != expected:
                        self.errors.append(f"{path}: wrong bytes")
                except OSError as exc:
                    self.errors.append(f"{path}: {exc}")
                self.longest = max(self.longest, time.perf_counter() - started)
                self.reads += 1

    def mark(self) -> None:
        """The takeover begins: from here `longest` is the longest read around it."""
        self.longest_before, self.longest = self.longest, 0.0

    def wait_reads(self, more: int, timeout: float = 60) -> None:
        target = self.reads + more
        deadline = time.monotonic() + timeout
        while self.reads < target:
            assert time.monotonic() < deadline, f"the reader stalled at {self.reads} reads"
            assert self.is_alive()
            time.sleep(0.01)

    def finish(self) -> None:
        self._stop_event.set()
        self.join(30)


def report(name: str, reader: Reader, log: Path | None = None) -> None:
    waited = [line.split("over: ", 1)[1] for line in (log.read_text().splitlines() if log else [])
              if "readers waited" in line]
    print(f"\n{name}: {reader.reads} reads, {len(reader.errors)} errors, longest read around the takeover "
          f"{reader.longest * 1000:.1f} ms (before it: {reader.longest_before * 1000:.1f} ms)"
          + (f"; the successor logged: {waited[-1]}" if waited else ""))


def serving(mnt: Path) -> list[int]:
    return pids_with_argument(str(mnt), words=("mount", "-f"))


# ---- pailfs mount --takeover ----------------------------------------------------------------

def test_takeover_of_a_read_only_mount(s3_env, bucket, tmp_path):
    put_objects(f"s3://{bucket}", DATA)
    log = tmp_path / "mount.log"
    with mounted(bucket, tmp_path / "mnt", f"ro,logfile={log}") as mnt:
        (old,) = serving(mnt)
        reader = Reader({mnt / k: v for k, v in DATA.items()})
        reader.start()
        try:
            reader.wait_reads(30)
            reader.mark()
            proc = pailfs("mount", "--takeover", str(mnt))
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: not pid_running(old), "the old daemon to exit")
            (new,) = serving(mnt)
            assert new != old and "--takeover" in Path(f"/proc/{new}/cmdline").read_text()
            reader.wait_reads(30)
        finally:
            reader.finish()
        report("ro takeover", reader, log)
        assert reader.errors == []
        assert is_mounted(mnt)
        # the successor answers everything: a name it never looked up, writes still refused
        assert (mnt / "data" / "sub" / "c.txt").read_bytes() == DATA["data/sub/c.txt"]
        with pytest.raises(OSError):
            (mnt / "data" / "new.txt").write_bytes(b"x")
    assert not is_mounted(mnt)


WRITER = r"""
import sys
path, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "wb") as f:
    f.write(bytes(range(256)) * (first // 256))
    f.flush()
    print("written", flush=True)
    sys.stdin.readline()      # the takeover happens here; the file stays open
    f.write(b"\xab" * second)
print("closed", flush=True)
"""


def test_takeover_of_a_read_write_mount_keeps_unsaved_writes(s3_env, bucket, tmp_path):
    put_objects(f"s3://{bucket}", DATA)
    first, second = 3 * 1024 * 1024, 2 * 1024 * 1024 + 123
    expected = bytes(range(256)) * (first // 256) + b"\xab" * second
    log = tmp_path / "mount.log"
    with mounted(bucket, tmp_path / "mnt", f"logfile={log}") as mnt:
        (old,) = serving(mnt)
        (mnt / "data" / "closed-before.txt").write_bytes(b"closed before the takeover\n")
        # the writer is a process of its own: a fork of this one would close a copy of
        # its descriptor, and every close() of a descriptor is a FLUSH (an upload)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "data" / "open-across.bin"),
                                   str(first), str(second)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        reader = Reader({mnt / "data" / "a.bin": DATA["data/a.bin"],
                         mnt / "data" / "closed-before.txt": b"closed before the takeover\n"})
        try:
            assert writer.stdout.readline() == "written\n"
            reader.start()
            reader.wait_reads(20)
            reader.mark()
            proc = pailfs("mount", "--takeover", str(mnt))
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: not pid_running(old), "the old daemon to exit")
            reader.wait_reads(20)
            # the old daemon left without uploading half a file; the successor has the data
            assert get_object(f"s3://{bucket}", "data/open-across.bin") is None
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "closed\n"
        finally:
            reader.finish()
            writer.kill()
            writer.wait()
        assert (mnt / "data" / "open-across.bin").read_bytes() == expected
        (mnt / "data" / "after.txt").write_bytes(b"written after\n")
        report("rw takeover", reader, log)
        assert reader.errors == []
    assert get_object(f"s3://{bucket}", "data/open-across.bin") == expected
    assert get_object(f"s3://{bucket}", "data/closed-before.txt") == b"closed before the takeover\n"
    assert get_object(f"s3://{bucket}", "data/after.txt") == b"written after\n"


def test_takeover_twice_and_unmount(s3_env, bucket, tmp_path):
    put_objects(f"s3://{bucket}", DATA)
    with mounted(bucket, tmp_path / "mnt", "ro,kernel_cache") as mnt:
        for _ in range(2):
            (old,) = serving(mnt)
            assert pailfs("mount", "--takeover", str(mnt)).returncode == 0
            wait_for(lambda: not pid_running(old), "the old daemon to exit")
            assert (mnt / "data" / "b.txt").read_bytes() == DATA["data/b.txt"]
        (last,) = serving(mnt)
    assert not is_mounted(mnt) and not pid_running(last)  # `pailfs umount` waited for the successor


def test_takeover_without_a_running_mount_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = pailfs("mount", "--takeover", str(tmp_path / "empty"))
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "no pailfs daemon to take over" in lines[0]
    proc = pailfs("mount", "--takeover", "bucket", str(tmp_path / "empty"))
    assert proc.returncode == 1 and b"only the mountpoint" in proc.stderr


# ---- the CSI plugin, upgraded: A and B in PID namespaces of their own -------------------------

class NamespacedPlugin:
    """`pailfs csi` as PID 1 of a new PID (and mount) namespace, like a container."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.log = workdir / f"{name}.log"
        self.endpoint = f"unix://{workdir}/csi.sock"  # one socket path, as in a DaemonSet
        with open(self.log, "ab") as log:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "unchanged", "--kill-child",
                 sys.executable, "-m", "pailfs", "csi", "--endpoint", self.endpoint, "--node-id", "node-1",
                 "--state-dir", str(workdir / "state"), "--verbose"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid1 = wait_for(lambda: _children(self.unshare.pid), f"{name}'s PID 1")[0]

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.unshare.poll() is None, self.log.read_text()
            if "serving on" not in self.log.read_text():
                return False  # the socket path is still the previous plugin's
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    return csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=2).ready.value
            except grpc.RpcError:
                return False

        wait_for(ready, "the plugin to be ready")

    def pid_namespace(self) -> str:
        return os.readlink(f"/proc/{self.pid1}/ns/pid")

    def kill_namespace(self) -> None:
        """SIGKILL to unshare: --kill-child kills PID 1, and with it every process of the namespace."""
        self.unshare.kill()
        self.unshare.wait(30)
        wait_for(lambda: not pid_running(self.pid1), "the namespace's PID 1 to die")

    def stop(self) -> None:
        if self.unshare.poll() is None:
            os.kill(self.pid1, signal.SIGTERM)  # the supervisor exits once no mount is left
            try:
                self.unshare.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_namespace()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


@pytest.fixture
def shared_kubelet_dir():
    """A work dir whose kubelet/ is a shared mount (kubelet's Bidirectional propagation), so
    mounts made in the plugins' mount namespaces appear here; all of it removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="pcsi-ho-", dir="/tmp"))
    kubelet = workdir / "kubelet"
    kubelet.mkdir()
    subprocess.run(["mount", "--bind", str(kubelet), str(kubelet)], check=True)
    subprocess.run(["mount", "--make-shared", str(kubelet)], check=True)
    try:
        yield workdir, kubelet
    finally:
        with open("/proc/self/mountinfo") as f:
            under = [line.split()[4] for line in f if line.split()[4].startswith(str(kubelet) + "/")]
        for path in reversed(under):
            subprocess.run(["umount", "-l", path], capture_output=True)
        subprocess.run(["umount", "-l", str(kubelet)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_csi_plugin_upgrade_takes_over_the_mounts(s3_env, bucket, seaweed, s3_credentials, shared_kubelet_dir):
    workdir, kubelet = shared_kubelet_dir
    put_objects(f"s3://{bucket}", DATA)
    target = kubelet / "pods" / "p1" / "volumes" / "kubernetes.io~csi" / "pv-data" / "mount"
    target.parent.mkdir(parents=True)
    context = {"bucket": bucket, "url": f"http://127.0.0.1:{seaweed.state().s3_port}", "path": "/data"}
    secrets = {"akId": s3_credentials.access_key, "akSecret": s3_credentials.secret_key}
    a = NamespacedPlugin(workdir, "a")
    b = None
    reader = None
    try:
        a.wait_ready()
        with grpc.insecure_channel(a.endpoint) as ch:
            csi_pb2_grpc.NodeStub(ch).NodePublishVolume(
                publish_request("pv-data", target, mode=Mode.MULTI_NODE_READER_ONLY, context=context,
                                secrets=secrets), timeout=90)
        assert is_mounted(target)  # made in A's mount namespace, seen here
        reader = Reader({target / k.removeprefix("data/"): v for k, v in DATA.items()})
        reader.start()
        reader.wait_reads(30)

        reader.mark()
        b = NamespacedPlugin(workdir, "b")
        b.wait_ready()  # ready only once it holds A's mounts
        assert "taken over from the previous plugin" in b.log.read_text()
        reader.wait_reads(30)
        # A keeps only its gRPC server: its daemon handed the mount over and exited, so on
        # SIGTERM A's supervisor would exit at once
        wait_for(lambda: all("--serve-only" in _cmdline(c) for c in _children(a.pid1)), "A's daemon to go")
        a.kill_namespace()
        reader.wait_reads(30)
        reader.finish()
        report("CSI plugin upgrade", reader, b.log)
        assert reader.errors == []
        # the mount is now served from B's namespace
        (daemon,) = [p for p in pids_with_argument(str(target), words=("mount", "-f"))]
        assert os.readlink(f"/proc/{daemon}/ns/pid") == b.pid_namespace()

        with grpc.insecure_channel(b.endpoint) as ch:
            csi_pb2_grpc.NodeStub(ch).NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-data", target_path=str(target)), timeout=90)
        assert not is_mounted(target)
        # B, PID 1 of its namespace, reaped the daemon: no zombie left
        wait_for(lambda: not Path(f"/proc/{daemon}").exists(), "the daemon to be reaped")
    finally:
        if reader is not None:
            reader.finish()
        for plugin in (a, b):
            if plugin is not None:
                plugin.stop()


def test_the_plugin_as_pid1_keeps_its_mounts_after_sigterm(s3_env, bucket, seaweed, s3_credentials,
                                                          shared_kubelet_dir):
    """Deleting the plugin pod without a successor: the gRPC server stops, but PID 1 stays
    while a mount lives (its exit would kill the namespace, mount daemons included)."""
    workdir, kubelet = shared_kubelet_dir
    put_objects(f"s3://{bucket}", DATA)
    target = kubelet / "pods" / "p2" / "mount"
    target.parent.mkdir(parents=True)
    context = {"bucket": bucket, "url": f"http://127.0.0.1:{seaweed.state().s3_port}", "path": "/data"}
    secrets = {"akId": s3_credentials.access_key, "akSecret": s3_credentials.secret_key}
    plugin = NamespacedPlugin(workdir, "a")
    try:
        plugin.wait_ready()
        with grpc.insecure_channel(plugin.endpoint) as ch:
            csi_pb2_grpc.NodeStub(ch).NodePublishVolume(
                publish_request("pv-keep", target, context=context, secrets=secrets), timeout=90)
        (server,) = [c for c in _children(plugin.pid1) if "--serve-only" in _cmdline(c)]
        os.kill(plugin.pid1, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{server}").exists(), "the gRPC server to stop and be reaped")
        assert "waiting for them to be taken over or unmounted" in wait_for(
            lambda: "waiting for them" in plugin.log.read_text() and plugin.log.read_text(), "the supervisor's word")
        assert plugin.unshare.poll() is None and pid_running(plugin.pid1)
        assert (target / "b.txt").read_bytes() == DATA["data/b.txt"]
        # the mount goes away (as kubelet would unmount it): PID 1 has nothing left to keep, and exits
        subprocess.run(["umount", str(target)], check=True)
        plugin.unshare.wait(30)
    finally:
        plugin.stop()
