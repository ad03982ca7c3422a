"""Crash-safe file writes, 8-bit image saving and image grids (no torchvision).

Every writer goes through a temporary file in the destination folder, fsync, then ``os.replace``:
a reader (or a resumed run) sees either the old file or the complete new one, never half of it.
Missing parent folders are created.
"""
from __future__ import annotations

import io
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch


def _write_atomically(path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_aside(folder, markers) -> str:
    """Move a folder an earlier run wrote to `<folder>_archived_<time>`, so a new run neither mixes with
    nor overwrites it (BasicSR's rule); returns the new path, "" when there was nothing to move. A
    non-empty folder holding none of `markers` (files our runs write) is not ours to move: ValueError."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder) or not os.listdir(folder):
        return ""
    if not any(os.path.exists(os.path.join(folder, m)) for m in markers):
        raise ValueError(f"'{folder}' exists and was not written by a run of ours (none of {list(markers)} "
                         "in it); choose another name")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archived = f"{folder}_archived_{stamp}"
    n = 1
    while os.path.exists(archived):
        n += 1
        archived = f"{folder}_archived_{stamp}_{n}"
    os.rename(folder, archived)
    return archived


def atomic_write_bytes(path, data: bytes) -> Path:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"atomic_write_bytes({path}): expected bytes, got {type(data).__name__}")
    return _write_atomically(path, lambda f: f.write(data))


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path, obj, indent: int = 2) -> Path:
    """Indented JSON with a final newline; a value json cannot encode raises before anything is written."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save(obj, path) -> Path:
    """``torch.save(obj, path)`` made atomic; if pickling fails the old file stays as it was."""
    return _write_atomically(path, lambda f: torch.save(obj, f))


def _image_hwc_uint8(img) -> np.ndarray:
    """C×H×W / 1×C×H×W / H×W tensor (or numpy H×W / H×W×C) in [0, 1] -> H×W or H×W×3 uint8."""
    if torch.is_tensor(img):
        t = img.detach().to("cpu", torch.float64)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"save_image: expected a C×H×W tensor with C in (1, 3) (or H×W), got shape "
                         f"{tuple(getattr(img, 'shape', ()))}")
    arr = np.nan_to_num(arr, nan=0.0)
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path, img) -> Path:
    """Write an image in [0, 1] as 8-bit (clamped, rounded); 1 channel -> gray, 3 -> RGB.

    The format follows the suffix (.png recommended: lossless)."""
    from PIL import Image

    path = Path(path)
    formats = Image.registered_extensions()
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_image: cannot tell the image format of {path} from its suffix (use .png)")
    buffer = io.BytesIO()
    Image.fromarray(_image_hwc_uint8(img)).save(buffer, format=fmt)
    return atomic_write_bytes(path, buffer.getvalue())


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile N×C×H×W images (or a list of C×H×W of one size) into one C'×H'×W' tensor, ``nrow`` per row.

    Same geometry as torchvision's make_grid (``padding`` around and between tiles); gray images are
    repeated to 3 channels when mixed with colour ones. Values are left as they are (no normalising).
    """
    if torch.is_tensor(images):
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4:
            raise ValueError(f"make_grid: expected N×C×H×W, got shape {tuple(images.shape)}")
        images = list(images)
    images = [img if img.dim() == 3 else img[None] for img in images]
    if not images:
        raise ValueError("make_grid: no images")
    if len({tuple(img.shape[-2:]) for img in images}) != 1:
        raise ValueError(f"make_grid: images differ in size: {sorted({tuple(i.shape[-2:]) for i in images})}")
    if nrow < 1 or padding < 0:
        raise ValueError(f"make_grid: nrow must be >= 1 and padding >= 0, got {nrow}, {padding}")
    channels = max(img.shape[0] for img in images)
    if any(img.shape[0] not in (1, channels) for img in images):
        raise ValueError(f"make_grid: channel counts must be 1 or {channels}, got {[i.shape[0] for i in images]}")
    n, (h, w) = len(images), images[0].shape[-2:]
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = images[0].new_full((channels, rows * (h + padding) + padding, cols * (w + padding) + padding),
                              pad_value)
    for i, img in enumerate(images):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top:top + h, left:left + w] = img.expand(channels, h, w)
    return grid
