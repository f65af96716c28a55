"""State dicts as checkpoint files: `Checkpointer.save_state` / `load_state`.

A flat mapping of names to numpy arrays is written as `state.npz` (no torch, no
pickle); anything else (a torch `model.state_dict()`) with torch.save as
`state.pt`, read back with torch.load(weights_only=True)."""

from __future__ import annotations

import io
from typing import Any, Mapping

from pailfs.errors import CheckpointError

STATE_NAMES = ("state.pt", "state.npz")  # what save_state writes (torch, numpy)


def serialize_state(state_dict: Any) -> tuple[bytes, str]:
    """(bytes, file name) of a state dict: npz for a flat mapping of numpy arrays,
    torch.save for anything else."""
    buf = io.BytesIO()
    if _numpy_only(state_dict):
        import numpy as np

        np.savez(buf, **{key: np.asarray(value) for key, value in state_dict.items()})
        return buf.getvalue(), "state.npz"
    torch = _torch()
    torch.save(state_dict, buf)
    return buf.getvalue(), "state.pt"


def _numpy_only(state_dict: Any) -> bool:
    if not isinstance(state_dict, Mapping) or not state_dict:
        return False
    try:
        import numpy as np
    except ImportError:
        return False
    return all(isinstance(k, str) and isinstance(v, (np.ndarray, np.generic)) for k, v in state_dict.items())


def _torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError("this state dict needs PyTorch (pip install torch); without it, save_state "
                              "takes a flat mapping of names to numpy arrays") from None
    return torch


def deserialize_state(name: str, data: bytes, map_location: Any = None) -> Any:
    if name.endswith(".npz"):
        import numpy as np

        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    return _torch().load(io.BytesIO(data), map_location=map_location, weights_only=True)
