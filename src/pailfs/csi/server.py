"""`pailfs csi`: the CSI Identity and Node services over gRPC on a unix socket.

pailfs has no controller: volumes are pre-provisioned (a PV names the bucket),
so the plugin is node-only and advertises no plugin or node capabilities
(no STAGE_UNSTAGE_VOLUME: each publish is its own mount). RPCs it does not
implement answer UNIMPLEMENTED, from the generated base classes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

from pailfs.version import __version__
from pailfs.csi import DRIVER_NAME, csi_pb2, csi_pb2_grpc
from pailfs.csi.node import CsiError, NodeService
from pailfs.errors import BadOption

log = logging.getLogger(__name__)


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, node: NodeService):
        self.node = node

    def GetPluginInfo(self, request, context):
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context):
        return csi_pb2.GetPluginCapabilitiesResponse()

    def Probe(self, request, context):
        # What the liveness probe (the livenessprobe sidecar's /healthz) checks: the
        # answer itself proves the socket is served; health() reads the mount table
        # and writes the state directory. Not ready while mounts are being taken over.
        problem = self.node.health()
        resp = csi_pb2.ProbeResponse()
        if problem is not None and self.node.ready:
            log.warning("Probe: %s", problem)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
        resp.ready.value = problem is None
        return resp


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, node: NodeService):
        self.node = node

    def NodeGetInfo(self, request, context):
        return csi_pb2.NodeGetInfoResponse(node_id=self.node.node_id)

    def NodeGetCapabilities(self, request, context):
        # VOLUME_MOUNT_GROUP: kubelet hands the pod's fsGroup to NodePublishVolume
        # instead of chown'ing every file of the bucket.
        resp = csi_pb2.NodeGetCapabilitiesResponse()
        resp.capabilities.add().rpc.type = csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP
        return resp

    def NodePublishVolume(self, request, context):
        _call(context, "NodePublishVolume", request.volume_id, self.node.publish, request)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request, context):
        _call(context, "NodeUnpublishVolume", request.volume_id, self.node.unpublish, request)
        return csi_pb2.NodeUnpublishVolumeResponse()


def _call(context, method: str, volume_id: str, fn, request) -> None:
    try:
        fn(request)
    except CsiError as exc:
        log.warning("%s %s: %s %s", method, volume_id or "-", exc.code.name, exc.message)
        context.abort(exc.code, exc.message)
    except Exception:
        # The request holds secrets: log the failure, never the request.
        log.exception("%s %s failed unexpectedly", method, volume_id or "-")
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed unexpectedly; see the plugin log")


def socket_path(endpoint: str) -> str:
    """The file of a `unix:///path` (or `unix:/path`) endpoint."""
    if not endpoint.startswith("unix:"):
        raise BadOption(f"endpoint {endpoint!r} must be a unix socket, e.g. unix:///csi/csi.sock")
    path = endpoint[len("unix:"):]
    if path.startswith("//"):
        path = path[2:]
    if not path.startswith("/"):
        raise BadOption(f"endpoint {endpoint!r} must name an absolute socket path")
    return path


def build_server(endpoint: str, node: NodeService, workers: int = 8) -> grpc.Server:
    path = Path(socket_path(endpoint))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket() or path.exists():
        # left by a previous run, or served by the plugin this one replaces (an upgrade
        # with maxSurge): kubelet's next connection reaches the new socket
        path.unlink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csi"))
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(node), server)
    csi_pb2_grpc.add_NodeServicer_to_server(NodeServicer(node), server)
    server.add_insecure_port(f"unix://{path}")
    return server


def serve(endpoint: str, node: NodeService) -> None:
    """Serve until SIGTERM/SIGINT. Mounts made so far stay (they run in their own sessions)."""
    node.ready = False  # until the previous plugin's mounts are taken over (Probe: not ready)
    server = build_server(endpoint, node)
    server.start()
    threading.Thread(target=node.take_over_previous, name="csi-takeover", daemon=True).start()
    path = socket_path(endpoint)
    own_socket = _inode(path)
    log.warning("pailfs CSI plugin %s %s serving on %s as node %s", DRIVER_NAME, __version__, endpoint,
                node.node_id)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    node.close()
    if own_socket is not None and _inode(path) == own_socket:
        os.unlink(path)  # only our own: a successor may serve a new socket at this path
    log.warning("pailfs CSI plugin stopped; published volumes stay mounted")


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
