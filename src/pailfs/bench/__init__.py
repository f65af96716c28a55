"""`pailfs bench`: pailfs side by side with s3fs-fuse, rclone, the SDK and local disk.

dataset   the seeded data set, its upload and local copy
target    endpoint + bucket + keys, and an obstore client for them
proxy     the latency proxy (`--latency-ms`)
systems   how each system is mounted, measured (CPU, RSS) and unmounted
workloads the timed workloads, for a directory and for the SDK
runner    the whole run: set-up, verification, interleaved repeats, clean-up
soak      `--soak`: many readers for a long time, errors and RSS growth
report    results.json, results.md, chart.png and the stdout tables
machine   what it ran on
"""

from pailfs.bench.runner import BenchConfig, run

__all__ = ["BenchConfig", "run"]
