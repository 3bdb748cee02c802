"""Image files in and out: reading user images, writing PNGs and grids."""

from __future__ import annotations

import os

import cv2
import numpy as np

from uvim_givt.errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file; a missing or unreadable file names itself."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise DataError(f"{path}: missing, unreadable, truncated or not an image")
    return np.ascontiguousarray(image[..., ::-1])


def write_png(path: str, rgb: np.ndarray) -> str:
    """Writes an RGB uint8 picture (creating its folder); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"could not write {path}")
    return path


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [rows * cols, H, W, 3] (row-major) -> one picture [rows * H, cols * W, 3]."""
    n, h, w, c = images.shape
    cols = n // rows
    return images[:rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)
