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


# --- manifests are untrusted input (#14.11) ----------------------------------------------------
def _rewrite_manifest(url: str, step: int, change) -> None:
    """Someone with write access to the bucket edits a committed manifest."""
    from pailfs.store import open_store

    async def run() -> None:
        store = open_store(url)
        try:
            key = f"{step:010d}/pailfs-checkpoint.json"
            doc = json.loads(await store.get(key))
            change(doc)
            await store.put(key, json.dumps(doc).encode())
        finally:
            await store.close()

    asyncio.run(run())


def _one_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("pailfs: "), res.stderr
    return lines[0]


def test_a_manifest_claiming_a_petabyte_is_refused_before_anything_is_planned(url, s3_env, tmp_path):
    """verify/restore built ~10^8 ranges for a claimed 10^15 bytes and died of MemoryError
    after 24 s; the claim is checked against the object's real size first."""
    import time

    with Checkpointer(url) as ck:
        ck.save(1, {"model.bin": b"m" * 200, "sub/opt.bin": b"o" * 100})
    _rewrite_manifest(url, 1, lambda doc: doc["files"][0].update(size=10**15))
    for args in (["ckpt", "verify", url], ["ckpt", "restore", url, str(tmp_path / "r")]):
        started = time.monotonic()
        line = _one_line(pailfs(*args, env=s3_env))
        assert "model.bin is 200 bytes in the store, the manifest says 1000000000000000" in line
        assert time.monotonic() - started < 20
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, problem", [
    ("../outside.bin", "bad file name"),
    ("/etc/evil.bin", "bad file name"),
    ("sub/../../outside.bin", "bad file name"),
    ("ctl\x1b[2Jname", "bad file name"),
    ("nul\x00name", "bad file name"),
    ("model.bin/inner", "clashes with another file"),
])
def test_hostile_names_in_a_manifest_write_nothing(name, problem, url, s3_env, tmp_path):
    with Checkpointer(url) as ck:
        ck.save(1, {"model.bin": b"m" * 200, "other.bin": b"o" * 10})
    _rewrite_manifest(url, 1, lambda doc: doc["files"][1].update(name=name))
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "restore"
    for args in (["ckpt", "verify", url], ["ckpt", "restore", url, str(dest)], ["ckpt", "list", url]):
        res = pailfs(*args, env=s3_env)
        assert "Traceback" not in res.stderr and "\x1b" not in res.stderr + res.stdout
        if args[1] != "list":
            assert problem in _one_line(res)
    assert sorted(os.listdir(work)) == [] and sorted(os.listdir(tmp_path)) == ["work"]


@pytest.mark.parametrize("field, value", [("size", -1), ("size", "12"), ("size", 1.5), ("sha256", "xyz"),
                                          ("name", 7)])
def test_malformed_manifest_fields_are_one_line(field, value, url, s3_env, tmp_path):
    with Checkpointer(url) as ck:
        ck.save(1, {"model.bin": b"m" * 200})
    _rewrite_manifest(url, 1, lambda doc: doc["files"][0].update({field: value}))
    assert "unreadable checkpoint manifest" in _one_line(pailfs("ckpt", "verify", url, env=s3_env))
    assert not (tmp_path / "r").exists()


# --- restore is all or nothing (#14.12) ---------------------------------------------------------
def test_restore_that_does_not_fit_the_directory_writes_nothing(url, s3_env, tmp_path):
    """A file of the checkpoint is a directory in DEST: one file was replaced, the next
    left old, then a traceback. Now: refused before anything is written."""
    with Checkpointer(url) as ck:
        ck.save(1, {"a.bin": b"new a", "b.bin": b"new b", "c/d.bin": b"new d"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.bin").write_bytes(b"old a")
    (dest / "b.bin").mkdir()
    (dest / "b.bin" / "mine.txt").write_bytes(b"the user's")
    before = sorted((str(p.relative_to(dest)), p.is_dir() or p.read_bytes()) for p in dest.rglob("*"))
    line = _one_line(pailfs("ckpt", "restore", url, str(dest), env=s3_env))
    assert "b.bin is a directory" in line and "nothing was written" in line
    assert sorted((str(p.relative_to(dest)), p.is_dir() or p.read_bytes()) for p in dest.rglob("*")) == before

    # a symbolic link on the way is not written through either
    (dest / "b.bin" / "mine.txt").unlink()
    (dest / "b.bin").rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "c").symlink_to(outside)
    line = _one_line(pailfs("ckpt", "restore", url, str(dest), env=s3_env))
    assert "c is a symbolic link" in line
    assert os.listdir(outside) == [] and (dest / "a.bin").read_bytes() == b"old a"

    (dest / "c").unlink()
    res = pailfs("ckpt", "restore", url, str(dest), env=s3_env)
    assert res.returncode == 0, res.stderr
    assert [(dest / n).read_bytes() for n in ("a.bin", "b.bin", "c/d.bin")] == [b"new a", b"new b", b"new d"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".pailfs")]


def test_restore_rolls_back_when_a_move_fails(url, s3_env, tmp_path):
    """A move that fails half way (here: DEST changed after the check, a file now stands
    where the checkpoint needs a directory) puts back what was already replaced."""
    from pailfs.checkpoint.restore import _move_in

    staged = tmp_path / "staged"
    (staged / "x").mkdir(parents=True)
    (staged / "a.bin").write_bytes(b"new a")
    (staged / "x" / "b.bin").write_bytes(b"new b")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.bin").write_bytes(b"old a")
    (dest / "x").write_bytes(b"a file where the checkpoint needs a directory")  # the move of x/b.bin fails
    with pytest.raises(OSError):
        _move_in(staged, dest, ["a.bin", "x/b.bin"], tmp_path / "replaced")
    assert (dest / "a.bin").read_bytes() == b"old a"
    assert sorted(os.listdir(dest)) == ["a.bin", "x"]
