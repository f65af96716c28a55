"""The CSI node plugin as kubelet sees it: a gRPC client on the unix socket of
`pailfs csi` (the csi-sanity node checks), then real publishes on SeaweedFS."""

from __future__ import annotations

import errno
import json
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
from pailfs.csi.node import CsiError, NodeService, plan_mount
from pailfs.csi.server import build_server

from csiplugin import SECRETS, Mode, Plugin, publish_request
from mounts import wait_for

LOCAL_PATH_OPTIONS = [o.name for o in config.OPTIONS if o.local_path]

pytestmark = pytest.mark.mount  # real publishes mount (root); the plugin runs as a subprocess


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


def test_node_capabilities_have_no_staging_and_take_the_fs_group(stubs):
    _, node = stubs
    caps = node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    types = {c.rpc.type for c in caps}
    assert csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in types
    assert csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP in types


def test_probe_fails_when_the_state_directory_cannot_be_written(stubs, plugin):
    identity, _ = stubs
    assert identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
    shutil.rmtree(plugin.state_dir, ignore_errors=True)
    plugin.state_dir.write_text("not a directory")
    try:
        err = error_of(identity.Probe, csi_pb2.ProbeRequest())
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "state directory" in err.details()
    finally:
        plugin.state_dir.unlink()
    assert identity.Probe(csi_pb2.ProbeRequest()).ready.value is True


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
import json, os, sys, time
action, args = sys.argv[1], sys.argv[2:]
ready = int(args[args.index("--ready-fd") + 1])
opts = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
passwd = [o.split("=", 1)[1] for o in opts if o.startswith("passwd_file=")][0]
if action == "record":
    with open(os.environ["FAKE_RECORD"], "w") as f:
        json.dump(args, f)
    os.write(ready, b"error: recorded")
    sys.exit(1)
if action == "leak":
    os.write(ready, ("error: cannot log in with " + open(passwd).read().strip()).encode())
    sys.exit(1)
if action == "silent":
    sys.exit(3)
