"""The CSI plugin as kubelet sees it, for tests: `pailfs csi` in a subprocess and
NodePublishVolume requests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc

from mounts import wait_for
from pailfs.csi import csi_pb2, csi_pb2_grpc

Mode = csi_pb2.VolumeCapability.AccessMode
SECRETS = {"akId": "AKIDcsiTest0001", "akSecret": "csi-Test-Secret-Value-9f8e7d"}


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

    def __init__(self, workdir: Path, node_id: str = "node-1", env: dict[str, str] | None = None):
        self.workdir = workdir
        self.env = env
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
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, \
                f"pailfs csi exited:\n{self.log.read_text()}"
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    # ready: the mounts of a previous plugin are taken over
                    return csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=2).ready.value
            except grpc.RpcError:
                return False

        wait_for(ready, "pailfs csi to come up", timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
