"""`pailfs server`: the embedded SeaweedFS leaves nothing behind outside its data dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mounts import pailfs


def _weed_files_in_tmp() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("seaweedfs-", "weed."))}


def test_server_start_and_stop_leave_nothing_in_tmp(tmp_path):
    data = tmp_path / "srv"
    before = _weed_files_in_tmp()
    started = time.time()
    pailfs("server", "start", "--data-dir", str(data), check=True)
    try:
        ports = json.loads((data / "server.json").read_text())["ports"]
        status = pailfs("server", "status", "--data-dir", str(data), check=True)
        assert "127.0.0.1" in status.stdout.decode()
    finally:
        stop = pailfs("server", "stop", "--data-dir", str(data))
    assert stop.returncode == 0, stop.stderr.decode()
    assert pailfs("server", "status", "--data-dir", str(data)).returncode == 3
    left = _weed_files_in_tmp() - before
    # only files of other servers started meanwhile (other tests) may appear, never ours
    ours = {f"seaweedfs-{kind}-grpc-{ports[f'{kind}_grpc']}.sock" for kind in ("master", "volume", "filer", "s3")}
    assert not left & ours
    assert not [n for n in left if n.startswith("weed.") and os.stat(f"/tmp/{n}").st_mtime >= started]
    assert (data / "weed.log").stat().st_size > 0  # weed's log went to the data dir instead


def test_a_killed_server_leaves_nothing_once_started_again(tmp_path):
    """kill -9 gives weed no chance to clean up; the next start removes its sockets."""
    import signal

    data = tmp_path / "srv"
    pailfs("server", "start", "--data-dir", str(data), check=True)
    try:
        old = json.loads((data / "server.json").read_text())
        os.killpg(old["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pailfs("server", "status", "--data-dir", str(data)).returncode != 3:
            assert time.monotonic() < deadline, "the killed server still shows as running"
            time.sleep(0.2)
        pailfs("server", "start", "--data-dir", str(data), check=True)
    finally:
        pailfs("server", "stop", "--data-dir", str(data))
    for kind in ("master", "volume", "filer", "s3"):
        assert not Path(f"/tmp/seaweedfs-{kind}-grpc-{old['ports'][f'{kind}_grpc']}.sock").exists()
