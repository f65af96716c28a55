"""The demo's data set: scikit-learn's bundled 8x8 digits as MNIST IDX `.gz` files.

`load_digits()` ships inside scikit-learn (no download), so the demo runs
offline. The 8x8 images (values 0-16) are upsampled bilinearly to a 20x20 box
and centred in 28x28 with a 4-pixel margin, the way MNIST frames its digits,
then written as the four files TensorFlow's MNIST reader expects.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
_BOX = 20  # MNIST centres each digit in a 20x20 box inside 28x28
TEST_FRACTION = 0.2
SEED = 0

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type MNIST uses


class IdxError(ValueError):
    """A file that is not a well-formed unsigned-byte IDX file."""


@dataclass(frozen=True)
class Digits:
    """Train and test split: images (N, 28, 28) uint8, labels (N,) uint8."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def bilinear_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, h, w) images to (N, size, size) with bilinear interpolation
    (pixel centres aligned, edges clamped), returning float64."""
    n, h, w = images.shape

    def axis(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size) + 0.5) * src / size - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    img = images.astype(np.float64)
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy)[None, :, None] + bottom * fy[None, :, None]


def to_mnist_frame(images8: np.ndarray, max_value: float = 16.0) -> np.ndarray:
    """8x8 digits (0..max_value) -> 28x28 uint8 (0..255), digit in the centre 20x20."""
    box = bilinear_resize(images8, _BOX) * (255.0 / max_value)
    out = np.zeros((len(images8), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    margin = (IMAGE_SIZE - _BOX) // 2
    out[:, margin:margin + _BOX, margin:margin + _BOX] = np.clip(np.rint(box), 0, 255).astype(np.uint8)
    return out


def make_digits(test_fraction: float = TEST_FRACTION, seed: int = SEED) -> Digits:
    """The 1,797 bundled digits as a stratified, reproducible train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = to_mnist_frame(raw.images)
    labels = raw.target.astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction,
                                              random_state=seed, stratify=labels)
    return Digits(x_tr, y_tr, x_te, y_te)


# --- IDX ----------------------------------------------------------------------
def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic 0x0000 08 <ndim>, then big-endian int32 dims."""
    if array.dtype != np.uint8:
        raise IdxError(f"IDX writer supports uint8 only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise IdxError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx(data: bytes) -> np.ndarray:
    """The uint8 array of IDX bytes (inverse of encode_idx); checks header and length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError("not an IDX file (bad magic)")
    if data[2] != _UBYTE:
        raise IdxError(f"IDX element type 0x{data[2]:02x} is not unsigned byte")
    ndim = data[3]
    end = 4 + 4 * ndim
    if ndim == 0 or len(data) < end:
        raise IdxError("truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if len(data) - end != int(np.prod(shape)):
        raise IdxError(f"IDX body is {len(data) - end} bytes, header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=end).reshape(shape)


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0: the same data set gives byte-identical files on every run
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def write_idx_gz(path: str | Path, array: np.ndarray) -> int:
    """Write one `.gz` IDX file; returns its size in bytes."""
    blob = gzip_bytes(encode_idx(array))
    Path(path).write_bytes(blob)
    return len(blob)


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Read one `.gz` IDX file the way a data loader does: open, read all, gunzip."""
    with open(path, "rb") as f:
        blob = f.read()
    return decode_idx(gzip.decompress(blob))


def write_dataset(directory: str | Path, digits: Digits) -> dict[str, int]:
    """Write the four MNIST files into directory; returns {name: size}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip(FILES, (digits.train_images, digits.train_labels,
                              digits.test_images, digits.test_labels)))
    return {name: write_idx_gz(directory / name, arr) for name, arr in arrays.items()}


def read_dataset(directory: str | Path) -> Digits:
    """Read the four MNIST files from directory (a local dir or a mount)."""
    directory = Path(directory)
    arrays = [read_idx_gz(directory / name) for name in FILES]
    digits = Digits(*arrays)
    for images, labels in ((digits.train_images, digits.train_labels),
                           (digits.test_images, digits.test_labels)):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IdxError(f"images {images.shape} do not match labels {labels.shape}")
    return digits
