"""`pailfs ckpt list|latest|verify|restore|prune` as a user runs them: a subprocess
with the environment of the test server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from pailfs import Checkpointer
from conftest import make_bucket


@pytest.fixture(scope="module")
def cli_bucket(seaweed) -> str:
    return make_bucket(seaweed)  # one bucket (SeaweedFS collection) for the module


@pytest.fixture
def url(s3_env, cli_bucket) -> str:
    return f"s3://{cli_bucket}/{uuid.uuid4().hex[:10]}/job"


def pailfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pailfs", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_round_trip_list_latest_verify_restore_prune(url, s3_env, tmp_path):
    weights = {step: os.urandom(3000 + step) for step in (10, 20, 30)}
    with Checkpointer(url, max_to_keep=0) as ck:
        for step, data in weights.items():
            ck.save(step, {"model.bin": data, "opt/state.bin": b"s" * step}, metadata={"acc": step / 100})

    res = pailfs("ckpt", "list", url, env=s3_env)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if "MiB" in line or "KiB" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["10", "20", "30"]
    assert '"acc": 0.3' in res.stdout

    res = pailfs("ckpt", "list", url, "--json", env=s3_env)
    assert [(c["step"], c["files"]) for c in json.loads(res.stdout)] == [(10, 2), (20, 2), (30, 2)]

    res = pailfs("ckpt", "latest", url, env=s3_env)
    assert (res.returncode, res.stdout) == (0, "30\n")

    res = pailfs("ckpt", "verify", url, env=s3_env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("step 30: ok (2 files")

    dest = tmp_path / "restored"
    res = pailfs("ckpt", "restore", url, str(dest), "--step", "20", env=s3_env)
    assert res.returncode == 0, res.stderr
    assert "restored step 20: 2 files" in res.stdout
    assert (dest / "model.bin").read_bytes() == weights[20]
    assert (dest / "opt" / "state.bin").read_bytes() == b"s" * 20

    res = pailfs("ckpt", "prune", url, "--keep", "1", env=s3_env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("deleted 2 checkpoints (steps 10, 20)")
    res = pailfs("ckpt", "list", url, "--json", env=s3_env)
    assert [c["step"] for c in json.loads(res.stdout)] == [30]


def test_damaged_checkpoint_fails_verify_with_one_line(url, s3_env):
    with Checkpointer(url) as ck:
        ck.save(1, {"model.bin": b"m" * 1000})

    async def damage() -> None:  # someone overwrites one object in the bucket
        from pailfs.store import open_store

        store = open_store(url)
        try:
            await store.put("0000000001/model.bin", b"x" * 1000)
        finally:
            await store.close()

    asyncio.run(damage())
    res = pailfs("ckpt", "verify", url, "--all", env=s3_env)
    assert res.returncode == 1
    assert "step 1: DAMAGED: checkpoint step 1 is damaged: model.bin fails its sha256 check" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == "pailfs: 1 of 1 checkpoints are damaged"

    res = pailfs("ckpt", "verify", url, env=s3_env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pailfs: checkpoint step 1 is damaged: model.bin fails its sha256 check")
    assert "Traceback" not in res.stderr


def test_errors_are_one_line_and_nonzero(url, s3_env, tmp_path):
    res = pailfs("ckpt", "latest", url, env=s3_env)
    assert res.returncode == 1
    assert res.stderr.strip() == f"pailfs: no committed checkpoint under {url}"

    res = pailfs("ckpt", "restore", url, str(tmp_path / "d"), env=s3_env)
    assert res.returncode == 1
    assert res.stderr.strip() == f"pailfs: no committed checkpoint under {url}"
    assert not (tmp_path / "d").exists()

    res = pailfs("ckpt", "list", "s3://no-such-bucket-ckpt/x", env=s3_env)
    assert res.returncode == 1
    assert res.stderr.startswith("pailfs: ") and len(res.stderr.strip().splitlines()) == 1
    assert "no-such-bucket-ckpt" in res.stderr
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in res.stderr + res.stdout

    res = pailfs("ckpt", "list", "s3://Bad_Bucket/x", env=s3_env)
    assert res.returncode == 1 and res.stderr.startswith("pailfs: malformed URL")

    res = pailfs("ckpt", "list", url, env=s3_env)
    assert (res.returncode, res.stdout.strip()) == (0, f"no committed checkpoints under {url}")


def test_ckpt_reads_a_local_directory_store(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    with Checkpointer(f"file://{root}", max_to_keep=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, {"w": bytes([step]) * 10})
    res = pailfs("ckpt", "list", f"file://{root}", "--json", env={})
    assert res.returncode == 0, res.stderr
    assert [c["step"] for c in json.loads(res.stdout)] == [2, 3]
    res = pailfs("ckpt", "restore", f"file://{root}", str(tmp_path / "out"), env={})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "w").read_bytes() == b"\x03" * 10
