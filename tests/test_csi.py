"""The CSI node plugin as kubelet sees it: a gRPC client on the unix socket of
`pailfs csi` (the csi-sanity node checks), then real publishes on SeaweedFS."""

from __future__ import annotations

import errno
import os
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

import pailfs
from pailfs import config
from pailfs.csi import DRIVER_NAME, csi_pb2, csi_pb2_grpc
from pailfs.csi.node import NodeService, plan_mount
from pailfs.csi.server import build_server

Mode = csi_pb2.VolumeCapability.AccessMode
SECRETS = {"akId": "AKIDcsiTest0001", "akSecret": "csi-Test-Secret-Value-9f8e7d"}
LOCAL_PATH_OPTIONS = [o.name for o in config.OPTIONS if o.local_path]


def publish_request(volume_id: str = "vol-1", target: str | Path = "/nonexistent/target", *,
                    mode: int = Mode.MULTI_NODE_READER_ONLY, readonly: bool = False,
                    context: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
                    flags: tuple[str, ...] = (), block: bool = False) -> csi_pb2.NodePublishVolumeRequest:
    req = csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=str(target), readonly=readonly,
        volume_context=context if context is not None else {"bucket": "data-bucket", "url": "http://127.0.0.1:1"},
        secrets=secrets if secrets is not None else SECRETS)
    if block:
        req.volume_capability.block.SetInParent()
    else:
        req.volume_capability.mount.mount_flags.extend(flags)
    req.volume_capability.access_mode.mode = mode
    return req


