"""The training job the demo runs twice: re-read the data set every epoch, train,
report accuracy, and save a checkpoint every `checkpoint_every` steps.

It knows nothing of mounts or stores: it reads MNIST files from a directory and
hands checkpoints to a CheckpointSink. Only the blocking part of a checkpoint is
timed, because that is what a training job pays for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from pailfs.demo.data import read_dataset
from pailfs.demo.model import MLP, to_inputs

log = logging.getLogger(__name__)

BATCH_SIZE = 32
ACCURACY_EVERY = 10
CHECKPOINT_EVERY = 100
SEED = 0


class CheckpointSink(Protocol):
    """Where checkpoints go. save() may block (that is what the demo measures);
    finish() waits for whatever save() left running in the background.
    max_to_keep: checkpoints the sink keeps (0 = all), for the index file.
    save() serializes the checkpoint the way its framework would (inside the timing:
    serializing is part of what training waits for)."""

    max_to_keep: int

    def save(self, checkpoint: "Checkpoint") -> None: ...

    def finish(self) -> None: ...


@dataclass
class Checkpoint:
    """The model at one step, serialized on demand: as files (TF style, the weights and
    the `checkpoint` index) or as a state dict (torch style)."""

    step: int
    model: MLP
    kept: list[str]  # checkpoint files the index lists, newest last

    def files(self) -> dict[str, bytes]:
        return {checkpoint_name(self.step): self.model.to_npz(self.step),
                "checkpoint": checkpoint_index(checkpoint_name(self.step), self.kept)}

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.model.state_dict(self.step)


def checkpoint_name(step: int) -> str:
    return f"model.ckpt-{step}.npz"


def checkpoint_index(latest: str, kept: list[str]) -> bytes:
    """The text index TensorFlow keeps beside its checkpoints (file `checkpoint`)."""
    lines = [f'model_checkpoint_path: "{latest}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in kept]
    return ("\n".join(lines) + "\n").encode()


class DirectorySink:
    """Checkpoints written synchronously into a directory (the rw mount, or any
    local directory): every file is written and closed before training goes on,
    and all checkpoints are kept, like a TF job saving into a mounted bucket."""

    max_to_keep = 0

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(self, checkpoint: Checkpoint) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, data in checkpoint.files().items():
            # close() is where a read-write mount uploads: it is inside the timing
            with open(self.directory / name, "wb") as f:
                f.write(data)

    def finish(self) -> None:
        return None


@dataclass
class RunResult:
    """What one training run measured."""

    dataload: list[float] = field(default_factory=list)  # seconds per epoch
    accuracy: list[tuple[int, float]] = field(default_factory=list)  # (step, test accuracy)
    checkpoint_stalls: list[tuple[int, float]] = field(default_factory=list)  # (step, seconds blocked)
    final_wait: float = 0.0  # seconds blocked at the end waiting for background saves
    steps: int = 0
    train_seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1][1] if self.accuracy else 0.0

    @property
    def stall_total(self) -> float:
        return sum(s for _, s in self.checkpoint_stalls) + self.final_wait

    @property
    def first_epoch(self) -> float:
        return self.dataload[0]

    @property
    def later_epochs(self) -> float:
        """Median data-loading time of epochs 2.. (the first epoch if there is only one)."""
        later = self.dataload[1:] or self.dataload
        return float(np.median(later))


def train(data_dir: str | Path, sink: CheckpointSink, epochs: int, *,
          emit: Callable[[str], None] = print, batch_size: int = BATCH_SIZE,
          checkpoint_every: int = CHECKPOINT_EVERY, accuracy_every: int = ACCURACY_EVERY,
          seed: int = SEED) -> RunResult:
    """Train a fresh model for `epochs` epochs; prints the job's lines through emit."""
    data_dir = Path(data_dir)
    model = MLP(seed=seed)
    rng = np.random.default_rng(seed)  # same seed: both runs train the same model
    result = RunResult()
    step = 0
    kept: list[str] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        # a data loader re-reads its files every epoch; that is what the mount serves
        t0 = time.perf_counter()
        digits = read_dataset(data_dir)
        elapsed = time.perf_counter() - t0
        result.dataload.append(elapsed)
        emit(f"dataload cost time: {elapsed:.4f} s (epoch {epoch}/{epochs})")
        x_train, y_train = to_inputs(digits.train_images), digits.train_labels.astype(np.int64)
        x_test, y_test = to_inputs(digits.test_images), digits.test_labels.astype(np.int64)
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            model.train_step(x_train[batch], y_train[batch])
            step += 1
            if step % accuracy_every == 0:
                acc = model.accuracy(x_test, y_test)
                result.accuracy.append((step, acc))
                emit(f"Accuracy at step {step}: {acc:.4f}")
            if step % checkpoint_every == 0:
                name = checkpoint_name(step)
                kept.append(name)
                if sink.max_to_keep:
                    kept = kept[-sink.max_to_keep:]
                t1 = time.perf_counter()
                sink.save(Checkpoint(step, model, list(kept)))
                blocked = time.perf_counter() - t1
                result.checkpoint_stalls.append((step, blocked))
                emit(f"Save checkpoint at step {step}: {blocked:.4f} s blocked")
    if step % accuracy_every:  # the final accuracy is always reported
        acc = model.accuracy(x_test, y_test)
        result.accuracy.append((step, acc))
        emit(f"Accuracy at step {step}: {acc:.4f}")
    t2 = time.perf_counter()
    sink.finish()
    result.final_wait = time.perf_counter() - t2
    result.steps = step
    result.train_seconds = time.perf_counter() - started
    return result
