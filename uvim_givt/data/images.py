"""Image files in and out: reading user images, writing PNGs and grids."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from uvim_givt.errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def truncation(data: bytes) -> str | None:
    """Why the bytes of a JPEG or PNG file are incomplete, or None if they end properly.

    Decoders accept a truncated JPEG with a warning and grey out the missing rows, so the
    end is checked here: a JPEG's last scan (SOS marker) must be followed by its
    end-of-image marker (entropy-coded data cannot contain one, and an EXIF thumbnail's
    comes before the main scan); a PNG must have its IEND chunk.
    """
    if data[:2] == b"\xff\xd8":
        if data.rfind(b"\xff\xd9") < max(data.rfind(b"\xff\xda"), 2):
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if data.rfind(b"IEND") < 8:
            return "truncated PNG (no IEND chunk)"
    return None


def read_complete(path: str) -> bytes:
    """The bytes of an image file, checked whole (:func:`truncation`); a missing or cut
    file raises :class:`DataError` naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    why = truncation(data)
    if why:
        raise DataError(f"{path}: {why}")
    return data


def read_image(path: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """``cv2.imdecode`` of a file, strictly: a missing, truncated or undecodable file raises
    :class:`DataError` naming it (never a partly grey image). BGR channel order, as cv2."""
    data = read_complete(path)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None or image.size == 0:
        raise DataError(f"{path}: not a decodable image")
    return image


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file, read strictly (see :func:`read_image`)."""
    return np.ascontiguousarray(read_image(path)[..., ::-1])


def write_png(path: str, rgb: np.ndarray) -> str:
    """Writes an RGB uint8 picture (creating its folder); returns the path."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        ok = cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))
    except (OSError, cv2.error) as e:
        raise UserError(f"could not write {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    if not ok:  # cv2 reports a full disk or a read-only folder only this way
        raise UserError(f"could not write {path} (read-only folder or disk full?)")
    return path


_UNWRITABLE: set[str] = set()


def write_png_or_warn(path: str, rgb: np.ndarray) -> str | None:
    """:func:`write_png` for by-products (overlays, sample grids): a failure is a warning,
    once per folder, and None; what was computed is still reported."""
    try:
        return write_png(path, rgb)
    except UserError as e:
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in _UNWRITABLE:
            _UNWRITABLE.add(folder)
            print(f"warning: {e}; the other pictures for {folder} are skipped too",
                  file=sys.stderr)
        return None


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [rows * cols, H, W, 3] (row-major) -> one picture [rows * H, cols * W, 3]."""
    n, h, w, c = images.shape
    cols = n // rows
    return images[:rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)


def resize_nearest(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [H, W, ...] to ``shape`` with half-pixel centres, as
    ``jax.image.resize(..., "nearest")`` (the published evaluators' resize) does."""
    h_in, w_in = image.shape[:2]
    h_out, w_out = int(shape[0]), int(shape[1])
    if (h_in, w_in) == (h_out, w_out):
        return image
    # Integer arithmetic: floor((i + 0.5) * in / out) without float rounding surprises.
    rows = np.minimum((2 * np.arange(h_out) + 1) * h_in // (2 * h_out), h_in - 1)
    cols = np.minimum((2 * np.arange(w_out) + 1) * w_in // (2 * w_out), w_in - 1)
    return image[rows[:, None], cols[None, :]]