time.sleep(float(action))
os.write(ready, b"ok")
"""


@pytest.fixture
def fake_node(workdir, monkeypatch):
    """An in-process server whose `pailfs mount` is a stand-in: `leak` reports the
    credentials it was given and fails; `record` saves its argv to FAKE_RECORD and
    fails; `silent` exits 3 without a word; a number sleeps that long, then claims
    success (without mounting)."""
    script = workdir / "fake_mount.py"
    script.write_text(FAKE_MOUNT)
    monkeypatch.setenv("FAKE_RECORD", str(workdir / "argv.json"))

    def start(action: str, timeout: float = 30):
        node = NodeService("node-1", state_dir=workdir / "state", mount_timeout=timeout,
                           mount_command=[sys.executable, str(script), action])
        server = build_server(f"unix://{workdir}/fake.sock", node)
        server.start()
        channel = grpc.insecure_channel(f"unix://{workdir}/fake.sock")
        opened.append((server, channel, node))
        return csi_pb2_grpc.NodeStub(channel), node

    opened: list = []
    yield start
    for server, channel, node in opened:
        channel.close()
        server.stop(0)
        node.close()


def publications_left(state_dir: Path) -> list[Path]:
    """Credential files and publication records in the plugin's state directory
    (the `control` directory of the mounts' handover sockets stays)."""
    return [p for p in state_dir.iterdir() if p.name != "control"] if state_dir.exists() else []


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def fake_mounts_running(target: Path | None = None) -> list[str]:
    return [c for c in (_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())
            if "fake_mount.py" in c and (target is None or f" {target} " in c)]


def _publish_in_thread(node, req, results: list) -> threading.Thread:
    def run():
        try:
            node.NodePublishVolume(req, timeout=30)
            results.append("ok")
        except grpc.RpcError as exc:
            results.append(exc.code())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_busy_target_is_aborted_but_other_targets_of_the_volume_proceed(fake_node, tmp_path):
    """The lock is per target: pods starting on one volume publish in parallel."""
    node, _ = fake_node("2")
    results: list = []
    first = _publish_in_thread(node, publish_request("vol-busy", tmp_path / "a"), results)
    wait_for(lambda: fake_mounts_running(tmp_path / "a"), what="the first mount to start")
    err = error_of(node.NodePublishVolume, publish_request("vol-busy", tmp_path / "a"))
    assert err.code() == grpc.StatusCode.ABORTED
    err = error_of(node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-busy", target_path=str(tmp_path / "a")))
    assert err.code() == grpc.StatusCode.ABORTED
    # the same volume at another target runs at the same time
    second = _publish_in_thread(node, publish_request("vol-busy", tmp_path / "b"), results)
    wait_for(lambda: fake_mounts_running(tmp_path / "b"), what="the second mount to start")
    assert fake_mounts_running(tmp_path / "a"), "the publishes did not overlap"
    first.join()
    second.join()
    # the stand-in claims success without mounting: the plugin notices, for both
    assert results == [grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL]


def test_failed_mount_message_hides_secrets_and_cleans_up(fake_node, tmp_path, workdir):
    node, _ = fake_node("leak")
    err = error_of(node.NodePublishVolume, publish_request("vol-leak", tmp_path / "t"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "cannot log in with ***:***" in err.details()
    for value in SECRETS.values():
        assert value not in err.details()
    assert not publications_left(workdir / "state"), "credential directory left behind"
    assert not (tmp_path / "t").exists(), "the target publish created was left behind"


def test_mount_that_exits_silently_is_reported(fake_node, tmp_path):
    node, _ = fake_node("silent")
    (tmp_path / "t").mkdir()
    err = error_of(node.NodePublishVolume, publish_request("vol-silent", tmp_path / "t"))
    assert err.code() == grpc.StatusCode.INTERNAL and "status 3" in err.details()
    assert (tmp_path / "t").is_dir(), "publish removed a target it had not created"


def test_mount_that_hangs_is_killed_and_reported(fake_node, tmp_path, workdir):
    node, _ = fake_node("600", timeout=1)
    started = time.monotonic()
    err = error_of(node.NodePublishVolume, publish_request("vol-slow", tmp_path / "t"))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 15
    assert not publications_left(workdir / "state")
    assert not fake_mounts_running(), "the hung mount process was not killed"


def test_credentials_file_is_private_and_not_in_argv(fake_node, tmp_path, workdir):
    node, _ = fake_node("3")
    results: list = []
    thread = _publish_in_thread(node, publish_request("vol-p", tmp_path / "t"), results)
    try:
        (mount_argv,) = wait_for(fake_mounts_running, what="the mount to start")
        (passwd,) = (workdir / "state").glob("*/passwd")
        assert passwd.stat().st_mode & 0o777 == 0o600
        assert passwd.parent.stat().st_mode & 0o777 == 0o700
        assert (workdir / "state").stat().st_mode & 0o777 == 0o700
        assert passwd.read_text() == f"{SECRETS['akId']}:{SECRETS['akSecret']}\n"
        assert f" -o passwd_file={passwd} " in mount_argv + " "
        cmdlines = [_cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()]
        for value in SECRETS.values():
            assert not any(value in c for c in cmdlines)
    finally:
        thread.join()


def test_mount_options_are_one_argument_each(fake_node, tmp_path, workdir):
    node, _ = fake_node("record")
    ctx = {"bucket": "bk1", "url": "10.0.0.5:8333", "path": "/a/b",
           "otherOpts": "-o max_stat_cache_size=0 -o umask=022,kernel_cache"}
    error_of(node.NodePublishVolume, publish_request("vol-r", tmp_path / "t", context=ctx, flags=("nonempty",)))
    args = json.loads((workdir / "argv.json").read_text())
    assert args[:3] == ["bk1:/a/b", str(tmp_path / "t"), "-f"]
    opts = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert opts[0] == "allow_other" and opts[-2] == "ro"
    assert {"max_stat_cache_size=0", "umask=022", "kernel_cache", "nonempty", "url=https://10.0.0.5:8333"} <= set(opts)
    assert not any("," in o for o in opts)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1,use_cache=/some/dir", "http://127.0.0.1:1,logfile=/etc/x",
                                 "http://127.0.0.1:1 -o debug", "http://127.0.0.1:1/path?x=1",
                                 "file:///etc", "http://user:s3cret@127.0.0.1:1"])
def test_url_that_is_not_an_endpoint_is_invalid_before_anything_runs(fake_node, tmp_path, workdir, url):
    """#14 item 8: url text used to be pasted into the -o string (options smuggled in)."""
    node, _ = fake_node("record")
    ctx = {"bucket": "bk1", "url": url}
    err = error_of(node.NodePublishVolume, publish_request("vol-u", tmp_path / "t", context=ctx))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "url" in err.details()
    assert "s3cret" not in err.details()
    assert not (workdir / "argv.json").exists(), "a mount was started"
    assert not (tmp_path / "t").exists()


# ---- unpublish removes only what publish created (#14 item 5) ----------------------

def test_unpublish_leaves_a_regular_file_target(stubs, tmp_path):
    target = tmp_path / "t"
    target.write_bytes(b"someone's data\n")
    _, node = stubs
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=str(target)))
    assert target.read_bytes() == b"someone's data\n"


