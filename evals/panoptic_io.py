"""COCO panoptic files: id maps <-> RGB PNGs, categories and the annotation JSONs.

Segment ids are 24-bit and stored in PNGs as R + 256 G + 256^2 B (panopticapi's
``rgb2id``). The PQ evaluator reads a PNG as horizontal runs of ids (:class:`IdRuns`): files
whose rows all use the None/Sub filters (OpenCV's) straight from their inflated bytes
(libdeflate when the ``deflate`` package is installed, zlib otherwise), others through libspng
(pyspng) or OpenCV. Every problem names the file.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

try:
    import pyspng as _spng
except ImportError:  # optional speed-up
    _spng = None
try:
    import deflate as _deflate  # libdeflate
except ImportError:  # optional speed-up: zlib inflates the same streams, ~10x slower
    _deflate = None

from uvim_givt.data.images import read_complete
from uvim_givt.errors import DataError, EvalError

OFFSET = 256 * 256 * 256  # segment ids are 24-bit: R + 256 G + 256^2 B
VOID = 0
_MAX_LISTED = 10  # how many offending names an error message spells out


class PanopticEvalError(EvalError):
    """Bad evaluator input (file, image, segment or category); the message names the culprit."""


# --------------------------------------------------------------------------------------------
# id maps <-> RGB PNGs


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB colours -> (H, W) uint32 segment ids ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise PanopticEvalError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.uint32)
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids (< 2**24) -> (H, W, 3) uint8 RGB colours."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise PanopticEvalError(
            f"segment ids must lie in [0, {OFFSET}), got {ids.min()}..{ids.max()}"
        )
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def write_id_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Writes an id map as a COCO panoptic RGB PNG."""
    bgr = np.ascontiguousarray(id_to_rgb(ids)[..., ::-1])  # OpenCV writes BGR
    try:
        ok = cv2.imwrite(os.fspath(path), bgr)
    except cv2.error as e:  # e.g. no writer for the file extension
        raise PanopticEvalError(f"could not write PNG {path}: {e}") from None
    if not ok:
        raise PanopticEvalError(f"could not write PNG {path}")


