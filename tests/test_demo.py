"""`pailfs demo`: the data set and IDX files, the model, the report, the background
checkpoints against the real SeaweedFS, and the whole demo as a user runs it
(real mounts, real Checkpointer, real server)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pailfs.demo import data
from pailfs.demo.model import MLP, to_inputs
from pailfs.demo.training import DirectorySink, RunResult, train

PAILFS = [sys.executable, "-m", "pailfs"]
DATALOAD = re.compile(r"^dataload cost time: ([0-9.]+) s", re.M)
ACCURACY = re.compile(r"^Accuracy at step (\d+): ([0-9.]+)$", re.M)
SAVED = re.compile(r"^Save checkpoint at step (\d+): ([0-9.]+) s blocked$", re.M)


@pytest.fixture(scope="module")
def digits() -> data.Digits:
    return data.make_digits()


@pytest.fixture(scope="module")
def dataset_dir(digits, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("digits")
    data.write_dataset(directory, digits)
    return directory


# --- data set and IDX -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 28, 28), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, shape):
    arr = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "x.gz"
    data.write_idx_gz(path, arr)
    back = data.read_idx_gz(path)
    assert back.dtype == np.uint8 and back.shape == arr.shape
    assert np.array_equal(back, arr)


def test_idx_headers_are_mnist(tmp_path, digits):
    sizes = data.write_dataset(tmp_path, digits)
    assert sorted(sizes) == sorted(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    assert (magic, n, rows, cols) == (2051, 1437, 28, 28)
    assert len(raw) == 16 + n * rows * cols
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert (int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:8], "big")) == (2049, 360)
    assert set(raw[8:]) == set(range(10))
    # byte-identical on every run (gzip mtime 0), so uploads are reproducible
    again = tmp_path / "again"
    data.write_dataset(again, data.make_digits())
    assert (again / data.TRAIN_IMAGES).read_bytes() == (tmp_path / data.TRAIN_IMAGES).read_bytes()


def test_idx_rejects_damaged_files():
    good = data.encode_idx(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(data.IdxError, match="magic"):
        data.decode_idx(b"\x01" + good[1:])
    with pytest.raises(data.IdxError, match="unsigned byte"):
        data.decode_idx(good[:2] + b"\x0d" + good[3:])
    with pytest.raises(data.IdxError, match="body"):
        data.decode_idx(good[:-1])
    with pytest.raises(data.IdxError, match="uint8"):
        data.encode_idx(np.zeros(3, dtype=np.int32))


def test_digits_look_like_mnist(digits):
    assert digits.train_images.shape == (1437, 28, 28) and digits.test_images.shape == (360, 28, 28)
    assert digits.train_images.dtype == np.uint8 and digits.train_images.max() == 255
    # MNIST frames the digit in the centre 20x20: the 4-pixel border is empty
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert digits.train_images[:, border].max() == 0
    assert np.bincount(digits.test_labels, minlength=10).min() >= 30  # stratified split


def test_bilinear_resize_keeps_constant_images():
    img = np.full((1, 8, 8), 7.0)
    assert np.allclose(data.bilinear_resize(img, 20), 7.0)


# --- model and training loop on a local directory ----------------------------------------
def test_training_reaches_accuracy_and_writes_checkpoints(dataset_dir, tmp_path):
    lines: list[str] = []
    logs = tmp_path / "training_logs"
    result = train(dataset_dir, DirectorySink(logs), epochs=5, emit=lines.append)
    text = "\n".join(lines)
    assert len(DATALOAD.findall(text)) == 5
    steps = [int(s) for s, _ in ACCURACY.findall(text)]
    assert steps[:3] == [10, 20, 30] and steps[-1] == result.steps == 5 * 45
    assert [int(s) for s, _ in SAVED.findall(text)] == [100, 200]
    assert result.final_accuracy > 0.8
    assert sorted(p.name for p in logs.iterdir()) == ["checkpoint", "model.ckpt-100.npz", "model.ckpt-200.npz"]
    assert (logs / "checkpoint").read_text() == (
        'model_checkpoint_path: "model.ckpt-200.npz"\n'
        'all_model_checkpoint_paths: "model.ckpt-100.npz"\n'
        'all_model_checkpoint_paths: "model.ckpt-200.npz"\n')
    # the saved weights are the model: restoring gives a working classifier
    model = MLP(seed=123)
    assert model.load_npz((logs / "model.ckpt-200.npz").read_bytes()) == 200
    digits = data.read_dataset(dataset_dir)
    assert model.accuracy(to_inputs(digits.test_images), digits.test_labels) > 0.8


def test_training_is_reproducible(dataset_dir, tmp_path):
    a = train(dataset_dir, DirectorySink(tmp_path / "a"), epochs=1, emit=lambda s: None)
    b = train(dataset_dir, DirectorySink(tmp_path / "b"), epochs=1, emit=lambda s: None)
    assert a.accuracy == b.accuracy


# --- background checkpoints through the real Checkpointer ------------------------------
def test_checkpointer_sink_keeps_one_committed_checkpoint(dataset_dir, bucket, s3_env):
    """Run 2's checkpoints, torch style: save_state(step, model.state_dict()) in the
    background, and load_state() gives back the model of the newest step."""
    from rich.console import Console

    from pailfs.checkpoint import Checkpointer
    from pailfs.demo.runner import CheckpointerSink, restore_newest

    ckpt = Checkpointer(f"s3://{bucket}/training_logs", max_to_keep=1)
    try:
        result = train(dataset_dir, CheckpointerSink(ckpt), epochs=7, emit=lambda s: None)
        infos = ckpt.list()
        assert [i.step for i in infos] == [300]
        assert [f.name for f in infos[0].files] == ["state.npz"]
        restored = restore_newest(ckpt, dataset_dir, result, Console(file=open(os.devnull, "w")))
    finally:
        ckpt.close()
    assert [s for s, _ in result.checkpoint_stalls] == [100, 200, 300]
    assert restored.step == 300 and restored.accuracy == dict(result.accuracy)[300] == restored.trained_accuracy
    assert restored.accuracy > 0.8


# --- report ---------------------------------------------------------------------------
def _fake_result():
    from pailfs.demo.runner import CheckpointRow, DemoResult, RestoredCheckpoint

    res = DemoResult(endpoint="http://127.0.0.1:1", bucket="tf-train", epochs=3, embedded=True)
    res.runs["rw"] = RunResult(dataload=[0.2, 0.1, 0.12], accuracy=[(10, 0.5), (135, 0.93)],
                               checkpoint_stalls=[(100, 0.05)], steps=135)
    res.runs["ro"] = RunResult(dataload=[0.15, 0.01, 0.012], accuracy=[(10, 0.5), (135, 0.93)],
                               checkpoint_stalls=[(100, 0.001)], final_wait=0.02, steps=135)
    res.objects_left = {"rw": [("training_logs/checkpoint", 60), ("training_logs/model.ckpt-100.npz", 408294)],
                        "ro": [("training_logs/0000000100/checkpoint", 60)]}
    res.checkpoints = [CheckpointRow(100, [("state.npz", 408294)], time.time())]
    res.restored = RestoredCheckpoint(100, 0.9, 0.9)
    return res


def test_report_prints_comparison_and_writes_chart(tmp_path):
    from rich.console import Console

    from pailfs.demo import report

    console = Console(record=True, width=160)
    chart = report.render(_fake_result(), tmp_path / "out", console)
    text = console.export_text()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dataload, later epochs (median)" in text
    assert "0.1100 s" in text and "0.0110 s" in text and "10.0x" in text  # medians of epochs 2..3
    assert "0.0210 s" in text  # stall of run 2 includes the final wait
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["speedup_later_epochs"] == pytest.approx(10.0)
    assert summary["checkpoints"][0]["step"] == 100
    assert "Restored with load_state(): step 100, test accuracy 0.9000" in text
    assert summary["restored"] == {"step": 100, "accuracy": 0.9, "trained_accuracy": 0.9}


# --- the demo as a user runs it ------------------------------------------------------------
def _pailfs_mounts_under(root: Path) -> list[str]:
    """pailfs mounts below root (other tests may have their own mounts elsewhere)."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            source, point, fstype = line.split()[:3]
            if "pailfs" in fstype + source and os.path.realpath(point).startswith(str(root.resolve())):
                found.append(line.strip())
    return found


