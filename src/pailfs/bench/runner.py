"""`pailfs bench`: set up the server and data set, verify, time, report, clean up.

Order of work: start the embedded server (unless --endpoint), generate and
upload the data set, put the latency proxy in front (if asked), hash a sample
through every system, then run the cells. A cell is one system x one workload on
a fresh mount with dropped caches: the cold pass, then the warm pass on the same
mount. Repeats go round all systems before the next repeat (A B C A B C), so
slow drift of the machine hits every system alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import obstore
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from pailfs.bench import machine, report
from pailfs.errors import PailfsError
from pailfs.bench.dataset import MIB, Dataset, DatasetSpec, prepare, sha256_file
from pailfs.bench.proxy import LatencyProxy
from pailfs.bench.systems import (
    DEFAULT_SYSTEMS,
    BenchError,
    Env,
    Session,
    System,
    all_systems,
    cpu_seconds,
    fuse_mounts_under,
    pids_serving,
    unmount,
)
from pailfs.bench.target import Target
from pailfs.bench.workloads import (
    BY_NAME,
    DEFAULT_WORKLOADS,
    Budget,
    OverBudget,
    Workload,
)
from pailfs.procs import environ

log = logging.getLogger(__name__)

PHASES = ("cold", "warm")
RW_PREFIX = "bench-rw"


@dataclass
class BenchConfig:
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    quick: bool = False
    repeat: int | None = None  # None: 3, or 1 with --quick
    latency_ms: float = 0.0
    out: Path | None = None
    endpoint: str | None = None
    bucket: str = "pailfs-bench"
    soak_minutes: float | None = None
    files: int | None = None  # hidden: shrink the data set (tests)
    big_mib: int | None = None
    keep: bool = False
    budget: float | None = None  # seconds per pass; None: 45 (--quick: 10); 0: no limit

    @property
    def pass_budget(self) -> float | None:
        if self.budget is None:
            return 10.0 if self.quick else 45.0
        return self.budget or None

    def spec(self) -> DatasetSpec:
        files = self.files or (2_000 if self.quick else 10_000)
        big = self.big_mib or (64 if self.quick else 256)
        return DatasetSpec(files=files, big_bytes=big * MIB)

    @property
    def repeats(self) -> int:
        return self.repeat or (1 if self.quick else 3)


@dataclass
class Sample:
    system: str
    workload: str
    phase: str
    rep: int
    seconds: float
    ops: int
    fs_cpu: float  # CPU seconds of the serving processes (bench process for sdk/local)
    client_cpu: float  # CPU seconds of the bench process itself
    server_cpu: float | None  # SeaweedFS, when embedded
    rss_before: int | None = None
    rss_after: int | None = None
    fraction: float = 1.0  # < 1: stopped by the budget, seconds extrapolated
    store: dict | None = None  # the system's own store requests and bytes in the pass (pailfs)
    proxy_cpu: float | None = None  # CPU seconds of the latency proxy in the pass


@dataclass
class RunState:
    cfg: BenchConfig
    console: Console
    env: Env | None = None
    ds: Dataset | None = None
    server_pid: int | None = None
    caches_dropped: bool = True
    samples: list[Sample] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    soak: dict[str, Any] | None = None
    verified: dict[str, str] = field(default_factory=dict)
    over_budget: set[tuple[str, str]] = field(default_factory=set)  # (system, workload): not repeated
    proxy: LatencyProxy | None = None


# --- small helpers --------------------------------------------------------------
def drop_caches(state: RunState) -> None:
    """sync + drop the page, dentry and inode caches (root only; noted in results otherwise)."""
    t0 = time.perf_counter()
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        log.debug("caches dropped in %.3fs", time.perf_counter() - t0)
    except OSError as exc:
        if state.caches_dropped:
            log.warning("cannot drop the page cache (%s): cold runs are not cold", exc.strerror)
        state.caches_dropped = False


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def delete_prefix(target: Target, prefix: str) -> None:
    store = target.obstore()
    keys = [o["path"] for batch in obstore.list(store, prefix, chunk_size=1000) for o in batch]
    for i in range(0, len(keys), 1000):
        obstore.delete(store, keys[i:i + 1000])


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every mount is still unmounted."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def selected(cfg: BenchConfig) -> tuple[list[System], list[Workload], bool]:
    table = all_systems()
    unknown = [s for s in cfg.systems if s not in table]
    if unknown:
        raise BenchError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    bad = [w for w in cfg.workloads if w not in BY_NAME and w != "checkpoint"]
    if bad:
        raise BenchError(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(DEFAULT_WORKLOADS)}")
    systems = [table[s] for s in cfg.systems]
    for system in systems:  # a missing peer is an error, never a silent skip
        system.check()
    return systems, [BY_NAME[w] for w in cfg.workloads if w in BY_NAME], "checkpoint" in cfg.workloads


def applies(wl: Workload, system: System) -> bool:
    """Writes only on writable systems; the SDK has no open(); a variant runs its own workloads."""
    return ((wl.kind == "read" or system.writable)
            and (wl.on_sdk if system.kind == "sdk" else wl.on_fs) is not None
            and (system.only is None or wl.name in system.only))


# --- verification -----------------------------------------------------------------
def verify(state: RunState, system: System) -> None:
    """Hash a sample of the data set through the system; a rw system also writes one file."""
    env, ds = state.env, state.ds
    assert env is not None and ds is not None
    with system.open(env) as s:
        for key in ds.sample():
            if s.root is not None:
                got = sha256_file(s.root / key)
            else:
                got = hashlib.sha256(obstore.get(s.store, key).bytes()).hexdigest()
            if got != ds.sha256[key]:
                raise BenchError(f"{system.name} returned wrong bytes for {key}")
    if system.writable and system.kind == "mount":
        payload = os.urandom(3 * MIB + 17)
        key = f"{RW_PREFIX}/verify-{system.name}-{uuid.uuid4().hex[:6]}.bin"
        with system.open(env, rw=True) as s:
            assert s.root is not None
            (s.root / RW_PREFIX).mkdir(exist_ok=True)
            (s.root / key).write_bytes(payload)
        stored = bytes(obstore.get(env.target.obstore(), key).bytes())
        delete_prefix(env.target, key)
        if stored != payload:
            raise BenchError(f"{system.name}: a file written through the mount was stored wrong")
    state.verified[system.name] = "ok"


# --- cells ----------------------------------------------------------------------
def run_cell(state: RunState, system: System, wl: Workload, rep: int) -> None:
    env, ds = state.env, state.ds
    assert env is not None and ds is not None
    fn = wl.on_sdk if system.kind == "sdk" else wl.on_fs
    if fn is None:
        return
    rw = wl.kind == "write"
    prefix = f"{RW_PREFIX}/{system.name}-{uuid.uuid4().hex[:8]}"
    try:
        with system.open(env, rw=rw) as s:
            drop_caches(state)
            for phase in PHASES:
                try:
                    state.samples.append(timed(state, s, wl, fn, rep, phase, f"{prefix}/{phase}"))
                except (AssertionError, subprocess.TimeoutExpired) as exc:
                    # a system that fails a workload (wrong bytes, a command that fails or
                    # hangs) ends the run with one line saying which cell
                    raise PailfsError(f"{wl.name} on {system.name}, repeat {rep + 1}, {phase} pass: {exc}") from None
    finally:
        if rw:
            if system.kind == "local":
                shutil.rmtree(env.local_root / RW_PREFIX, ignore_errors=True)
            else:
                delete_prefix(env.target, prefix + "/")


def timed(state: RunState, s: Session, wl: Workload, fn, rep: int, phase: str, dest: str) -> Sample:
    ds = state.ds
    assert ds is not None
    rss_before = s.rss() if s.pids else None
    store0 = s.system.store_stats(s)
    proxy0 = state.proxy.cpu_seconds() if state.proxy is not None else None
    fs0, me0 = s.fs_cpu(), self_cpu()
    srv0 = cpu_seconds(state.server_pid) if state.server_pid else None
    t0 = time.perf_counter()
    fraction = 1.0
    try:
        ops = fn(s, ds, dest, Budget(state.cfg.pass_budget))
        seconds = time.perf_counter() - t0
    except OverBudget as over:
        elapsed = time.perf_counter() - t0
        fraction = max(over.done, 1) / over.total
        seconds, ops = elapsed / fraction, over.done
        state.over_budget.add((s.system.name, wl.name))
        log.info("%s %s %s: over budget after %d of %d; %.1fs extrapolated",
                 s.system.name, wl.name, phase, over.done, over.total, seconds)
    sample = Sample(system=s.system.name, workload=wl.name, phase=phase, rep=rep, seconds=seconds, ops=ops,
                    fraction=fraction,
                    fs_cpu=s.fs_cpu() - fs0, client_cpu=self_cpu() - me0,
                    server_cpu=(cpu_seconds(state.server_pid) - srv0) if srv0 is not None else None,
                    rss_before=rss_before, rss_after=s.rss() if s.pids else None,
                    store=_delta(store0, s.system.store_stats(s)),
                    proxy_cpu=state.proxy.cpu_seconds() - proxy0 if state.proxy is not None else None)
    log.info("%s %s %s rep %d: %.3fs", s.system.name, wl.name, phase, rep, seconds)
    return sample


def _delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0) for k, v in after.items()}


# --- checkpoint -----------------------------------------------------------------
def checkpointer_class() -> tuple[type | None, str]:
    try:
        from pailfs.checkpoint import Checkpointer
        return Checkpointer, ""
    except ImportError as exc:
        return None, f"not available: pailfs.Checkpointer is missing in this build ({exc})"


def checkpoint_cells(state: RunState, rep: int) -> None:
    """One async save through the Checkpointer and one synchronous upload of the same file."""
    env, ds = state.env, state.ds
    assert env is not None and ds is not None
    ck = state.checkpoint
    ck.setdefault("bytes", ds.spec.big_bytes)
    cls, why = checkpointer_class()
    if cls is None:
        ck["available"], ck["reason"] = False, why
        return
    ck["available"] = True
    src = env.scratch("ckpt-src")
    model = src / "model.bin"
    if not model.exists():
        os.link(env.local_root / ds.big_key, model)  # the same bytes, no copy
    prefix = f"bench-ckpt/{uuid.uuid4().hex[:8]}"
    try:
        # sync: what a training loop waits for without the SDK
        store = env.target.obstore()
        drop_caches(state)
        t0 = time.perf_counter()
        obstore.put(store, f"{prefix}/sync/model.bin", model, chunk_size=10 * MIB, max_concurrency=20)
        ck.setdefault("sync", []).append(time.perf_counter() - t0)
        # async: save() returns after the snapshot; the upload goes on in the background
        try:
            with environ(env.target.env()):
                ckpt = cls(f"s3://{env.target.bucket}/{prefix}/async", max_to_keep=1)
        except Exception as exc:  # noqa: BLE001 - a half-built SDK is reported, not fatal
            ck["available"], ck["reason"] = False, f"not available: Checkpointer() failed: {exc}"
            return
        try:
            drop_caches(state)
            t0 = time.perf_counter()
            ckpt.save(rep, str(src))
            ck.setdefault("stall", []).append(time.perf_counter() - t0)
            ckpt.wait()
            ck.setdefault("total", []).append(time.perf_counter() - t0)
        finally:
            ckpt.close()
    finally:
        delete_prefix(env.target, prefix + "/")


# --- the run --------------------------------------------------------------------
def default_out() -> Path:
    return Path("bench-results") / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run(cfg: BenchConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    systems, workloads, with_ckpt = selected(cfg)
    out = cfg.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(cfg, console)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="pailfs-bench-"))
    os.chmod(workdir, 0o700)
    server = None
    proxy: LatencyProxy | None = None
    interrupted: KeyboardInterrupt | None = None
    try:
        with sigterm_as_interrupt(), progress_display(console) as progress, _catch(KeyboardInterrupt) as caught:
            task = progress.add_task("starting SeaweedFS", total=None)
            if cfg.endpoint:
                target = Target.from_env(cfg.endpoint, cfg.bucket)
                _ensure_bucket(target)
            else:
                from pailfs.server import SeaweedServer

                server = SeaweedServer(workdir / "seaweedfs")
                sstate = server.start([cfg.bucket])
                state.server_pid = sstate.pid
                cred = server.credentials()
                target = Target(sstate.endpoint, cfg.bucket, cred.access_key, cred.secret_key)
            spec = cfg.spec()
            local_root = workdir / "local"
            local_root.mkdir()
            upload_total = sum(n for _, n in _spec_sizes(spec))
            progress.update(task, description="generating + uploading the data set", total=upload_total, completed=0)
            ds = prepare(spec, target, local_root, progress=lambda n: progress.advance(task, n))
            state.ds = ds
            if cfg.latency_ms > 0:
                proxy = state.proxy = LatencyProxy(*target.host_port, cfg.latency_ms).start()
                target = target.via(proxy.endpoint)
            state.env = Env(target, workdir, local_root, files=len(ds.folder_keys))

            progress.update(task, description="verifying bytes on every system", total=len(systems), completed=0)
            for system in systems:
                progress.update(task, description=f"verifying {system.name}")
                verify(state, system)
                progress.advance(task)

            if cfg.soak_minutes:
                from pailfs.bench.soak import soak

                progress.update(task, description=f"soak: {cfg.soak_minutes:g} min on pailfs-ro", total=None)
                state.soak = soak(state, all_systems()["pailfs-ro"], cfg.soak_minutes * 60, progress, task)
            else:
                cells = [(w, s) for w in workloads for s in systems if applies(w, s)]
                total = cfg.repeats * (len(cells) + with_ckpt)
                progress.update(task, description="benchmark", total=total, completed=0)
                for rep in range(cfg.repeats):
                    for wl, system in cells:
                        if (system.name, wl.name) in state.over_budget:
                            progress.advance(task)
                            continue
                        progress.update(task, description=f"rep {rep + 1}/{cfg.repeats} {wl.name} on {system.name}")
                        run_cell(state, system, wl, rep)
                        progress.advance(task)
                    if with_ckpt:
                        progress.update(task, description=f"rep {rep + 1}/{cfg.repeats} checkpoint")
                        checkpoint_cells(state, rep)
                        progress.advance(task)
        interrupted = caught.exc
    finally:
        leftovers = fuse_mounts_under(str(workdir))
        for mnt in leftovers:  # only after a failure: sessions close their own mounts
            unmount(mnt, pids_serving(mnt))
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop(timeout=3)  # a throw-away server: no need to wait for a graceful exit
        if not cfg.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results = report.build(
        cfg=cfg, systems=systems, workloads=workloads, ds=state.ds, samples=state.samples,
        checkpoint=state.checkpoint if with_ckpt and not cfg.soak_minutes else None, soak=state.soak,
        machine=machine.describe(systems, load_before), started=started,
        caches_dropped=state.caches_dropped, verified=state.verified)
    if interrupted is not None:
        if not state.samples:
            raise interrupted
        results["config"]["interrupted"] = True
    report.write(results, out)
    results["out"] = str(out)
    if interrupted is not None:  # what was measured is kept, then Ctrl-C goes on as usual
        console.print(f"interrupted: partial results in {out}")
        raise interrupted
    return results


class _catch(contextlib.AbstractContextManager):
    """Swallow one exception type and keep it (so clean-up and a partial report can follow)."""

    def __init__(self, kind: type[BaseException]) -> None:
        self.kind = kind
        self.exc: BaseException | None = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, self.kind):
            self.exc = exc
            return True
        return False


def _spec_sizes(spec: DatasetSpec) -> list[tuple[str, int]]:
    from pailfs.bench.dataset import MNIST

    # folder sizes average 3 KiB; exact totals are not needed for a progress bar
    return [(n, s) for n, s in MNIST] + [("folder", spec.files * 3072), ("big", spec.big_bytes)]


def _ensure_bucket(target: Target) -> None:
    import asyncio

    from pailfs.store.s3api import Credentials, S3Api

    async def create() -> None:
        api = S3Api(target.endpoint, Credentials(target.access_key, target.secret_key), target.region)
        try:
            await api.create_bucket(target.bucket)  # 409 when it exists: fine
        finally:
            await api.aclose()

    asyncio.run(create())


@contextlib.contextmanager
def progress_display(console: Console) -> Iterator[Progress]:
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    with progress:
        yield progress