def _png_layout(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(height, width, bytes per pixel, zlib stream) of an 8-bit, non-interlaced RGB(A) PNG;
    None for anything else (left to the general decoders)."""
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or colour not in (2, 6) or interlace or not width or not height:
        return None
    parts, pos, end = [], 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    return height, width, 3 if colour == 2 else 4, b"".join(parts)


def _inflate(stream: bytes, size: int) -> bytes | None:
    """The zlib stream inflated (libdeflate is ~10x faster than zlib on these streams); None
    when it is corrupt or does not hold exactly ``size`` bytes."""
    try:
        out = _deflate.zlib_decompress(stream, size) if _deflate else zlib.decompress(stream)
    except (zlib.error, getattr(_deflate, "DeflateError", zlib.error)):
        return None
    return out if len(out) == size else None


@dataclass(frozen=True)
class IdRuns:
    """An (H, W) id map as horizontal runs: ``starts`` (sorted flat pixel indices, every row's
    first pixel among them) and the id of each run. Panoptic maps are piecewise constant, so
    this is ~30x smaller than the map and is what the PQ matcher works on."""

    shape: tuple[int, int]
    starts: np.ndarray  # int64
    values: np.ndarray  # uint32

    @classmethod
    def of_map(cls, ids: np.ndarray) -> IdRuns:
        """The runs of a dense (H, W) map."""
        height, width = ids.shape
        flat = np.ascontiguousarray(ids).reshape(-1)
        change = np.empty(flat.size, bool)
        if flat.size:
            np.not_equal(flat[1:], flat[:-1], out=change[1:])
            change[::width] = True  # a run never wraps onto the next row
        starts = np.flatnonzero(change)
        return cls((height, width), starts, flat[starts].astype(np.uint32, copy=False))

    def dense(self) -> np.ndarray:
        """The (H, W) uint32 map."""
        size = self.shape[0] * self.shape[1]
        lengths = np.diff(self.starts, append=size)
        return np.repeat(self.values, lengths).reshape(self.shape)


def _sub_filtered_runs(raw: np.ndarray, height: int, width: int, bpp: int) -> IdRuns | None:
    """Id runs of a PNG whose rows are all filtered None or Sub (OpenCV writes Sub), without
    unfiltering every byte; None for other filters.

    With the Sub filter a byte is stored as its difference to the same byte of the pixel on its
    left, so on a piecewise-constant map almost every stored byte is zero and a pixel's colour
    is the running sum (mod 256) of the few non-zero differences before it in its row. Only
    those pixels are touched."""
    stride = width * bpp + 1
    rows = raw.reshape(height, stride)
    kinds = rows[:, 0]
    if (kinds > 1).any():
        return None
    if not kinds.all():  # None-filtered rows: turn them into Sub differences first
        rows = rows.copy()
        plain = rows[kinds == 0, 1:]
        plain[:, bpp:] -= rows[kinds == 0, 1:-bpp]
        rows[kinds == 0, 1:] = plain
        raw = rows.reshape(-1)
    # Non-zero bytes, found a 64-bit word at a time (the buffer is ~99% zeros).
    pad = -raw.size % 8
    words = np.concatenate([raw, np.zeros(pad, np.uint8)]) if pad else raw
    hot = np.flatnonzero(words.view(np.uint64))
    sub = np.flatnonzero(words.view(np.uint64)[hot].view(np.uint8))
    pos = hot[sub >> 3] * 8 + (sub & 7)
    row, col = np.divmod(pos, stride)
    col -= 1
    keep = (col >= 0) & (col % bpp < 3)  # filter-type bytes and alpha leave ids alone
    pixel = row[keep] * width + col[keep] // bpp
    start = np.zeros(height * width, bool)
    start[pixel] = True
    start[::width] = True  # every row starts a run
    starts = np.flatnonzero(start)
    r, c = np.divmod(starts, width)
    first = raw[(r * stride + 1 + c * bpp)[:, None] + np.arange(3)]  # (runs, 3) differences
    # Running sums per row: uint8 sums wrap mod 256 exactly as the filter does.
    total = np.cumsum(first, axis=0, dtype=np.uint8)
    row_first = np.flatnonzero(c == 0)
    before = np.zeros((len(row_first), 3), np.uint8)
    before[1:] = total[row_first[1:] - 1]
    colour = total - np.repeat(before, np.diff(row_first, append=len(starts)), axis=0)
    ids = colour[:, 0].astype(np.uint32)
    ids |= colour[:, 1].astype(np.uint32) << 8
    ids |= colour[:, 2].astype(np.uint32) << 16
    return IdRuns((height, width), starts, ids)


def _decode_ids(data: bytes) -> np.ndarray | IdRuns | None:
    """PNG bytes -> (H, W) uint32 ids (runs where the fast path takes the file), by the fastest
    decoder that takes it; None when it is not a PNG any of them reads. The general decoders'
    2-D and 16-bit arrays are returned as they are, for the caller to refuse."""
    if not data:
        return None
    layout = _png_layout(data)
    if layout is not None:
        height, width, bpp, stream = layout
        raw = _inflate(stream, height * (width * bpp + 1))
        if raw is not None:
            runs = _sub_filtered_runs(np.frombuffer(raw, np.uint8), height, width, bpp)
            if runs is not None:
                return runs
    if _spng is not None and layout is not None:
        try:
            # RGBA out, so that one uint32 view gives R + G<<8 + B<<16 + A<<24.
            img = np.ascontiguousarray(_spng.load(data, "RGBA"))
            ids = img.view("<u4")[..., 0]
            ids &= 0xFFFFFF  # alpha is ignored, as panopticapi ignores it
            return ids
        except Exception:  # noqa: BLE001 - fall through to OpenCV's verdict
            pass
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        return img
    img = img.astype(np.uint32)
    return img[..., 2] | (img[..., 1] << 8) | (img[..., 0] << 16)  # OpenCV gives BGR(A)


def read_id_runs(path: str | os.PathLike) -> IdRuns:
    """Reads a COCO panoptic RGB(A) PNG as id runs; bad files raise, named."""
    path = os.fspath(path)
    try:
        data = read_complete(path)
    except DataError as e:
        # "<path>: cannot read (...)" for a missing file, "<path>: truncated PNG ..." else
        verb = "read" if ": cannot read (" in str(e) else "decode"
        raise PanopticEvalError(f"cannot {verb} PNG {e}") from None
    ids = _decode_ids(data)
    if ids is None:
        raise PanopticEvalError(f"cannot decode PNG {path}: empty, truncated or not an image")
    if isinstance(ids, IdRuns):
        return ids
    if ids.dtype != np.uint32 or ids.ndim != 2:
        kind = f"{ids.dtype} with {1 if ids.ndim == 2 else ids.shape[2]} channel(s)"
        raise PanopticEvalError(f"PNG {path} is {kind}; panoptic PNGs are 8-bit RGB")
    return IdRuns.of_map(ids)


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """Reads a COCO panoptic RGB(A) PNG into an (H, W) uint32 id map; bad files raise, named."""
    return read_id_runs(path).dense()


# --------------------------------------------------------------------------------------------
# categories


def load_categories(categories: Any) -> dict[int, dict[str, Any]]:
    """Categories as ``{id: info}``, from a JSON path, a list of dicts, ``{"categories": [...]}``
    or an ``{id: info}`` mapping. Each needs an ``isthing`` flag."""
    source = "categories"
    if isinstance(categories, str | os.PathLike):
        source = os.fspath(categories)
        categories = _load_json(source, "categories")
    if isinstance(categories, Mapping) and "categories" in categories:
        categories = categories["categories"]
    if isinstance(categories, Mapping):
        items = [{**dict(info), "id": int(cid)} for cid, info in categories.items()]
    elif isinstance(categories, Sequence) and not isinstance(categories, str):
        items = list(categories)
    else:
        raise PanopticEvalError(f"{source}: expected a list of category dicts")
    out: dict[int, dict[str, Any]] = {}
    for i, cat in enumerate(items):
        if not isinstance(cat, Mapping) or "id" not in cat or "isthing" not in cat:
            raise PanopticEvalError(f"{source}: category #{i} needs 'id' and 'isthing': {cat!r}")
        cid = int(cat["id"])
        if cid in out:
            raise PanopticEvalError(f"{source}: category id {cid} is listed twice")
        out[cid] = dict(cat)
    if not out:
        raise PanopticEvalError(f"{source}: no categories")
    return out


# --------------------------------------------------------------------------------------------
# files mode


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise PanopticEvalError(f"cannot read {what} JSON {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PanopticEvalError(f"{what} JSON {path} is not valid JSON: {e}") from None


def _json_doc(doc: Any, what: str) -> tuple[str, Any]:
    """(name for messages, loaded document) of a JSON path or an already loaded dict."""
    if isinstance(doc, str | os.PathLike):
        return os.fspath(doc), _load_json(os.fspath(doc), what)
    return f"{what} JSON", doc


def _png_dir(png_dir: str | os.PathLike | None, doc: Any, name: str) -> str:
    """The PNG folder; pq_compute's default is X for X.json."""
    if png_dir is not None:
        return os.fspath(png_dir)
    if not isinstance(doc, str | os.PathLike):
        raise PanopticEvalError(f"the PNG folder of the {name} must be given (it is not a file)")
    return name.removesuffix(".json")


def _annotations(doc: Any, name: str) -> dict[Any, Mapping[str, Any]]:
    """image_id -> annotation, checking the keys pq_compute relies on."""
    anns = doc.get("annotations") if isinstance(doc, Mapping) else None
    if not isinstance(anns, list):
        raise PanopticEvalError(f"{name}: no 'annotations' list")
    out: dict[Any, Mapping[str, Any]] = {}
    for i, ann in enumerate(anns):
        if not isinstance(ann, Mapping) or any(
            k not in ann for k in ("image_id", "file_name", "segments_info")
        ):
            raise PanopticEvalError(
                f"{name}: annotation #{i} needs 'image_id', 'file_name' and 'segments_info'"
            )
        if ann["image_id"] in out:
            raise PanopticEvalError(f"{name}: image_id {ann['image_id']} is annotated twice")
        out[ann["image_id"]] = ann
    return out
