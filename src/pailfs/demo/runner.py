"""`pailfs demo`: upload the digits, then train the same job twice.

Run 1, "read-write": the whole bucket through a read-write mount without stat
cache; checkpoints are written synchronously into the mount, all kept.
Run 2, "read-write separation": only the data prefix through a read-only mount
with kernel_cache and a stat cache; checkpoints are the model's state dict, saved
torch-style with Checkpointer.save_state in the background with max_to_keep=1, and
the newest one is restored with load_state at the end.

Everything this module starts it stops again, on success, failure and Ctrl-C
(SIGTERM is turned into KeyboardInterrupt by the CLI): mounts are unmounted
(`pailfs umount`, then `umount -l`), the Checkpointer is closed, and an embedded
SeaweedFS started for the demo is stopped and its temporary data dir removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from pailfs.demo.data import FILES, make_digits, write_dataset
from pailfs.demo.training import SEED, Checkpoint, DirectorySink, RunResult, train
from pailfs.errors import MountError, PailfsError
from pailfs.procs import environ

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "tf-train"
DATA_PREFIX = "train/data/"
LOGS_PREFIX = "training_logs/"
DEFAULT_EPOCHS = 8  # 45 steps an epoch: 360 steps, checkpoints at 100, 200, 300
QUICK_EPOCHS = 5  # 225 steps: two checkpoints, enough to see max_to_keep=1 at work
PAILFS = [sys.executable, "-m", "pailfs"]


@dataclass(frozen=True)
class RunSpec:
    """One of the two training runs."""

    key: str
    title: str
    source: str  # `pailfs mount` source; {bucket} is filled in
    options: str  # `-o` of the mount
    data_subdir: str  # where the data set is inside the mount
    checkpoints: str  # how checkpoints are saved, for the report


READ_WRITE = RunSpec(
    "rw", "read-write", "{bucket}", "max_stat_cache_size=0", DATA_PREFIX.rstrip("/"),
    "synchronous writes into the mount (training_logs/), all kept")
SEPARATION = RunSpec(
    "ro", "read-write separation", "{bucket}:/" + DATA_PREFIX.rstrip("/"),
    "ro,kernel_cache,max_stat_cache_size=10000,umask=022", "",
    "Checkpointer(s3://{bucket}/training_logs, max_to_keep=1).save_state(step, model.state_dict()) "
    "in the background; load_state() at the end")
RUNS = (READ_WRITE, SEPARATION)


@dataclass
class CheckpointRow:
    """A committed checkpoint as Checkpointer.list() read it back from the bucket."""

    step: int
    files: list[tuple[str, int]]
    time: float


@dataclass
class RestoredCheckpoint:
    """The newest checkpoint of run 2, read back with load_state() into a new model."""

    step: int
    accuracy: float  # test accuracy of the restored model
    trained_accuracy: float | None  # what training reported at that step


@dataclass
class DemoResult:
    endpoint: str
    bucket: str
    epochs: int
    embedded: bool
    runs: dict[str, RunResult] = field(default_factory=dict)
    # keys (relative to the bucket) and sizes each run left under training_logs/
    objects_left: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    restored: RestoredCheckpoint | None = None
    wall_seconds: float = 0.0


# --- plumbing ---------------------------------------------------------------------
@contextlib.contextmanager
def _spinner(console: Console, text: str) -> Iterator[None]:
    # progress only on a terminal: a pipe (CI, tests) gets the plain lines alone
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        progress.add_task(text, total=None)
        yield


@contextlib.contextmanager
def object_store(endpoint: str | None, bucket: str, console: Console) -> Iterator[tuple[str, bool]]:
    """Yield (endpoint, embedded) with the environment pointing at the store.

    Without an endpoint an embedded SeaweedFS is started in a temporary data dir
    (with the bucket) and stopped again, whatever happens inside."""
    if endpoint:
        with environ({"PAILFS_ENDPOINT": endpoint}):
            yield endpoint, False
        return
    from pailfs.server import SeaweedServer

    data_dir = Path(tempfile.mkdtemp(prefix="pailfs-demo-seaweedfs-"))
    server = SeaweedServer(data_dir)
    try:
        # weed writes its glog files to $TMPDIR: keep them in the data dir removed below
        with _spinner(console, "starting the embedded SeaweedFS"), environ({"TMPDIR": str(data_dir)}):
            state = server.start(buckets=[bucket])
        console.print(f"Embedded SeaweedFS at {state.endpoint} (bucket {bucket})")
        with environ(server.env(state)):
            yield state.endpoint, True
    finally:
        try:
            # its data is thrown away: no need to wait out weed's graceful shutdown (~25 s)
            server.stop(timeout=2)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes ' ' as \040


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == target:
                return True
    return False


def unmount(mountpoint: Path) -> None:
    """`pailfs umount`; if that fails or leaves the mount, detach it lazily."""
    proc = subprocess.run([*PAILFS, "umount", str(mountpoint)], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0 and not is_mounted(mountpoint):
        return
    log.warning("pailfs umount %s failed (%s); detaching lazily", mountpoint,
                proc.stderr.strip() or f"exit {proc.returncode}")
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=60)
    if is_mounted(mountpoint):
        raise MountError(f"could not unmount {mountpoint}")


@contextlib.contextmanager
def mounted(source: str, mountpoint: Path, options: str, console: Console) -> Iterator[Path]:
    """`pailfs mount SOURCE MOUNTPOINT -o OPTIONS` for the duration of the block."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        with _spinner(console, f"mounting {source} on {mountpoint}"):
            proc = subprocess.run([*PAILFS, "mount", source, str(mountpoint), "-o", options],
                                  capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except BaseException:  # timeout or Ctrl-C while mounting: never leave a mount behind
        if is_mounted(mountpoint):
            unmount(mountpoint)
        raise
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise MountError(f"pailfs mount {source} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    console.print(f"Mounted {source} on {mountpoint} -o {options}")
    try:
        yield mountpoint
    finally:
        with _spinner(console, f"unmounting {mountpoint}"):
            unmount(mountpoint)
        console.print(f"Unmounted {mountpoint}")


class CheckpointerSink:
    """Checkpoints through the SDK, torch style: save_state() serializes the state dict
    in memory and returns; the upload runs in the background."""

    def __init__(self, checkpointer) -> None:
        self.checkpointer = checkpointer
        self.max_to_keep = checkpointer.max_to_keep
        self.futures: list = []

    def save(self, checkpoint: Checkpoint) -> None:
        self.futures.append(self.checkpointer.save_state(checkpoint.step, checkpoint.state_dict()))

    def finish(self) -> None:
        self.checkpointer.wait()
        for fut in self.futures:
            fut.result()  # a failed upload fails the run


# --- store work ---------------------------------------------------------------------
def _bucket_url(bucket: str) -> str:
    return f"s3://{bucket}"


async def _with_store(bucket: str, work):
    from pailfs.store import open_store

    store = open_store(_bucket_url(bucket))
    try:
        return await work(store)
    finally:
        await store.close()


def list_objects(bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under prefix, directory markers left out."""
    async def work(store):
        listing = await store.list(prefix)
        return [(o.key, o.size) for o in listing.objects if not o.key.endswith("/")]

    return asyncio.run(_with_store(bucket, work))


def prepare_bucket(bucket: str, dataset_dir: Path, console: Console) -> None:
    """Empty training_logs/ (so both runs start clean) and upload the four data files."""
    paths = {DATA_PREFIX + name: dataset_dir / name for name in FILES}
    total = sum(p.stat().st_size for p in paths.values())

    async def work(store):
        stale = [o.key for o in (await store.list(LOGS_PREFIX)).objects]
        if stale:
            console.print(f"Removing {len(stale)} objects left under {bucket}/{LOGS_PREFIX} by an earlier demo")
            await store.delete_many(stale)
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"uploading {len(paths)} files to {bucket}/{DATA_PREFIX}", total=total)
            await asyncio.gather(*(store.put_file(key, path, progress=lambda n: progress.advance(task, n))
                                   for key, path in paths.items()))

    asyncio.run(_with_store(bucket, work))
    console.print(f"Uploaded {len(paths)} files ({total:,} bytes) to s3://{bucket}/{DATA_PREFIX}")


# --- the two runs ---------------------------------------------------------------------
def _run_header(console: Console, number: int, spec: RunSpec, bucket: str) -> None:
    console.rule(f"Run {number}: {spec.title}")
    console.print(f"mount: pailfs mount {spec.source.format(bucket=bucket)} MNT -o {spec.options}")
    console.print(f"checkpoints: {spec.checkpoints.format(bucket=bucket)}")


def run_read_write(bucket: str, workdir: Path, epochs: int, console: Console) -> RunResult:
    spec = READ_WRITE
    _run_header(console, 1, spec, bucket)
    with mounted(spec.source.format(bucket=bucket), workdir / "mnt-rw", spec.options, console) as mnt:
        logs = mnt / LOGS_PREFIX.rstrip("/")
        logs.mkdir(exist_ok=True)  # the job creates its log dir once, before training
        result = train(mnt / spec.data_subdir, DirectorySink(logs), epochs, emit=console.print)
    return result


def restore_newest(ckpt, data_dir: Path, result: RunResult, console: Console) -> RestoredCheckpoint:
    """load_state() of the newest checkpoint into a new model, and its test accuracy."""
    from pailfs.demo.data import read_dataset
    from pailfs.demo.model import MLP, to_inputs

    model = MLP(seed=SEED + 1)  # other initial weights: only the restored ones count
    step = model.load_state_dict(ckpt.load_state())
    digits = read_dataset(data_dir)
    accuracy = model.accuracy(to_inputs(digits.test_images), digits.test_labels.astype(np.int64))
    trained = dict(result.accuracy).get(step)
    console.print(f"load_state(): step {step} restored from the bucket into a new model, test accuracy "
                  f"{accuracy:.4f}" + (f" (the model at step {step}: {trained:.4f})" if trained is not None else ""))
    return RestoredCheckpoint(step, accuracy, trained)


def run_separation(bucket: str, workdir: Path, epochs: int, console: Console
                   ) -> tuple[RunResult, list[CheckpointRow], RestoredCheckpoint]:
    from pailfs.checkpoint import Checkpointer

    spec = SEPARATION
    _run_header(console, 2, spec, bucket)
    with mounted(spec.source.format(bucket=bucket), workdir / "mnt-ro", spec.options, console) as mnt:
        ckpt = Checkpointer(f"{_bucket_url(bucket)}/{LOGS_PREFIX.rstrip('/')}", max_to_keep=1)
        try:
            result = train(mnt / spec.data_subdir, CheckpointerSink(ckpt), epochs, emit=console.print)
            # read back from the bucket: what a restore would find
            rows = [CheckpointRow(info.step, [(f.name, f.size) for f in info.files], info.time)
                    for info in ckpt.list()]
            restored = restore_newest(ckpt, mnt / spec.data_subdir, result, console)
        finally:
            try:
                ckpt.close(timeout=60)
            except PailfsError as exc:  # already failing or interrupted: report, go on cleaning up
                log.error("closing the Checkpointer: %s", exc)
    return result, rows, restored


def run_demo(*, endpoint: str | None = None, bucket: str = DEFAULT_BUCKET, epochs: int = DEFAULT_EPOCHS,
             console: Console | None = None) -> DemoResult:
    """Upload the data, run both trainings and collect what the report shows."""
    from pailfs.server import check_bucket_name
    from pailfs.store.endpoint import parse_endpoint

    if endpoint:  # bad input fails before anything is built or started
        parse_endpoint(endpoint)
    check_bucket_name(bucket)
    console = console or Console()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pailfs-demo-")))
        with _spinner(console, "building the digits data set (scikit-learn, 8x8 -> 28x28)"):
            digits = make_digits()
            write_dataset(workdir / "dataset", digits)
        console.print(f"Data set: {len(digits.train_labels):,} training and {len(digits.test_labels):,} "
                      "test digits as MNIST IDX .gz files")
        endpoint, embedded = stack.enter_context(object_store(endpoint, bucket, console))
        result = DemoResult(endpoint=endpoint, bucket=bucket, epochs=epochs, embedded=embedded)
        prepare_bucket(bucket, workdir / "dataset", console)

        result.runs[READ_WRITE.key] = run_read_write(bucket, workdir, epochs, console)
        after_rw = list_objects(bucket, LOGS_PREFIX)
        result.objects_left[READ_WRITE.key] = after_rw

        result.runs[SEPARATION.key], result.checkpoints, result.restored = run_separation(
            bucket, workdir, epochs, console)
        before = {key for key, _ in after_rw}
        result.objects_left[SEPARATION.key] = [(k, s) for k, s in list_objects(bucket, LOGS_PREFIX)
                                               if k not in before]
        if embedded:
            console.print("Stopping the embedded SeaweedFS")
    result.wall_seconds = time.perf_counter() - started
    return result
