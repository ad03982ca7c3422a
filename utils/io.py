"""Crash-safe file writes, 8-bit image saving and image grids (no torchvision).

Every writer goes through a temporary file in the destination folder, fsync, then ``os.replace``:
a reader (or a resumed run) sees either the old file or the complete new one, never half of it.
Missing parent folders are created. A write that fails (disk full, read-only folder) raises WriteError,
one line with the path and the cause, and removes its temp file.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)   # only writing can cause these
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class WriteError(OSError):
    """A file or folder could not be written (disk full, read-only folder, no permission): one line with
    the path and the cause; the file's previous version, if any, is unchanged."""

    def __init__(self, path, cause: OSError, note: str = " (any earlier version of it is kept)"):
        super().__init__(cause.errno, cause.strerror or str(cause) or type(cause).__name__, os.fspath(path))
        self.path, self.note = os.fspath(path), note

    def __str__(self):
        return f"cannot write '{self.path}': {self.strerror}{self.note}"


def _os_cause(err: BaseException, before: BaseException = None, kind=OSError):
    """The OSError (or `kind`) behind `err`: torch.save reports a failed write, or a Ctrl-C inside one, as
    "unexpected pos" chained to it. `before`: the exception being handled when the write began, where the
    search stops."""
    seen = set()
    while err is not None and err is not before and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def storage_error(err: BaseException):
    """`err` as a WriteError when it is one, or a storage fault (disk full, quota, read-only file system,
    file too large) raised by a writer outside utils.io; else None."""
    if isinstance(err, WriteError):
        return err
    cause = _os_cause(err)
    if cause is None or cause.errno not in STORAGE_ERRNOS:
        return None
    return WriteError(cause.filename or "(a file)", cause)


def _write_atomically(path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then move it into place. A failed write
    removes the temp file, leaves ``path`` as it was and raises WriteError; a Ctrl-C raises KeyboardInterrupt."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    handling = sys.exc_info()[1]        # e.g. the error whose progress is being saved
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666 & ~umask, like open()
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):     # absent, or its folder could not be made
            tmp.unlink()
        if not isinstance(err, Exception):
            raise
        if _os_cause(err, handling, KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from err
        cause = _os_cause(err, handling)
        if cause is not None:
            raise WriteError(path, cause) from err
        raise
    _fsync_dir(path.parent)
    return path


def check_writable(folder) -> None:
    """Create `folder` if needed and write and remove a probe file in it; WriteError naming the folder if
    that fails (run before hours of work, not after)."""
    try:
        _write_atomically(Path(folder) / f".write_probe.{os.getpid()}", lambda f: f.write(b"")).unlink()
    except WriteError as err:
        raise WriteError(folder, err, note="") from None


def remove_stale_temp_files(folder, only=None) -> list:
    """Remove the temp files of saves whose process is gone (killed mid-write) from `folder`; `only`:
    a test on the target file name (e.g. this run's export only). Returns the removed paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        match = _TEMP_NAME.match(entry)
        if not match or (only is not None and not only(match["name"])) or _alive(int(match["pid"])):
            continue
        os.remove(os.path.join(folder, entry))
        removed.append(os.path.join(folder, entry))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # another user's live process
        return True
    return True


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


def holds_run(folder, markers) -> bool:
    """True when `folder` holds an earlier run (one of `markers`, files our runs write); False when it is
    absent or empty. A non-empty folder holding none of them is not ours to touch: ValueError."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder) or not os.listdir(folder):
        return False
    if not any(os.path.exists(os.path.join(folder, m)) for m in markers):
        raise ValueError(f"'{folder}' exists and was not written by a run of ours (none of {list(markers)} "
                         "in it); choose another name")
    return True


def move_aside(folder, markers) -> str:
    """Move a folder an earlier run wrote to `<folder>_archived_<time>`, so a new run neither mixes with
    nor overwrites it (BasicSR's rule); returns the new path, "" when there was nothing to move. A
    non-empty folder holding none of `markers` (files our runs write) is not ours to move: ValueError."""
    folder = os.fspath(folder)
    if not holds_run(folder, markers):
        return ""
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