class Plugin:
    """`pailfs csi` in a subprocess, as the DaemonSet runs it."""

    def __init__(self, workdir: Path, node_id: str = "node-1"):
        self.workdir = workdir
        self.socket = workdir / "csi.sock"
        self.state_dir = workdir / "state"
        self.log = workdir / "plugin.log"
        self.node_id = node_id
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pailfs", "csi", "--endpoint", self.endpoint, "--node-id", self.node_id,
                 "--state-dir", str(self.state_dir), "--verbose"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=2)
                return
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pailfs csi did not come up:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def workdir():
    # unix socket paths are limited to 108 bytes: keep this one short
    path = Path(tempfile.mkdtemp(prefix="pcsi-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin(workdir):
    p = Plugin(workdir)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def stubs(plugin):
    with grpc.insecure_channel(plugin.endpoint) as channel:
        yield csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.NodeStub(channel)


def error_of(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# ---- Identity -----------------------------------------------------------------

def test_get_plugin_info(stubs):
    identity, _ = stubs
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME
    assert info.vendor_version == pailfs.__version__


def test_probe_is_ready(stubs):
    identity, _ = stubs
    resp = identity.Probe(csi_pb2.ProbeRequest())
    assert resp.HasField("ready") and resp.ready.value is True


def test_plugin_capabilities_no_controller(stubs):
    identity, _ = stubs
    caps = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    service_types = {c.service.type for c in caps if c.HasField("service")}
    assert csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE not in service_types


# ---- Node: info and capabilities ---------------------------------------------

def test_node_get_info(stubs):
    _, node = stubs
    assert node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "node-1"


def test_node_capabilities_have_no_staging(stubs):
    _, node = stubs
    caps = node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    types = {c.rpc.type for c in caps}
    assert csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in types


def test_unsupported_node_calls_are_unimplemented(stubs):
    _, node = stubs
    err = error_of(node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(volume_id="v", staging_target_path="/x"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    err = error_of(node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path="/x"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- Node: publish argument checks ------------------------------------------------

def _missing(field: str, tmp: Path) -> csi_pb2.NodePublishVolumeRequest:
    req = publish_request("vol-1", tmp / "target")
    req.ClearField(field)
    return req


@pytest.mark.parametrize("field", ["volume_id", "target_path", "volume_capability"])
def test_publish_without_required_field_is_invalid(stubs, tmp_path, field):
    _, node = stubs
    err = error_of(node.NodePublishVolume, _missing(field, tmp_path))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()
    assert not (tmp_path / "target").exists()


def test_publish_without_access_mode_is_invalid(stubs, tmp_path):
    _, node = stubs
    req = publish_request("vol-1", tmp_path / "target", mode=Mode.UNKNOWN)
    err = error_of(node.NodePublishVolume, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "access_mode" in err.details()


def test_publish_block_volume_is_refused(stubs, tmp_path):
    _, node = stubs
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", block=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "block" in err.details()


@pytest.mark.parametrize("mode", [Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER])
def test_publish_unsupported_access_mode_fails_precondition(stubs, tmp_path, mode):
    _, node = stubs
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", mode=mode))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert Mode.Mode.Name(mode) in err.details()


@pytest.mark.parametrize("context, words", [
    ({"url": "http://127.0.0.1:1"}, "bucket"),
    ({"bucket": "data-bucket"}, "url"),
    ({"bucket": "-o", "url": "http://127.0.0.1:1"}, "bucket"),
    ({"bucket": "bk1", "url": "http://127.0.0.1:1", "path": "/data/../../etc"}, "path"),
    ({"bucket": "bk1", "url": "http://127.0.0.1:1", "color": "blue"}, "color"),
])
def test_publish_bad_volume_attributes_are_invalid(stubs, tmp_path, context, words):
    _, node = stubs
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", context=context))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()


@pytest.mark.parametrize("name", LOCAL_PATH_OPTIONS)
def test_publish_refuses_options_naming_node_files(stubs, tmp_path, name):
    _, node = stubs
    ctx = {"bucket": "bk1", "url": "http://127.0.0.1:1", "otherOpts": f"kernel_cache,{name}=/etc/shadow"}
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", context=ctx))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name in err.details()
    # the same through the PV's mountOptions
    err = error_of(node.NodePublishVolume,
                   publish_request("vol-1", tmp_path / "t", flags=(f"{name}=/etc/shadow",)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_local_path_options_are_the_file_naming_ones():
    assert set(LOCAL_PATH_OPTIONS) >= {"passwd_file", "use_cache", "staging_dir", "logfile"}


@pytest.mark.parametrize("other, words", [
    ("no_such_option", "no_such_option"),
    ("max_stat_cache_size=lots", "max_stat_cache_size"),
    ("url=http://elsewhere:9000", "url"),
])
def test_publish_bad_other_opts_are_invalid(stubs, tmp_path, other, words):
    _, node = stubs
    ctx = {"bucket": "bk1", "url": "http://127.0.0.1:1", "otherOpts": other}
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", context=ctx))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()


@pytest.mark.parametrize("secrets", [{}, {"akId": "AKID"}, {"akId": "AK:ID", "akSecret": "s3cr3t-value"},
                                     {"akId": "AKID", "akSecret": "two\nlines"}])
def test_publish_bad_secrets_are_invalid_and_never_echoed(stubs, plugin, tmp_path, secrets):
    _, node = stubs
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", secrets=secrets))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "akId" in err.details() or "akSecret" in err.details()
    for value in secrets.values():
        assert value not in err.details()
        assert value not in plugin.log.read_text()


def test_publish_errors_never_show_secrets(stubs, plugin, tmp_path):
    _, node = stubs
    ctx = {"bucket": "bk1", "url": "http://127.0.0.1:1", "otherOpts": "bogus"}
    err = error_of(node.NodePublishVolume, publish_request("vol-1", tmp_path / "t", context=ctx))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    log = plugin.log.read_text()
    for value in SECRETS.values():
        assert value not in err.details() and value not in log


# ---- Node: unpublish ---------------------------------------------------------------

def test_unpublish_absent_target_is_ok(stubs, tmp_path):
    _, node = stubs
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1",
                                                                target_path=str(tmp_path / "never")))


def test_unpublish_removes_an_unmounted_target_dir(stubs, tmp_path):
    _, node = stubs
    (tmp_path / "t").mkdir()
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=str(tmp_path / "t")))
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("field", ["volume_id", "target_path"])
def test_unpublish_without_required_field_is_invalid(stubs, field):
    _, node = stubs
    req = csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path="/tmp/x")
    req.ClearField(field)
    err = error_of(node.NodeUnpublishVolume, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details()


# ---- read-only enforcement (the plan the plugin hands to `pailfs mount`) ----------

def _plan(mode, readonly=False, other="", flags=()):
    ctx = {"bucket": "bk1", "url": "http://127.0.0.1:1", "otherOpts": other}
    return plan_mount(publish_request("v", "/t", mode=mode, readonly=readonly, context=ctx, flags=flags))


@pytest.mark.parametrize("mode", [Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY])
@pytest.mark.parametrize("other", ["", "rw", "ro=false", "kernel_cache,rw,umask=022", "rw=true,ro=0"])
def test_reader_only_modes_force_ro_whatever_the_options(mode, other):
    plan = _plan(mode, other=other, flags=("rw",))
    assert plan.read_only
    assert plan.tokens[-1] == "ro" and "rw" not in plan.tokens
    assert config.parse_options([",".join(plan.tokens)], env={}).read_only


def test_readonly_flag_forces_ro_for_a_writer_mode():
    plan = _plan(Mode.MULTI_NODE_MULTI_WRITER, readonly=True, other="rw")
    assert plan.read_only and config.parse_options([",".join(plan.tokens)], env={}).read_only


def test_writer_mode_without_readonly_mounts_read_write():
    plan = _plan(Mode.MULTI_NODE_MULTI_WRITER, other="max_stat_cache_size=0")
    opts = config.parse_options([",".join(plan.tokens)], env={})
    assert not plan.read_only and not opts.read_only and opts.max_stat_cache_size == 0


def test_plan_sets_url_and_allow_other_and_keeps_subpath():
    plan = plan_mount(publish_request("v", "/t", context={
        "bucket": "bk1", "url": "http://10.0.0.5:8333", "path": "tf-train/train/data/"}))
    assert plan.source == "bk1:/tf-train/train/data"
    assert "url=http://10.0.0.5:8333" in plan.tokens and "allow_other" in plan.tokens


# ---- concurrency and failing mounts, with a stand-in mount program -----------------

FAKE_MOUNT = r"""
import sys, time
opts = sys.argv[sys.argv.index("-o") + 1]
passwd = [t.split("=", 1)[1] for t in opts.split(",") if t.startswith("passwd_file=")][0]
action = sys.argv[1]
if action == "leak":
    print("cannot log in with", open(passwd).read().strip(), file=sys.stderr)
    sys.exit(1)
time.sleep(float(action))
"""


@pytest.fixture
def fake_node(workdir):
    """An in-process server whose `pailfs mount` is a stand-in: `leak` prints the
    credentials it was given and fails; a number sleeps that long."""
    script = workdir / "fake_mount.py"
    script.write_text(FAKE_MOUNT)

    def start(action: str, timeout: float = 30):
        node = NodeService("node-1", state_dir=workdir / "state", mount_timeout=timeout,
                           mount_command=[sys.executable, str(script), action])
        server = build_server(f"unix://{workdir}/fake.sock", node)
        server.start()
        channel = grpc.insecure_channel(f"unix://{workdir}/fake.sock")
        opened.append((server, channel))
        return csi_pb2_grpc.NodeStub(channel), node

    opened: list = []
    yield start
    for server, channel in opened:
        channel.close()
        server.stop(0)


def test_concurrent_call_for_the_same_volume_is_aborted(fake_node, tmp_path):
    node, _ = fake_node("2")
    results: list = []

    def first():
        try:
            node.NodePublishVolume(publish_request("vol-busy", tmp_path / "a"), timeout=30)
            results.append("ok")
        except grpc.RpcError as exc:
            results.append(exc.code())

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.7)
    err = error_of(node.NodePublishVolume, publish_request("vol-busy", tmp_path / "b"))
    assert err.code() == grpc.StatusCode.ABORTED
    err = error_of(node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-busy", target_path=str(tmp_path / "a")))
    assert err.code() == grpc.StatusCode.ABORTED
    # another volume is not held up
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-other",
                                                                target_path=str(tmp_path / "c")))
    thread.join()
    # the stand-in exits 0 without mounting: the plugin notices
    assert results == [grpc.StatusCode.INTERNAL]


def test_failed_mount_message_hides_secrets_and_cleans_up(fake_node, tmp_path, workdir):
    node, _ = fake_node("leak")
    err = error_of(node.NodePublishVolume, publish_request("vol-leak", tmp_path / "t"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "cannot log in with" in err.details()
    for value in SECRETS.values():
        assert value not in err.details()
    assert not any((workdir / "state").iterdir()), "credential directory left behind"


def test_mount_that_hangs_is_killed_and_reported(fake_node, tmp_path, workdir):
    node, _ = fake_node("600", timeout=1)
    started = time.monotonic()
    err = error_of(node.NodePublishVolume, publish_request("vol-slow", tmp_path / "t"))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 15
    assert not any((workdir / "state").iterdir())
    stray = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count("fake_mount.py")]
    assert not stray, "the hung mount process was not killed"


def test_credentials_file_is_private_and_not_in_argv(fake_node, tmp_path, workdir):
    node, _ = fake_node("3")
    thread = threading.Thread(target=lambda: _swallow(node.NodePublishVolume, publish_request("vol-p", tmp_path / "t")))
    thread.start()
    try:
        def mount_running() -> bool:
            return any("fake_mount.py" in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not mount_running():
            time.sleep(0.05)
        (passwd,) = (workdir / "state").glob("*/passwd")
        assert passwd.stat().st_mode & 0o777 == 0o600
        assert passwd.parent.stat().st_mode & 0o777 == 0o700
        assert (workdir / "state").stat().st_mode & 0o777 == 0o700
        assert passwd.read_text() == f"{SECRETS['akId']}:{SECRETS['akSecret']}\n"
        cmdlines = [_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()]
        mount_argv = [c for c in cmdlines if "fake_mount.py" in c]
        assert mount_argv and f"passwd_file={passwd}" in mount_argv[0]
        for value in SECRETS.values():
            assert not any(value in c for c in cmdlines)
    finally:
        thread.join()


def _swallow(call, request):
    try:
        call(request, timeout=30)
    except grpc.RpcError:
        pass


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---- real publishes: `pailfs mount` on SeaweedFS through the plugin -------------------

DATA = {
    "tf-train/train/data/train-images-idx3-ubyte.gz": b"images" * 1000,
    "tf-train/train/data/train-labels-idx1-ubyte.gz": b"labels" * 100,
    "tf-train/train/data/sub/notes.txt": b"hello from the bucket\n",
    "tf-train/training_logs/keep.txt": b"not part of the data set\n",
}


def proc_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f]


def daemons_for(target: Path) -> list[int]:
    """pids of `pailfs mount` processes serving target."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            cmd = _cmdline(p)
            if " mount " in cmd and str(target) in cmd and "pailfs" in cmd:
                pids.append(int(p.name))
    return pids


@pytest.fixture
def volume(s3_env, bucket, s3_endpoint, s3_credentials):
    from mounts import put_objects

    put_objects(f"s3://{bucket}", DATA)
    context = {"bucket": bucket, "url": s3_endpoint, "path": "/tf-train/train/data",
               "otherOpts": "kernel_cache,max_stat_cache_size=10000,umask=022"}
    secrets = {"akId": s3_credentials.access_key, "akSecret": s3_credentials.secret_key}
    return context, secrets


@pytest.fixture
def targets(tmp_path):
    """Pod volume paths as kubelet makes them; whatever a test leaves mounted is
    detached and its daemon killed, even when the test failed."""
    made: list[Path] = []

    def new(pod: str) -> Path:
        path = tmp_path / "pods" / pod / "volumes" / "kubernetes.io~csi" / "data" / "mount"
        path.parent.mkdir(parents=True, exist_ok=True)
        made.append(path)
        return path

    yield new
    from pailfs.csi import mounts

    for path in made:
        for _ in range(8):
            if not mounts.is_mount_point(str(path)):
                break
            try:
                mounts.unmount(str(path), lazy=True)
            except OSError:
                break
        for pid in daemons_for(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def publish(node, volume, target, volume_id="pv-data", **kw):
    context, secrets = volume
    req = publish_request(volume_id, target, context=dict(context, **kw.pop("context", {})), secrets=secrets, **kw)
    node.NodePublishVolume(req, timeout=90)


def unpublish(node, target, volume_id="pv-data"):
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
                             timeout=90)


def assert_reads_data_set(target: Path) -> None:
    assert sorted(os.listdir(target)) == ["sub", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert (target / "train-images-idx3-ubyte.gz").read_bytes() == DATA["tf-train/train/data/train-images-idx3-ubyte.gz"]
    assert (target / "sub" / "notes.txt").read_text() == "hello from the bucket\n"


def assert_read_only(target: Path) -> None:
    with pytest.raises(OSError) as info:
        (target / "new-file").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.unlink(target / "train-labels-idx1-ubyte.gz")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        with open(target / "sub" / "notes.txt", "r+b"):
            pass
    assert info.value.errno == errno.EROFS


def test_publish_reader_only_mounts_the_data_set_read_only(stubs, plugin, volume, targets):
    _, node = stubs
    target = targets("pod-a")
    publish(node, volume, target, mode=Mode.MULTI_NODE_READER_ONLY)
    assert str(target) in proc_mounts()
    assert_reads_data_set(target)
    assert_read_only(target)
    # the access key is in the private passwd file only: not in any process's argv, not in the log
    _, secrets = volume
    cmdlines = [_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert daemons_for(target)
    assert not any(secrets["akSecret"] in c for c in cmdlines)
    assert secrets["akSecret"] not in plugin.log.read_text()
    unpublish(node, target)
    assert str(target) not in proc_mounts()
    assert not target.exists()
    assert not any(plugin.state_dir.iterdir()), "credentials left on the node after unpublish"


def test_rw_in_other_opts_cannot_defeat_a_reader_only_mode(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-rw")
    publish(node, volume, target, mode=Mode.SINGLE_NODE_READER_ONLY,
            context={"otherOpts": "kernel_cache,rw,umask=022"}, flags=("rw",))
    assert_reads_data_set(target)
    assert_read_only(target)
    unpublish(node, target)


def test_readonly_flag_with_a_writer_mode_is_read_only(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-flag")
    publish(node, volume, target, mode=Mode.MULTI_NODE_MULTI_WRITER, readonly=True)
    assert_read_only(target)
    unpublish(node, target)


def test_writer_mode_mounts_read_write(stubs, volume, targets, bucket):
    from mounts import get_object

    _, node = stubs
    target = targets("pod-writer")
    publish(node, volume, target, mode=Mode.SINGLE_NODE_WRITER, context={"otherOpts": "max_stat_cache_size=0"})
    (target / "written-by-pod.txt").write_bytes(b"from the pod\n")
    unpublish(node, target)
    assert get_object(f"s3://{bucket}", "tf-train/train/data/written-by-pod.txt") == b"from the pod\n"


def test_publish_is_idempotent(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-idem")
    publish(node, volume, target)
    daemons = daemons_for(target)
    publish(node, volume, target)
    assert proc_mounts().count(str(target)) == 1
    assert daemons_for(target) == daemons, "a second publish started another mount"
    assert_reads_data_set(target)
    unpublish(node, target)
    unpublish(node, target)  # and so is unpublish
    assert str(target) not in proc_mounts()


def test_two_pods_on_one_node_share_a_volume(stubs, volume, targets):
    _, node = stubs
    a, b = targets("pod-1"), targets("pod-2")
    publish(node, volume, a)
    publish(node, volume, b)
    unpublish(node, a)
    assert_reads_data_set(b)  # the other pod's mount keeps working
    unpublish(node, b)
    mounted = proc_mounts()
    assert str(a) not in mounted and str(b) not in mounted


def test_dead_mount_is_replaced_on_publish(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-dead")
    publish(node, volume, target)
    for pid in daemons_for(target):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.statvfs(target)  # stat may be answered from the kernel's attribute cache
        except OSError as exc:
            # ENOTCONN, or ECONNABORTED when the daemon asked for FUSE_ABORT_ERROR
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            break
        time.sleep(0.1)
    else:
        pytest.fail("the mount did not go stale after its daemon was killed")
    publish(node, volume, target)
    assert proc_mounts().count(str(target)) == 1
    assert_reads_data_set(target)
    unpublish(node, target)
    assert str(target) not in proc_mounts()


def test_unpublish_of_a_dead_mount(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-dead2")
    publish(node, volume, target)
    for pid in daemons_for(target):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    unpublish(node, target)
    assert str(target) not in proc_mounts()
    assert not target.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_mount_survives_a_plugin_restart(plugin, volume, targets, sig):
    target = targets("pod-restart")
    with grpc.insecure_channel(plugin.endpoint) as ch:
        publish(csi_pb2_grpc.NodeStub(ch), volume, target)
    plugin.stop(sig)
    assert_reads_data_set(target)  # no plugin running: the pod still reads
    plugin.start()
    assert_reads_data_set(target)
    with grpc.insecure_channel(plugin.endpoint) as ch:
        node = csi_pb2_grpc.NodeStub(ch)
        publish(node, volume, target)  # kubelet may republish after a restart: still one mount
        assert proc_mounts().count(str(target)) == 1
        unpublish(node, target)
    assert str(target) not in proc_mounts()
    deadline = time.monotonic() + 10
    while daemons_for(target) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemons_for(target), "the mount's daemon outlived the unpublish"


def test_publish_with_wrong_credentials_fails_cleanly(stubs, volume, targets, plugin):
    _, node = stubs
    target = targets("pod-badkey")
    context, secrets = volume
    bad = {"akId": secrets["akId"], "akSecret": "wrong-" + secrets["akSecret"]}
    err = error_of(node.NodePublishVolume, publish_request("pv-bad", target, context=context, secrets=bad))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert bad["akSecret"] not in err.details() and bad["akSecret"] not in plugin.log.read_text()
    assert str(target) not in proc_mounts()
    assert not any(plugin.state_dir.iterdir())
