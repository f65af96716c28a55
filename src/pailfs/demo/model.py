"""The demo's classifier: a one-hidden-layer MLP in numpy (784 -> hidden ReLU -> 10 softmax).

Small on purpose: the demo measures data loading and checkpoint stalls, so the
model must train in milliseconds per step on two cores and still reach well
over 80 % test accuracy on the digits within a few epochs. Trained with
minibatch SGD with momentum; weights are float32 so a checkpoint is ~400 KB.
"""

from __future__ import annotations

import io

import numpy as np

N_CLASSES = 10


def to_inputs(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 784) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


class MLP:
    def __init__(self, n_in: int = 784, n_hidden: int = 128, lr: float = 0.05,
                 momentum: float = 0.9, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # He initialisation for the ReLU layer, small weights for the softmax layer
        self.params = {
            "w1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            "b1": np.zeros(n_hidden, dtype=np.float32),
            "w2": (rng.standard_normal((n_hidden, N_CLASSES)) * np.sqrt(1.0 / n_hidden)).astype(np.float32),
            "b2": np.zeros(N_CLASSES, dtype=np.float32),
        }
        self.velocity = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.lr = np.float32(lr)
        self.momentum = np.float32(momentum)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        hidden = np.maximum(x @ p["w1"] + p["b1"], 0)
        logits = hidden @ p["w2"] + p["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return hidden, probs

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[1].argmax(axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(x) == y).mean())

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One SGD step on a minibatch; returns its mean cross-entropy loss."""
        p = self.params
        hidden, probs = self._forward(x)
        n = len(x)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        d_logits = probs
        d_logits[np.arange(n), y] -= 1
        d_logits /= n
        grads = {"w2": hidden.T @ d_logits, "b2": d_logits.sum(axis=0)}
        d_hidden = d_logits @ p["w2"].T
        d_hidden[hidden <= 0] = 0
        grads["w1"] = x.T @ d_hidden
        grads["b1"] = d_hidden.sum(axis=0)
        for name, grad in grads.items():
            v = self.velocity[name]
            v *= self.momentum
            v -= self.lr * grad.astype(np.float32)
            p[name] += v
        return loss

    # --- checkpoints -------------------------------------------------------
    def state_dict(self, step: int) -> dict[str, np.ndarray]:
        """The weights and the step as a flat mapping of arrays (a state dict, as a
        torch model's: what Checkpointer.save_state takes)."""
        return {"step": np.int64(step), **{name: value.copy() for name, value in self.params.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> int:
        """Restore weights from state_dict(); returns the saved step."""
        for name in self.params:
            self.params[name] = np.asarray(state[name], dtype=np.float32)
        return int(state["step"])

    def to_npz(self, step: int) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.state_dict(step))
        return buf.getvalue()

    def load_npz(self, data: bytes) -> int:
        """Restore weights from to_npz bytes; returns the saved step."""
        with np.load(io.BytesIO(data)) as npz:
            return self.load_state_dict({name: npz[name] for name in npz.files})
