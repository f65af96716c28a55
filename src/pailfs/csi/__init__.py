"""CSI node plugin for pailfs (driver name `pailfs.csi.io`).

`csi.proto` holds the Identity and Node services of the CSI spec (v1.9.0 wire
format); `csi_pb2.py`/`csi_pb2_grpc.py` are generated from it by
`python -m pailfs.csi.regen` and committed. `node.py` is the publish logic,
`server.py` the gRPC server behind `pailfs csi`.
"""

# Light constants here, so `pailfs k8s ...` does not import grpc.
DRIVER_NAME = "pailfs.csi.io"
DEFAULT_STATE_DIR = "/run/pailfs-csi"
DEFAULT_MOUNT_TIMEOUT = 60.0
