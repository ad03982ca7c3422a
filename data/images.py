"""Reading images as float32 C×H×W tensors in [0, 1].

8-bit and 16-bit files (16-bit grayscale through Pillow, 16-bit colour PNGs through a small decoder,
since Pillow reduces those to 8 bits), palette images (expanded), alpha channels (dropped, not
composited). `gray=False` gives 3 channels (grayscale files replicated, as the published loaders do);
`gray=True` gives 1 channel (colour converted to luma 0.299R + 0.587G + 0.114B, rounded to the
file's bit depth like OpenCV's IMREAD_GRAYSCALE).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from utils.config import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
LUMA = (0.299, 0.587, 0.114)


def to_luma(img: torch.Tensor) -> torch.Tensor:
    """Y = 0.299R + 0.587G + 0.114B over the channel axis (-3); 1-channel input is returned as is."""
    if img.shape[-3] == 1:
        return img
    r, g, b = img.unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _png_header(path: Path):
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">IIBBBBB", head[16:29])  # w, h, depth, colour type, ..., interlace


def _unfilter_row(line: np.ndarray, prev: np.ndarray, ftype: int, bpp: int) -> np.ndarray:
    """Undo one PNG row filter (bytes as int64 arrays)."""
    if ftype == 0:
        return line
    if ftype == 1:  # Sub: running sum per byte position
        return (line.reshape(-1, bpp).cumsum(0) % 256).ravel()
    if ftype == 2:  # Up
        return (line + prev) % 256
    pixels, ups = line.reshape(-1, bpp), prev.reshape(-1, bpp)
    out = np.empty_like(pixels)
    left, upleft = np.zeros(bpp, np.int64), np.zeros(bpp, np.int64)
    for i in range(pixels.shape[0]):  # Average / Paeth depend on the reconstructed left neighbour
        up = ups[i]
        if ftype == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        left = (pixels[i] + pred) % 256
        out[i], upleft = left, up
    return out.ravel()


def _read_png16_colour(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB/RGBA PNG to H×W×C uint16 (alpha kept; caller drops it)."""
    data = path.read_bytes()
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    w, h, depth, colour, _, _, interlace = header
    if interlace:
        raise DataError(f"cannot read image {path}: interlaced 16-bit colour PNGs are not supported")
    channels = {2: 3, 6: 4}[colour]
    stride = w * channels * 2
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, stride + 1).astype(np.int64)
    out, prev = np.empty((h, stride), np.int64), np.zeros(stride, np.int64)
    for y in range(h):
        prev = out[y] = _unfilter_row(rows[y, 1:], prev, int(rows[y, 0]), channels * 2)
    pairs = out.reshape(h, w, channels, 2)
    return (pairs[..., 0] * 256 + pairs[..., 1]).astype(np.uint16)


def _decode(path: Path):
    """(array H×W or H×W×C, full-scale value) from an image file."""
    from PIL import Image

    header = _png_header(path)
    if header is not None and header[2] == 16 and header[3] in (2, 6):
        return _read_png16_colour(path)[..., :3], 65535.0
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im).astype(np.int64)
            if arr.min() < 0 or arr.max() > 65535:
                raise DataError(f"cannot read image {path}: 32-bit integer values outside 0..65535")
            return arr.astype(np.uint16), 65535.0
        if mode == "F":
            raise DataError(f"cannot read image {path}: floating-point images are not supported")
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("1", "LA", "PA", "La"):
            im = im.convert("L")
        elif mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGB")
        arr = np.asarray(im)
        return (arr[..., :3] if arr.ndim == 3 else arr), 255.0


def read_image(path, gray: bool = False) -> torch.Tensor:
    """float32 tensor C×H×W in [0, 1] (C = 1 if gray else 3)."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        arr, full = _decode(path)
    except (UnidentifiedImageError, OSError, SyntaxError, zlib.error, KeyError, TypeError, struct.error) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    img = torch.from_numpy(arr.astype(np.float32) / np.float32(full))
    img = img[None] if img.dim() == 2 else img.permute(2, 0, 1).contiguous()
    return match_channels(img, gray, full)


def match_channels(img: torch.Tensor, gray: bool, full: float | None = None) -> torch.Tensor:
    """1 or 3 channels; colour -> luma is rounded to steps of 1/full when full is given."""
    if gray and img.shape[0] == 3:
        luma = to_luma(img.double())
        return (torch.round(luma * full) / full if full else luma).float()
    if not gray and img.shape[0] == 1:
        return img.expand(3, -1, -1).contiguous()
    return img


def list_images(folder, recursive: bool = False) -> list:
    """Sorted image paths in `folder` (common extensions, case-insensitive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = folder.rglob("*") if recursive else folder.iterdir()
    paths = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return paths


def image_names(paths) -> list:
    """Names of image files: their stems, or their file names where two share a stem (a.png, a.jpg),
    so that results written per name never overwrite each other."""
    stems = [Path(p).stem for p in paths]
    return [Path(p).name if stems.count(stem) > 1 else stem for p, stem in zip(paths, stems)]


DEFAULT_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def default_images(gray: bool = False, size: int = 256, names=DEFAULT_IMAGES) -> dict:
    """Images bundled with scikit-image (no download), centre-cropped to size×size: {name: tensor}."""
    import skimage.data

    out = {}
    for name in names:
        arr = getattr(skimage.data, name)()
        h, w = arr.shape[:2]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        arr = np.ascontiguousarray(arr[top:top + size, left:left + size])
        img = torch.from_numpy(arr.astype(np.float32) / 255.0)
        img = img[None] if img.dim() == 2 else img[..., :3].permute(2, 0, 1).contiguous()
        out[name] = match_channels(img, gray, 255.0)
    return out
