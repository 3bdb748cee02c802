"""Completion of given codes over a region of the code grid: inpainting and outpainting.

A region names the part of the output to *generate*; the codes of the rest are given (the
stage-1 encoding of a ground truth or an image) and kept. :func:`code_grid` says how a
run's code sequence lies on the image (row-major over the VAE's latent grid, shuffled
into fewer tokens when ``pixel_shuffle_patch_size`` says so), :func:`region_mask` which
positions a region covers, and :func:`mark_region` draws the generated part's outline on
a picture. The samplers keep the given codes (``keep_gt``): a causal GIVT samples each
generated position given the codes before it, MaskGIT given all kept codes at once.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from uvim_givt.errors import UserError

#: top / bottom / left / right: that share of the rows or columns; centre: a centred box
#: whose sides are that share of the grid's; border: everything outside such a box
REGIONS = ("top", "bottom", "left", "right", "centre", "border")


def code_grid(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(rows, cols) of the code sequence on the image: the square latent grid of the VAE,
    divided by its pixel-shuffle patch."""
    seq_len = int(cfg.givt.model.seq_len)
    pr, pc = (int(v) for v in cfg.vae.model.get("pixel_shuffle_patch_size", (1, 1)))
    side = math.isqrt(seq_len * pr * pc)
    if side * side != seq_len * pr * pc or side % pr or side % pc:
        raise UserError(f"givt.model.seq_len={seq_len}: not a square code grid (with "
                        f"pixel shuffle {pr}x{pc}); completion needs one")
    return side // pr, side // pc


def region_box(region: str, fraction: float) -> tuple[float, float, float, float]:
    """The region's box (top, bottom, left, right) in fractions of the image; ``border``
    is the complement of its box."""
    if region not in REGIONS:
        raise UserError(f"--region {region!r}: one of {', '.join(REGIONS)}")
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--fraction {fraction}: a share of the side in (0, 1)")
    margin = (1.0 - fraction) / 2
    return {"top": (0.0, fraction, 0.0, 1.0), "bottom": (1.0 - fraction, 1.0, 0.0, 1.0),
            "left": (0.0, 1.0, 0.0, fraction), "right": (0.0, 1.0, 1.0 - fraction, 1.0),
            "centre": (margin, 1.0 - margin, margin, 1.0 - margin),
            "border": (margin, 1.0 - margin, margin, 1.0 - margin)}[region]


def region_mask(rows: int, cols: int, region: str, fraction: float) -> np.ndarray:
    """bool [rows * cols] (row-major): True where the region is generated. A code is in a
    box when its cell's centre is; at least one code is generated and one kept."""
    top, bottom, left, right = region_box(region, fraction)
    r = (np.arange(rows) + 0.5) / rows
    c = (np.arange(cols) + 0.5) / cols
    inside = ((r >= top) & (r <= bottom))[:, None] & ((c >= left) & (c <= right))[None, :]
    generated = ~inside if region == "border" else inside
    if generated.all() or not generated.any():
        raise UserError(f"--region {region} --fraction {fraction}: covers "
                        f"{'all' if generated.all() else 'none'} of the {rows}x{cols} code "
                        "grid; choose another fraction")
    return generated.reshape(-1)


def mark_region(picture: np.ndarray, generated: np.ndarray, rows: int, cols: int,
                colour: tuple[int, int, int] = (255, 64, 0), grey: bool = False
                ) -> np.ndarray:
    """``picture`` [H, W, 3] uint8 with the generated cells outlined in ``colour`` (their
    boundary with the given part, and the picture's edge), or greyed out with ``grey``."""
    out = np.array(picture, copy=True)
    h, w = out.shape[:2]
    cells = generated.reshape(rows, cols)
    row_of = np.minimum((np.arange(h) * rows) // h, rows - 1)
    col_of = np.minimum((np.arange(w) * cols) // w, cols - 1)
    pixels = cells[row_of][:, col_of]
    if grey:
        out[pixels] = 128
        return out
    edge = np.zeros_like(pixels)
    edge[1:] |= pixels[1:] != pixels[:-1]
    edge[:-1] |= pixels[1:] != pixels[:-1]
    edge[:, 1:] |= pixels[:, 1:] != pixels[:, :-1]
    edge[:, :-1] |= pixels[:, 1:] != pixels[:, :-1]
    edge[[0, -1], :] |= pixels[[0, -1], :]
    edge[:, [0, -1]] |= pixels[:, [0, -1]]
    out[edge & pixels] = colour
    return out