def _run_demo(tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**env, "TMPDIR": str(tmp)}  # the demo's mountpoints and server dir land here
    return subprocess.run([*PAILFS, "demo", *args, "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=240)


def test_demo_quick_against_real_server(tmp_path, seaweed, bucket, s3_env):
    """Both runs through real mounts; run 2's checkpoints read back through the Checkpointer."""
    from pailfs.checkpoint import Checkpointer

    proc = _run_demo(tmp_path, {**os.environ}, "--quick", "--endpoint", s3_env["PAILFS_ENDPOINT"],
                     "--bucket", bucket)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    run1 = out.partition("Run 1: read-write")[2]
    run1, _, run2 = run1.partition("Run 2: read-write separation")
    run2, _, summary = run2.partition(" Summary ")
    for run in (run1, run2):
        assert len(DATALOAD.findall(run)) == 5
        accuracy = ACCURACY.findall(run)
        assert [int(s) for s, _ in accuracy[:3]] == [10, 20, 30]
        assert float(accuracy[-1][1]) > 0.8
        assert [int(s) for s, _ in SAVED.findall(run)] == [100, 200]
    assert "Later-epoch data loading:" in summary and "faster" in summary
    # torch style: the newest state dict comes back with load_state() into a new model
    restored = re.search(r"load_state\(\): step 200 restored from the bucket into a new model, test accuracy "
                         r"([0-9.]+) \(the model at step 200: ([0-9.]+)\)", run2)
    assert restored and restored.group(1) == restored.group(2), run2[-2000:]
    assert float(restored.group(1)) > 0.8
    assert (tmp_path / "out" / "dataload.png").read_bytes()[:4] == b"\x89PNG"

    # what the bucket holds, read back independently of the demo's output
    ckpt = Checkpointer(f"s3://{bucket}/training_logs", max_to_keep=None)
    try:
        infos = ckpt.list()
    finally:
        ckpt.close()
    assert [i.step for i in infos] == [200]
    assert [f.name for f in infos[0].files] == ["state.npz"]
    keys = sorted(_keys(f"s3://{bucket}/training_logs/"))
    # run 1 kept every checkpoint it wrote through the mount (and the mount keeps the
    # directory's metadata in .pailfs-dirmeta); run 2 only the latest
    assert [k for k in keys if not k.startswith("0")] == [".pailfs-dirmeta", "checkpoint", "model.ckpt-100.npz",
                                                          "model.ckpt-200.npz"]
    assert not [k for k in keys if k.startswith("0") and not k.startswith("0000000200/")]
    assert _pailfs_mounts_under(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # mountpoints and work dir removed


@pytest.mark.server  # the demo starts its own SeaweedFS
def test_demo_with_embedded_server_cleans_up(tmp_path):
    """`make demo`'s path: the demo starts SeaweedFS itself and stops it again."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAILFS_ENDPOINT", "URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    proc = _run_demo(tmp_path, env, "--epochs", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Embedded SeaweedFS at http://127.0.0.1:" in proc.stdout
    assert len(DATALOAD.findall(proc.stdout)) == 6
    assert "Committed checkpoints" in proc.stdout
    assert _pailfs_mounts_under(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # server data dir removed...
    weeds = subprocess.run(["pgrep", "-af", "weed server"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in weeds  # ...and the server stopped


def test_demo_interrupted_in_run_2_cleans_up(tmp_path, seaweed, bucket, s3_env):
    """SIGTERM while a background checkpoint may be in flight: the demo still unmounts,
    closes the Checkpointer and exits 130 with one line."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*PAILFS, "demo", "--quick", "--endpoint", s3_env["PAILFS_ENDPOINT"],
                             "--bucket", bucket, "--out", str(tmp_path / "out")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen_run2 = False
        for line in proc.stdout:
            seen_run2 = seen_run2 or "Run 2: read-write separation" in line
            if seen_run2 and line.startswith("Save checkpoint at step 100"):
                proc.terminate()
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "pailfs: interrupted" in err, err
    assert "Unmounted" in rest
    assert _pailfs_mounts_under(tmp_path) == []
    assert list(tmp.iterdir()) == []


def _keys(url: str) -> list[str]:
    import asyncio

    from pailfs.store import open_store

    async def run() -> list[str]:
        store = open_store(url)
        try:
            # "" is the directory marker that mkdir through the rw mount left
            return [o.key for o in (await store.list("")).objects if o.key]
        finally:
            await store.close()

    return asyncio.run(run())
