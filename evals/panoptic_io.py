"""COCO panoptic files: id maps <-> RGB PNGs, categories and the annotation JSONs.

Segment ids are 24-bit and stored in PNGs as R + 256 G + 256^2 B (panopticapi's
``rgb2id``). PNGs are decoded with pyspng when installed (OpenCV otherwise), and every
problem names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2

try:
    import pyspng as _spng
except ImportError:  # optional speed-up
    _spng = None
import numpy as np

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


def _decode_png(data: bytes) -> tuple[np.ndarray | None, bool]:
    """Decodes PNG bytes -> (array, is_bgr). libspng (pyspng) decodes these PNGs ~3x faster
    than OpenCV's libpng; OpenCV is the fallback (and names what libspng refuses)."""
    if not data:
        return None, False
    if _spng is not None:
        try:
            return _spng.load(data), False
        except Exception:  # noqa: BLE001 - fall through to OpenCV's verdict
            pass
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), True


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """Reads a COCO panoptic RGB(A) PNG into an (H, W) uint32 id map; bad files raise, named."""
    path = os.fspath(path)
    try:
        data = read_complete(path)
    except DataError as e:
        # "<path>: cannot read (...)" for a missing file, "<path>: truncated PNG ..." else
        verb = "read" if ": cannot read (" in str(e) else "decode"
        raise PanopticEvalError(f"cannot {verb} PNG {e}") from None
    img, bgr = _decode_png(data)
    if img is None:
        raise PanopticEvalError(f"cannot decode PNG {path}: empty, truncated or not an image")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        kind = f"{img.dtype} with {1 if img.ndim == 2 else img.shape[2]} channel(s)"
        raise PanopticEvalError(f"PNG {path} is {kind}; panoptic PNGs are 8-bit RGB")
    # One SIMD pass to R,G,B,A bytes, read as little-endian uint32 = R + G<<8 + B<<16 + A<<24;
    # masking the alpha byte leaves the id (alpha is ignored, as panopticapi ignores it).
    if bgr:
        code = cv2.COLOR_BGR2RGBA if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    else:
        code = cv2.COLOR_RGB2RGBA if img.shape[2] == 3 else None
        if code is None:
            img = np.ascontiguousarray(img)
            ids = img.view("<u4")[..., 0].copy()
            ids &= 0xFFFFFF
            return ids
    ids = cv2.cvtColor(img, code).view("<u4")[..., 0]
    ids &= 0xFFFFFF
    return ids


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
