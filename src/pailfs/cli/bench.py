"""`pailfs bench`: the side-by-side benchmark (see pailfs.bench and docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pailfs.cli.app import app

SYSTEMS_HELP = "Comma-separated: pailfs-ro, pailfs-ro-half, pailfs-rw, s3fs, rclone, sdk, local."
WORKLOADS_HELP = ("Comma-separated: mnist, walk, read1, read1-open, read8, big, big-ranged, loader, imagefolder, "
                  "warmup, create, write-big, checkpoint.")


# the defaults of pailfs.bench (not imported here: obstore and numpy would slow every CLI start)
DEFAULT_SYSTEMS = "pailfs-ro,pailfs-ro-half,pailfs-rw,s3fs,rclone,sdk,local"
DEFAULT_WORKLOADS = ("mnist,walk,read1,read1-open,read8,big,big-ranged,loader,imagefolder,warmup,create,write-big,"
                     "checkpoint")


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@app.command(help="Benchmark pailfs against s3fs-fuse, rclone mount, the SDK and local disk on one data set.")
def bench(
    quick: bool = typer.Option(False, "--quick", help="Small data set (2,000 files, 64 MiB), 1 repeat: a few minutes."),
    systems: str = typer.Option(DEFAULT_SYSTEMS, "--systems", help=SYSTEMS_HELP),
    workloads: str = typer.Option(DEFAULT_WORKLOADS, "--workloads", help=WORKLOADS_HELP),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Delay each direction by N ms (a TCP proxy)."),
    repeat: Optional[int] = typer.Option(None, "--repeat", min=1, help="Repeats per cell (default 3; --quick: 1)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (default bench-results/<UTC time>/)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint",
                                           help="Use this S3 endpoint instead of an embedded SeaweedFS "
                                                "(keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)."),
    bucket: str = typer.Option("pailfs-bench", "--bucket", help="Bucket for the data set."),
    soak: Optional[float] = typer.Option(None, "--soak", min=0.1, metavar="MINUTES",
                                         help="Instead of the workloads: 32 readers on the pailfs-ro mount for "
                                              "MINUTES, counting errors and RSS growth."),
    budget: Optional[float] = typer.Option(None, "--budget", min=0, metavar="SECONDS",
                                           help="Time budget of one pass: a slower pass is stopped and extrapolated, "
                                                "and not repeated (default 45; --quick: 10; 0: no limit)."),
    files: Optional[int] = typer.Option(None, "--files", min=10, hidden=True),
    big_mib: Optional[int] = typer.Option(None, "--big-mib", min=1, hidden=True),
    keep: bool = typer.Option(False, "--keep", hidden=True, help="Keep the work dir (debugging)."),
) -> None:
    from pailfs.cli.app import need_extra

    need_extra("bench", "matplotlib")
    from pailfs.bench import BenchConfig, run
    from pailfs.bench.report import markdown

    cfg = BenchConfig(systems=_split(systems), workloads=_split(workloads), quick=quick, repeat=repeat,
                      latency_ms=latency_ms, out=out, endpoint=endpoint, bucket=bucket, soak_minutes=soak,
                      files=files, big_mib=big_mib, keep=keep, budget=budget)
    results = run(cfg, Console(stderr=True))
    typer.echo(markdown(results, full=False))
    typer.echo(f"results: {results['out']}/results.json, results.md, chart.png")
