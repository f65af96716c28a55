"""Regenerate csi_pb2.py and csi_pb2_grpc.py from csi.proto (a dev-time step).

    .venv/bin/python -m pailfs.csi.regen

Needs grpcio-tools (the dev extra). The generated files are committed so that
an installed pailfs needs only the grpcio and protobuf runtimes. The protobuf
runtime must be at least the version grpcio-tools generates for; after
regenerating, keep the `protobuf` pin in pyproject.toml in step.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc  # dev dependency only

    src = Path(__file__).resolve().parents[2]  # .../src
    well_known = str(resources.files("grpc_tools") / "_proto")
    # -I src makes the generated grpc module import `pailfs.csi.csi_pb2`.
    args = ["protoc", f"-I{src}", f"-I{well_known}", f"--python_out={src}", f"--grpc_python_out={src}",
            "pailfs/csi/csi.proto"]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
