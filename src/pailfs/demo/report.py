"""What `pailfs demo` shows at the end: the comparison table, the checkpoints read
back from the bucket, a chart of data-loading time per epoch, and summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pailfs.demo.runner import LOGS_PREFIX, READ_WRITE, SEPARATION, DemoResult

CHART_NAME = "dataload.png"
SUMMARY_NAME = "summary.json"


def _ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.1f}x" if fast > 0 else "-"


def speedup(result: DemoResult) -> float:
    rw, ro = result.runs[READ_WRITE.key], result.runs[SEPARATION.key]
    return rw.later_epochs / ro.later_epochs if ro.later_epochs > 0 else float("inf")


def comparison_table(result: DemoResult) -> Table:
    rw, ro = result.runs[READ_WRITE.key], result.runs[SEPARATION.key]
    left_rw, left_ro = result.objects_left[READ_WRITE.key], result.objects_left[SEPARATION.key]
    table = Table(title=f"pailfs demo: {result.epochs} epochs, {rw.steps} steps per run")
    table.add_column("")
    table.add_column(f"run 1: {READ_WRITE.title}", justify="right", overflow="fold")
    table.add_column(f"run 2: {SEPARATION.title}", justify="right", overflow="fold")
    table.add_column("run 2 faster by", justify="right")
    table.add_row("mount options (-o)", READ_WRITE.options, SEPARATION.options, "")
    table.add_row("dataload, first epoch", f"{rw.first_epoch:.4f} s", f"{ro.first_epoch:.4f} s",
                  _ratio(rw.first_epoch, ro.first_epoch))
    table.add_row("dataload, later epochs (median)", f"{rw.later_epochs:.4f} s", f"{ro.later_epochs:.4f} s",
                  _ratio(rw.later_epochs, ro.later_epochs))
    table.add_row("checkpoints saved", str(len(rw.checkpoint_stalls)), str(len(ro.checkpoint_stalls)), "")
    table.add_row("training blocked on checkpoints", f"{rw.stall_total:.4f} s", f"{ro.stall_total:.4f} s",
                  _ratio(rw.stall_total, ro.stall_total))
    kept_rw = sum(1 for key, _ in left_rw if key.rsplit("/", 1)[-1].startswith("model.ckpt-"))
    table.add_row("checkpoints kept in the bucket", str(kept_rw), str(len(result.checkpoints)), "")
    table.add_row(f"files left under {LOGS_PREFIX}", str(len(left_rw)), str(len(left_ro)), "")
    table.add_row("final test accuracy", f"{rw.final_accuracy:.4f}", f"{ro.final_accuracy:.4f}", "")
    return table


def bucket_table(result: DemoResult) -> Table:
    table = Table(title=f"s3://{result.bucket}/{LOGS_PREFIX} after both runs")
    table.add_column("key")
    table.add_column("bytes", justify="right")
    table.add_column("left by")
    for run in (READ_WRITE, SEPARATION):
        for key, size in result.objects_left[run.key]:
            table.add_row(key, f"{size:,}", run.title)
    return table


def checkpoints_table(result: DemoResult) -> Table:
    table = Table(title=f"Committed checkpoints: Checkpointer('s3://{result.bucket}/{LOGS_PREFIX.rstrip('/')}').list()")
    table.add_column("step", justify="right")
    table.add_column("files")
    table.add_column("bytes", justify="right")
    table.add_column("committed")
    for row in result.checkpoints:
        table.add_row(str(row.step), ", ".join(name for name, _ in row.files),
                      f"{sum(size for _, size in row.files):,}",
                      time.strftime("%H:%M:%S", time.localtime(row.time)))
    return table


def write_chart(result: DemoResult, path: Path) -> Path:
    """Data-loading time per epoch of both runs (log scale: they differ by orders)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for spec, marker in ((READ_WRITE, "o"), (SEPARATION, "s")):
            times = [t * 1000 for t in result.runs[spec.key].dataload]
            ax.plot(range(1, len(times) + 1), times, marker=marker, label=f"{spec.title}  (-o {spec.options})")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("dataload cost time (ms, log scale)")
        ax.set_title("Re-reading the MNIST files every epoch through a pailfs mount")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def summary_dict(result: DemoResult) -> dict:
    runs = {}
    for spec in (READ_WRITE, SEPARATION):
        run = result.runs[spec.key]
        runs[spec.key] = {
            "title": spec.title, "mount_options": spec.options, "dataload_seconds": run.dataload,
            "first_epoch_seconds": run.first_epoch, "later_epochs_median_seconds": run.later_epochs,
            "checkpoint_stalls": run.checkpoint_stalls, "final_wait_seconds": run.final_wait,
            "stall_total_seconds": run.stall_total, "final_accuracy": run.final_accuracy,
            "steps": run.steps, "objects_left": result.objects_left[spec.key],
        }
    return {"endpoint": result.endpoint, "bucket": result.bucket, "epochs": result.epochs,
            "embedded_server": result.embedded, "speedup_later_epochs": speedup(result), "runs": runs,
            "checkpoints": [{"step": r.step, "files": r.files, "time": r.time} for r in result.checkpoints],
            "restored": result.restored.__dict__ if result.restored else None,
            "wall_seconds": result.wall_seconds}


def render(result: DemoResult, out_dir: Path, console: Console) -> Path:
    """Print the summary and write the chart and summary.json; returns the chart's path."""
    chart = write_chart(result, out_dir / CHART_NAME)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary_dict(result), indent=1))
    rw, ro = result.runs[READ_WRITE.key], result.runs[SEPARATION.key]
    console.rule("Summary")
    console.print(checkpoints_table(result))
    console.print(bucket_table(result))
    console.print(comparison_table(result))
    console.print(f"Later-epoch data loading: {rw.later_epochs:.4f} s ({READ_WRITE.title}) vs "
                  f"{ro.later_epochs:.4f} s ({SEPARATION.title}): {speedup(result):.1f}x faster")
    console.print(f"Training blocked on checkpoints: {rw.stall_total:.4f} s vs {ro.stall_total:.4f} s "
                  "(serializing the weights included: that happens in the training thread)")
    if result.restored is not None:
        r = result.restored
        console.print(f"Restored with load_state(): step {r.step}, test accuracy {r.accuracy:.4f}"
                      + (f" (trained: {r.trained_accuracy:.4f})" if r.trained_accuracy is not None else ""))
    console.print(f"Chart: {chart}   Summary: {out_dir / SUMMARY_NAME}   ({result.wall_seconds:.0f} s in all)")
    return chart
