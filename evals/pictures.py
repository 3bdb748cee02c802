"""Labelled pictures: panels side by side, each under a title, with a legend strip.

The evaluators' overlays (RUN/predictions/*.png) and ``predict``'s overlays are read by
people, at a glance: small inputs (the embedded data is 64 px) are enlarged with nearest
neighbours so that segments stay sharp, every panel says what it is (and the per-image
score of the prediction), and a legend names the colours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_H = 22
GAP = 6
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
#: panels smaller than this (pixels, the short side) are enlarged by an integer factor
MIN_SIDE = 192


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.45) -> None:
    cv2.putText(canvas, text, (x, y), FONT, scale, TEXT, 1, cv2.LINE_AA)


def _fit(text: str, width: int, scale: float = 0.45) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width - 8:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text.replace("…", "..")


def enlarge(panel: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1) if factor > 1 else panel


def legend_strip(entries: Sequence[tuple[str, Sequence[int]]], width: int) -> np.ndarray:
    """Colour swatches with names, wrapped over as many rows as ``width`` needs."""
    row_h, x, rows = 18, 6, [[]]
    for name, color in entries:
        w = 16 + cv2.getTextSize(name, FONT, 0.4, 1)[0][0] + 14
        if x + w > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((x, name, color))
        x += w
    canvas = np.full((len(rows) * row_h + 6, width, 3), BACKGROUND, np.uint8)
    for r, row in enumerate(rows):
        y = 4 + r * row_h
        for x0, name, color in row:
            cv2.rectangle(canvas, (x0, y + 2), (x0 + 11, y + 13),
                          tuple(int(c) for c in color), -1)
            cv2.putText(canvas, name, (x0 + 16, y + 12), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    return canvas


def colour_bar(lo: float, hi: float, unit: str, width: int, colormap: int) -> np.ndarray:
    """A horizontal colour bar from ``lo`` to ``hi`` with its end values."""
    canvas = np.full((30, width, 3), BACKGROUND, np.uint8)
    ramp = np.linspace(0, 255, max(width - 160, 16)).astype(np.uint8)[None]
    bar = cv2.applyColorMap(np.repeat(ramp, 10, axis=0), colormap)[..., ::-1]
    canvas[10:20, 60:60 + bar.shape[1]] = bar
    _text(canvas, f"{lo:.2f}", 4, 19, 0.4)
    _text(canvas, f"{hi:.2f} {unit}", 64 + bar.shape[1], 19, 0.4)
    return canvas


def labelled_panels(panels: Sequence[tuple[str, np.ndarray]],
                    legend: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """``[(title, rgb uint8 HxWx3)]`` side by side (resized to the first panel's height),
    enlarged together when small, each under its title; ``legend(width)`` (an RGB strip,
    e.g. :func:`legend_strip` or :func:`colour_bar`) goes underneath."""
    h = panels[0][1].shape[0]
    images = []
    for _, image in panels:
        if image.shape[0] != h:
            w = round(image.shape[1] * h / image.shape[0])
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)
        images.append(np.asarray(image, np.uint8))
    factor = max(1, math.ceil(MIN_SIDE / max(1, min(h, min(i.shape[1] for i in images)))))
    images = [enlarge(i, factor) for i in images]
    columns = []
    for (title, _), image in zip(panels, images, strict=True):
        head = np.full((TITLE_H, image.shape[1], 3), BACKGROUND, np.uint8)
        _text(head, _fit(title, image.shape[1]), 4, 15)
        if columns:  # a gap between panels
            columns.append(np.full((TITLE_H + image.shape[0], GAP, 3), BACKGROUND, np.uint8))
        columns.append(np.concatenate([head, image], axis=0))
    out = np.concatenate(columns, axis=1)
    if legend is not None:
        strip = legend(out.shape[1])
        out = np.concatenate([out, strip[:, :out.shape[1]]], axis=0)
    return out
