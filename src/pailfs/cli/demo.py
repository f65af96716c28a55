"""`pailfs demo`: the read-write separation pattern, end to end (see pailfs.demo)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from pailfs.cli.app import app


def _interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so mounts and the server are cleaned up
    raise KeyboardInterrupt


@app.command(help="Train a small digits classifier twice on MNIST files in a bucket: through a read-write "
                  "mount without stat cache, then with read-write separation (read-only cached mount, "
                  "background checkpoints), and compare data loading and checkpoint stalls. Without "
                  "--endpoint an embedded SeaweedFS is started for the demo and stopped afterwards. "
                  "The demo empties BUCKET/training_logs/ before it starts.")
def demo(endpoint: Optional[str] = typer.Option(
             None, "--endpoint", help="S3 endpoint to use instead of the embedded SeaweedFS; keys from "
                                      "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or OSS_*). The bucket must exist."),
         bucket: str = typer.Option("tf-train", "--bucket", help="Bucket for data (train/data/) and checkpoints (training_logs/)."),
         epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs per run (default 8; 5 with --quick)."),
         quick: bool = typer.Option(False, "--quick", help="Fewer epochs (still two checkpoints per run)."),
         out: Path = typer.Option(Path("demo-output"), "--out", help="Directory for the chart and summary.json.")) -> None:
    from rich.console import Console

    from pailfs.cli.app import fail, need_extra

    need_extra("demo", "numpy", "sklearn", "matplotlib")
    from pailfs.demo import report
    from pailfs.demo.runner import DEFAULT_EPOCHS, QUICK_EPOCHS, run_demo

    if epochs is None:
        epochs = QUICK_EPOCHS if quick else DEFAULT_EPOCHS
    out.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the training
    # a pipe gets a wide console so the tables are not squeezed into 80 columns
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_demo(endpoint=endpoint, bucket=bucket, epochs=epochs, console=console)
    except KeyboardInterrupt:  # run_demo has unmounted and stopped everything on the way out
        raise fail("interrupted; the demo's mounts and server were cleaned up", 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.render(result, out, console)
    if min(r.final_accuracy for r in result.runs.values()) <= 0.8:
        raise fail("the model did not reach 80 % test accuracy; see the output above")