def test_unpublish_leaves_a_directory_with_data(stubs, tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    _, node = stubs
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=str(target)))
    assert (target / "keep.txt").read_text() == "mine"


def test_unpublish_leaves_a_mount_pailfs_did_not_make(stubs, tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pcsi-test", str(target)], check=True)
    try:
        (target / "inside").write_text("tmpfs data")
        _, node = stubs
        err = error_of(node.NodeUnpublishVolume,
                       csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=str(target)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "tmpfs" in err.details()
        assert str(target) in proc_mounts()
        assert (target / "inside").read_text() == "tmpfs data"
        # and a publish there is refused as well
        err = error_of(node.NodePublishVolume, publish_request("vol-1", target))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        subprocess.run(["umount", str(target)], check=True)


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
    assert not publications_left(plugin.state_dir), "credentials left on the node after unpublish"


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
    def stale() -> bool:
        try:
            os.statvfs(target)  # stat may be answered from the kernel's attribute cache
        except OSError as exc:
            # ENOTCONN, or ECONNABORTED when the daemon asked for FUSE_ABORT_ERROR
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            return True
        return False

    wait_for(stale, "the mount to go stale after its daemon was killed", timeout=10)
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
    # the daemons are gone (reaped): the mount is dead
    wait_for(lambda: not daemons_for(target), "the killed daemons to be reaped", timeout=10)
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
    wait_for(lambda: not daemons_for(target), "the mount's daemon to end after the unpublish", timeout=10)


def test_publish_with_wrong_credentials_fails_cleanly(stubs, volume, targets, plugin):
    _, node = stubs
    target = targets("pod-badkey")
    context, secrets = volume
    bad = {"akId": secrets["akId"], "akSecret": "wrong-" + secrets["akSecret"]}
    err = error_of(node.NodePublishVolume, publish_request("pv-bad", target, context=context, secrets=bad))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert bad["akSecret"] not in err.details() and bad["akSecret"] not in plugin.log.read_text()
    assert str(target) not in proc_mounts()
    assert not publications_left(plugin.state_dir)


def publish_error(node, volume, target, volume_id="pv-data", **kw) -> grpc.RpcError:
    context, secrets = volume
    req = publish_request(volume_id, target, context=dict(context, **kw.pop("context", {})), secrets=secrets, **kw)
    return error_of(node.NodePublishVolume, req)


# ---- a busy target (#14 item 9) ---------------------------------------------------------

def test_publish_at_a_busy_target_with_other_settings_is_already_exists(stubs, volume, targets):
    _, node = stubs
    target = targets("pod-busy")
    rw = dict(mode=Mode.SINGLE_NODE_WRITER, context={"otherOpts": "max_stat_cache_size=0"})
    publish(node, volume, target, volume_id="pv-rw", **rw)
    attempts = [
        ("pv-other", dict(readonly=True)),                         # another volume, read-only
        ("pv-other", dict(rw)),                                    # another volume, same settings
        ("pv-rw", dict(rw, readonly=True)),                        # the same volume, read-only now
        ("pv-rw", dict(mode=Mode.MULTI_NODE_READER_ONLY)),         # the same volume, a reader mode
    ]
    for volume_id, kw in attempts:
        err = publish_error(node, volume, target, volume_id=volume_id, **kw)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, (volume_id, kw)
    # the first publication is untouched: still the same writable mount
    assert proc_mounts().count(str(target)) == 1
    (target / "still-writable.txt").write_bytes(b"yes\n")
    publish(node, volume, target, volume_id="pv-rw", **rw)  # the same publication again: OK
    err = error_of(node.NodeUnpublishVolume,
                   csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-other", target_path=str(target)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and str(target) in proc_mounts()
    unpublish(node, target, volume_id="pv-rw")
    assert str(target) not in proc_mounts()


# ---- ACK's OSS PVs ------------------------------------------------------------------------

ACK_SEED = """
apiVersion: v1
kind: Secret
metadata:
  name: oss-secret
  namespace: default
stringData:
  akId: <yourAccessKeyID>
  akSecret: <yourAccessKeySecret>
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-oss
  labels:
    alicloud-pvname: pv-oss
spec:
  capacity:
    storage: 5Gi
  accessModes:
    - ReadWriteMany
  persistentVolumeReclaimPolicy: Retain
  csi:
    driver: ossplugin.csi.alibabacloud.com
    volumeHandle: pv-oss
    nodePublishSecretRef:
      name: oss-secret
      namespace: default
    volumeAttributes:
      bucket: "oss"
      url: "oss-cn-hangzhou.aliyuncs.com"
      otherOpts: "-o max_stat_cache_size=0 -o allow_other"
      path: "/"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: pvc-oss
spec:
  accessModes:
    - ReadWriteMany
  resources:
    requests:
      storage: 5Gi
  selector:
    matchLabels:
      alicloud-pvname: pv-oss
"""

K8S_TO_CSI_MODE = {"ReadWriteOnce": Mode.SINGLE_NODE_WRITER, "ReadOnlyMany": Mode.MULTI_NODE_READER_ONLY,
                   "ReadWriteMany": Mode.MULTI_NODE_MULTI_WRITER}


def kubelet_request(pv: dict, secret: dict, target: Path, pod: str = "train-0") -> csi_pb2.NodePublishVolumeRequest:
    """NodePublishVolume as kubelet builds it for a pod using this PV (podInfoOnMount on)."""
    csi = pv["spec"]["csi"]
    context = dict(csi["volumeAttributes"])
    context.update({"csi.storage.k8s.io/pod.name": pod, "csi.storage.k8s.io/pod.namespace": "default",
                    "csi.storage.k8s.io/ephemeral": "false"})
    req = csi_pb2.NodePublishVolumeRequest(volume_id=csi["volumeHandle"], target_path=str(target),
                                           readonly=csi.get("readOnly", False), volume_context=context,
                                           secrets=secret["stringData"])
    req.volume_capability.mount.fs_type = csi.get("fsType", "")
    req.volume_capability.mount.mount_flags.extend(pv["spec"].get("mountOptions", []))
    req.volume_capability.access_mode.mode = K8S_TO_CSI_MODE[pv["spec"]["accessModes"][0]]
    return req


def test_ack_seed_pv_with_the_driver_renamed_publishes(stubs, plugin, targets, bucket, s3_env, s3_credentials,
                                                       seaweed):
    import kubernetes_validate
    import yaml
    from mounts import get_object, put_objects

    text = ACK_SEED.replace("ossplugin.csi.alibabacloud.com", DRIVER_NAME)  # the one change
    secret, pv, pvc = yaml.safe_load_all(text)
    for doc in (secret, pv, pvc):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    # The site's own values: this test's server (plain http: without a scheme an endpoint
    # is https, which test_vhost.py publishes an ACK PV over), bucket and key.
    port = seaweed.state().s3_port
    pv["spec"]["csi"]["volumeAttributes"].update(bucket=bucket, url=f"http://127.0.0.1:{port}")
    secret["stringData"] = {"akId": s3_credentials.access_key, "akSecret": s3_credentials.secret_key}
    put_objects(f"s3://{bucket}", {"data/a.txt": b"ack data\n"})

    _, node = stubs
    target = targets("pod-ack")
    node.NodePublishVolume(kubelet_request(pv, secret, target), timeout=90)
    assert (target / "data" / "a.txt").read_bytes() == b"ack data\n"
    (target / "data" / "b.txt").write_bytes(b"written through the ACK PV\n")  # ReadWriteMany: rw
    unpublish(node, target, volume_id="pv-oss")
    assert get_object(f"s3://{bucket}", "data/b.txt") == b"written through the ACK PV\n"
    assert s3_credentials.secret_key not in plugin.log.read_text()


def _ack_plan(context: dict[str, str], mode=Mode.MULTI_NODE_MULTI_WRITER, flags=()):
    base = {"bucket": "oss-bucket", "url": "oss-cn-hangzhou.aliyuncs.com"}
    return plan_mount(publish_request("v", "/t", mode=mode, context={**base, **context}, flags=flags))


@pytest.mark.parametrize("context, token", [
    ({"otherOpts": "-o max_stat_cache_size=0 -o allow_other"}, "max_stat_cache_size=0"),
    ({"otherOpts": "-omax_stat_cache_size=0,umask=022"}, "umask=022"),
    ({"otheropts": "max_stat_cache_size=0, umask=022"}, "umask=022"),
    ({"OtherOpts": "-o uid=1000 -o gid=1000"}, "gid=1000"),
    ({"Region": "cn-hangzhou"}, "region=cn-hangzhou"),
    ({"fuseType": "ossfs2"}, "url=https://oss-cn-hangzhou.aliyuncs.com"),
    ({"fuseType": "OSSFS"}, "url=https://oss-cn-hangzhou.aliyuncs.com"),
    ({"url": "oss-cn-hangzhou-internal.aliyuncs.com"}, "url=https://oss-cn-hangzhou-internal.aliyuncs.com"),
    ({"url": "http://10.0.0.5:8333"}, "url=http://10.0.0.5:8333"),
    ({"url": "HTTPS://oss-cn-hangzhou.aliyuncs.com/"}, "url=https://oss-cn-hangzhou.aliyuncs.com"),
    ({"sigVersion": "v4"}, "url=https://oss-cn-hangzhou.aliyuncs.com"),
])
def test_ack_attributes_are_understood(context, token):
    assert token in _ack_plan(context).tokens


@pytest.mark.parametrize("context, warning", [
    ({"useSharedPath": "true"}, "useSharedPath"),
    ({"volumeAs": "sharepath"}, "volumeAs"),
    ({"sigVersion": "v1"}, "SigV4"),
    ({"otherOpts": "-o dbglevel=info -o allow_other"}, "dbglevel"),
])
def test_ack_attributes_without_meaning_for_pailfs_are_ignored_with_a_warning(context, warning):
    assert any(warning in w for w in _ack_plan(context).warnings)


def test_ack_readonly_attribute_forces_ro():
    plan = _ack_plan({"readOnly": "true", "otherOpts": "-o rw"})
    assert plan.read_only and plan.tokens[-1] == "ro" and "rw" not in plan.tokens


@pytest.mark.parametrize("context, words", [
    ({"authType": "sts"}, "authType"),
    ({"otherOpts": "-o ram_role=auto"}, "ram_role"),
    ({"otherOpts": "credential_process=/bin/sh"}, "credential_process"),
    ({"authType": "rrsa", "roleName": "r"}, "not supported"),
    ({"akId": "LTAIabc", "akSecret": "sk"}, "secret"),
    ({"encrypted": "kms"}, "encryption"),
    ({"fuseType": "jindofs"}, "fuseType"),
    ({"sigVersion": "v9"}, "sigVersion"),
    ({"readOnly": "maybe"}, "readOnly"),
    ({"otherOpts": "-o allow_other umask=022"}, "-o"),
    ({"otherOpts": "-o allow_other -o"}, "-o"),
    ({"otherOpts": "-o use_cache=/var/lib"}, "use_cache"),
    ({"otherOpts": "-o debug"}, "debug"),
    ({"bucket": "Oss_Bucket"}, "bucket"),
    ({"url": "oss-bucket.oss-cn-hangzhou.aliyuncs.com"}, "bucket"),
    ({"URL": "oss-cn-beijing.aliyuncs.com"}, "same attribute"),
    ({"Region": "cn hangzhou"}, "region"),
])
def test_bad_ack_attributes_are_invalid(context, words):
    with pytest.raises(CsiError) as info:
        _ack_plan(context)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.message
    assert "LTAIabc" not in info.value.message


def test_ack_warnings_reach_the_plugin_log(fake_node, tmp_path, workdir, caplog):
    node, _ = fake_node("record")
    ctx = {"bucket": "bk1", "url": "10.0.0.5:8333", "useSharedPath": "true"}
    error_of(node.NodePublishVolume, publish_request("vol-w", tmp_path / "t", context=ctx))
    assert any("vol-w" in r.getMessage() and "useSharedPath" in r.getMessage() for r in caplog.records)


# ---- fsGroup (VOLUME_MOUNT_GROUP) ------------------------------------------------------------

NOBODY = 65534
FS_GROUP = 4242


@pytest.fixture
def public_targets(workdir):
    """Targets a non-root user may reach (tmp_path is private to root)."""
    base = workdir / "kubelet"
    base.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)

    def new(pod: str) -> Path:
        made = base / pod / "mount"
        made.parent.mkdir(mode=0o755)
        os.chmod(made.parent, 0o755)
        targets_cleanup.append(made)
        return made

    targets_cleanup: list[Path] = []
    yield new
    from pailfs.csi import mounts as csi_mounts

    for path in targets_cleanup:
        while csi_mounts.is_mount_point(str(path)):
            csi_mounts.unmount(str(path), lazy=True)


def as_pod_user(*argv: str, groups: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=list(groups),
                          capture_output=True, timeout=60)


def publish_with_group(node, volume, target, group: int | None, **kw):
    context, secrets = volume
    req = publish_request("pv-group", target, context=dict(context, otherOpts="kernel_cache"), secrets=secrets, **kw)
    if group is not None:
        req.volume_capability.mount.volume_mount_group = str(group)
    node.NodePublishVolume(req, timeout=90)


def test_fs_group_lets_a_non_root_reader_in(stubs, volume, public_targets):
    _, node = stubs
    with_group, without = public_targets("pod-fsgroup"), public_targets("pod-nogroup")
    publish_with_group(node, volume, with_group, FS_GROUP)
    publish_with_group(node, volume, without, None)
    notes = "sub/notes.txt"
    reader = as_pod_user("cat", str(with_group / notes), groups=(FS_GROUP,))
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout == b"hello from the bucket\n"
    listing = as_pod_user("ls", str(with_group), groups=(FS_GROUP,))
    assert listing.returncode == 0 and b"train-images-idx3-ubyte.gz" in listing.stdout
    st = os.stat(with_group / notes)
    assert st.st_gid == FS_GROUP and st.st_mode & 0o040
    # the same user outside the group, and a volume published without an fsGroup: no access
    assert b"Permission denied" in as_pod_user("cat", str(with_group / notes)).stderr
    assert b"Permission denied" in as_pod_user("cat", str(without / notes), groups=(FS_GROUP,)).stderr
    unpublish(node, with_group, volume_id="pv-group")
    unpublish(node, without, volume_id="pv-group")


def test_fs_group_lets_a_non_root_writer_write(stubs, volume, public_targets, bucket):
    from mounts import get_object

    _, node = stubs
    target = public_targets("pod-fsgroup-rw")
    publish_with_group(node, volume, target, FS_GROUP, mode=Mode.SINGLE_NODE_WRITER)
    writer = as_pod_user("sh", "-c", f"echo from nobody > {target}/sub/by-nobody.txt", groups=(FS_GROUP,))
    assert writer.returncode == 0, writer.stderr
    assert b"Permission denied" in as_pod_user("sh", "-c", f"echo x > {target}/sub/no.txt").stderr
    unpublish(node, target, volume_id="pv-group")
    assert get_object(f"s3://{bucket}", "tf-train/train/data/sub/by-nobody.txt") == b"from nobody\n"


def test_a_bad_fs_group_is_invalid(stubs, tmp_path):
    _, node = stubs
    req = publish_request("vol-1", tmp_path / "t")
    req.volume_capability.mount.volume_mount_group = "staff"
    err = error_of(node.NodePublishVolume, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "volume_mount_group" in err.details()


# ---- the mount daemons' log in the plugin's ---------------------------------------------------

def test_mount_logs_reach_the_plugin_log_with_the_volume_id(plugin, volume, targets, seaweed):
    from faultproxy import GET_OBJECT, FaultProxy

    context, secrets = volume
    target = targets("pod-logs")
    with FaultProxy(seaweed.state().s3_port) as proxy, grpc.insecure_channel(plugin.endpoint) as ch:
        node = csi_pb2_grpc.NodeStub(ch)
        publish(node, (dict(context, url=proxy.endpoint, otherOpts="retries=0"), secrets), target,
                volume_id="pv-logs")
        proxy.error(500, "InternalError", times=None, match=GET_OBJECT)
        with pytest.raises(OSError) as info:
            (target / "sub" / "notes.txt").read_bytes()
        assert info.value.errno == errno.EIO
        line = wait_for(lambda: [ln for ln in plugin.log.read_text().splitlines()
                                 if "volume=pv-logs" in ln and "READ" in ln], what="the daemon's log line")[0]
        assert "EIO" in line and ("InternalError" in line or "500" in line)
        proxy.passthrough()
        unpublish(node, target, volume_id="pv-logs")
    text = plugin.log.read_text()
    assert "volume=pv-logs" in text
    for value in secrets.values():
        assert value not in text


def test_daemon_log_is_rate_limited_and_scrubbed():
    import io
    import logging

    from pailfs.cli.daemon_log import TaggedHandler

    now = [0.0]
    out = io.StringIO()
    handler = TaggedHandler("volume=v1", secrets=["AKIDsecretish", "S3cr3tValue"], stream=out, rate=5, burst=10,
                            clock=lambda: now[0])
    logger = logging.getLogger("test.daemon_log")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(1000):
            logger.warning("read %d failed with key S3cr3tValue", i)
        assert len(out.getvalue().splitlines()) == 10
        now[0] = 2.0  # two seconds later: 10 more tokens, and a count of what was dropped
        logger.warning("after the flood")
        lines = out.getvalue().splitlines()
        assert lines[10] == "volume=v1: 990 log lines suppressed (more than 5/s)"
        assert lines[11].endswith("test.daemon_log: after the flood") and "volume=v1" in lines[11]
        assert all("volume=v1" in ln for ln in lines) and "S3cr3tValue" not in out.getvalue()
        assert "read 0 failed with key ***" in lines[0]
    finally:
        logger.removeHandler(handler)


# ---- the supervisor ---------------------------------------------------------------------------

def children_of(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, cmdline) of pid's children."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat_fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat_fields[1]) == pid:
            found.append((int(p.name), stat_fields[0], _cmdline(p)))
    return found


def server_pid(plugin) -> int:
    (pid,) = [c[0] for c in children_of(plugin.proc.pid) if "--serve-only" in c[2]]
    return pid


def test_supervisor_restarts_a_crashed_server_and_mounts_keep_reading(plugin, volume, targets):
    target = targets("pod-crash")
    with grpc.insecure_channel(plugin.endpoint) as ch:
        publish(csi_pb2_grpc.NodeStub(ch), volume, target)
    first = server_pid(plugin)
    os.kill(first, signal.SIGKILL)
    assert_reads_data_set(target)
    wait_for(lambda: [c for c in children_of(plugin.proc.pid) if "--serve-only" in c[2] and c[0] != first],
             what="a new gRPC server")
    with grpc.insecure_channel(plugin.endpoint) as ch:
        def answers() -> bool:
            try:
                csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=2)
                return True
            except grpc.RpcError:
                return False

        wait_for(answers, "the new gRPC server to answer", timeout=30)
        node = csi_pb2_grpc.NodeStub(ch)
        publish(node, volume, target)  # the restarted server knows the publication
        assert_reads_data_set(target)
        unpublish(node, target)
    assert "gRPC server exited" in plugin.log.read_text()
    # the daemon, adopted by the supervisor when its server died, is reaped: no zombie
    wait_for(lambda: not [c for c in children_of(plugin.proc.pid) if c[1] == "Z"], what="the zombie reaped")


def test_unpublish_leaves_no_zombie(plugin, volume, targets):
    target = targets("pod-zombie")
    with grpc.insecure_channel(plugin.endpoint) as ch:
        node = csi_pb2_grpc.NodeStub(ch)
        publish(node, volume, target)
        unpublish(node, target)
    for parent in (plugin.proc.pid, server_pid(plugin)):
        assert not [c for c in children_of(parent) if c[1] == "Z"]
        assert not [c for c in children_of(parent) if str(target) in c[2]], "the daemon outlived its unpublish"
