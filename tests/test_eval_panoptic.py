"""evals.panoptic against panopticapi's own pq_compute, rule by rule, plus bad input and the CLI.

The official panopticapi pins numpy<2, so it is not installed beside the suite: .ci/run runs
this module a second time in an environment of its own (tests/requirements-panopticapi.txt)
with ``UVIM_GIVT_REQUIRE_PANOPTICAPI=1``, where a missing panopticapi is an error. In the main
environment the comparisons with pq_compute skip; the rest (PNG decoding against PIL, bad
input, the CLI) runs in both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from evals import _pq_synth as synth
from evals import panoptic_io, pq
from evals.panoptic import main, parse_args
from evals.panoptic_io import PanopticEvalError, read_id_png, read_id_runs, write_id_png
from evals.pq import PQAccumulator, panoptic_quality

try:
    from panopticapi.evaluation import pq_compute
    from panopticapi.utils import rgb2id
except ImportError:
    if os.environ.get("UVIM_GIVT_REQUIRE_PANOPTICAPI", "") not in ("", "0"):
        raise
    pq_compute = None

    def rgb2id(color: np.ndarray) -> np.ndarray:
        """COCO's id encoding (panopticapi.utils.rgb2id): R + 256 G + 256^2 B."""
        color = color.astype(np.uint32)
        return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]

COCO_SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/coco_panoptic_sample"

# Two things, two stuff, and a thing that never appears (it must be left out of the averages).
CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "grass", "isthing": 0},
    {"id": 5, "name": "unused", "isthing": 1},
]
H, W = 20, 40


def seg(sid: int, cat: int, ids: np.ndarray | None = None, crowd: int = 0) -> dict:
    """A segments_info entry; ground truth gets the area counted in ``ids``."""
    out = {"id": sid, "category_id": cat, "iscrowd": crowd}
    if ids is not None:
        out["area"] = int((ids == sid).sum())
    return out


def write_case(root: Path, gt: list, pred: list, categories: list = CATS) -> tuple[str, ...]:
    """gt/pred: [(image_id, ids, segments)]; returns (gt_json, gt_dir, pred_json, pred_dir)."""
    gt_json, gt_dir = synth.write_panoptic_set(root, "gt", gt, categories, writer="pil")
    pred_json, pred_dir = synth.write_panoptic_set(root, "pred", pred, categories)
    return gt_json, gt_dir, pred_json, pred_dir


def reference(files: tuple[str, ...]) -> dict:
    if pq_compute is None:
        pytest.skip("panopticapi runs in its own environment (numpy<2): see .ci/run")
    gt_json, gt_dir, pred_json, pred_dir = files
    with contextlib.redirect_stdout(io.StringIO()):  # pq_compute prints progress
        return pq_compute(gt_json, pred_json, gt_dir, pred_dir)


def assert_same(ref: dict, ours: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for k in ("pq", "sq", "rq"):
            assert ours[group][k] == pytest.approx(ref[group][k], abs=1e-9), (group, k)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cid, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert ours["per_class"][cid][k] == pytest.approx(r[k], abs=1e-9), (cid, k)


def check(root: Path, gt: list, pred: list, categories: list = CATS) -> dict:
    """Ours (threads and single worker) equals pq_compute on these files; returns ours."""
    files = write_case(root, gt, pred, categories)
    ref = reference(files)
    ours = panoptic_quality(*files, workers=2)
    assert_same(ref, ours)
    assert_same(ref, panoptic_quality(*files, workers=1))
    return ours


def random_case(rng: np.random.Generator, cats: list, num_images: int, h: int, w: int,
                num_segments: tuple[int, int], strength: float = 1.0) -> tuple[list, list]:
    """(gts, preds) of images 1..num_images: synthetic ground truths and their perturbed
    predictions, drawn from ``rng`` image by image."""
    gts, preds = [], []
    for image_id in range(1, num_images + 1):
        gt, gt_segs = synth.make_ground_truth(rng, cats, h, w, num_segments=num_segments)
        pred, pred_segs = synth.perturb_prediction(rng, gt, gt_segs, cats, strength=strength)
        gts.append((image_id, gt, gt_segs))
        preds.append((image_id, pred, pred_segs))
    return gts, preds


def background() -> tuple[np.ndarray, np.ndarray]:
    """gt and pred maps with a perfectly predicted sky band in rows 15.. (stuff, so that
    pq_compute never averages over an empty Stuff set)."""
    gt = np.zeros((H, W), np.int64)
    gt[15:] = 300
    pred = np.zeros((H, W), np.int64)
    pred[15:] = 900
    return gt, pred


# ------------------------------------------------------------------------------------------
# the rules, each against pq_compute


def test_perfect_match_with_different_ids(tmp_path: Path) -> None:
    gt, pred = background()
    gt[:5, :10], gt[5:15, 10:30] = 11, 12
    pred[:5, :10], pred[5:15, 10:30] = 777, 778
    gt_segs = [seg(11, 1, gt), seg(12, 2, gt), seg(300, 3, gt)]
    pred_segs = [seg(777, 1), seg(778, 2), seg(900, 3)]
    ours = check(tmp_path, [(1, gt, gt_segs)], [(1, pred, pred_segs)])
    assert ours["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}
    assert ours["per_class"][1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    # The class in neither is skipped in the averages but reported as zeros.
    assert ours["per_class"][5] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert ours["Things"]["n"] == 2 and ours["Stuff"]["n"] == 1


@pytest.mark.parametrize(
    "extra_inside, extra_outside, matched",
    [
        (0, 0, False),  # IoU = 100 / 200 = 0.5 exactly: not a match (IoU must exceed 0.5)
        (1, 0, True),  # 101 / 200
        (0, -1, True),  # 100 / 199
        (-1, 0, False),  # 99 / 200
    ],
)
def test_iou_threshold(
    tmp_path: Path, extra_inside: int, extra_outside: int, matched: bool
) -> None:
    gt, pred = background()
    gt[:5, :30] = 11  # 150 px
    inside = np.zeros((H, W), bool)
    inside[:5, :20] = True  # 100 px of the gt segment...
    outside = np.zeros((H, W), bool)
    outside[5:15, :5] = True  # ...plus 50 px of nothing (not VOID: gt id 55, not in the JSON)
    gt[5:15, :5] = 55
    # Move single pixels in or out to land just above or below 0.5.
    if extra_inside > 0:
        inside[0, 20] = True
    if extra_inside < 0:
        inside[0, 0] = False
    if extra_outside < 0:
        outside[5, 0] = False
    pred[inside | outside] = 777
    ours = check(
        tmp_path,
        [(1, gt, [seg(11, 1, gt), seg(300, 3, gt)])],
        [(1, pred, [seg(777, 1), seg(900, 3)])],
    )
    expected = (1, 0, 0) if matched else (0, 1, 1)
    person = ours["per_class"][1]
    assert (person["tp"], person["fp"], person["fn"]) == expected


def test_void_left_out_of_the_union(tmp_path: Path) -> None:
    gt, pred = background()
    gt[:10, :10] = 11  # 100 px; the pred covers 60 of them and 60 px of VOID
    pred[:10, 4:10] = 777
    pred[:10, 10:16] = 777
    ours = check(
        tmp_path,
        [(1, gt, [seg(11, 1, gt), seg(300, 3, gt)])],
        [(1, pred, [seg(777, 1), seg(900, 3)])],
    )
    # IoU = 60 / (120 + 100 - 60 - 60) = 0.6 (it would be 0.375 counting VOID).
    assert ours["per_class"][1]["tp"] == 1
    assert ours["per_class"][1]["sq"] == pytest.approx(0.6)


@pytest.mark.parametrize("void_px, is_fp", [(11, False), (10, True)])
def test_unmatched_prediction_mostly_on_void_is_ignored(
    tmp_path: Path, void_px: int, is_fp: bool
) -> None:
    gt, pred = background()
    gt[:5, 20:40] = 11  # a car nobody predicted: one FN
    pred[0, :void_px] = 777  # on VOID
    pred[1, : 20 - void_px] = 777  # and on nothing in particular (gt id 55, not listed)
    gt[1, :20] = 55
    ours = check(
        tmp_path,
        [(1, gt, [seg(11, 2, gt), seg(300, 3, gt)])],
        [(1, pred, [seg(777, 1), seg(900, 3)])],
    )
    assert ours["per_class"][1]["fp"] == int(is_fp)  # > half on VOID -> ignored; half -> FP
    assert ours["per_class"][2]["fn"] == 1


def test_crowd_regions(tmp_path: Path) -> None:
    gt, pred = background()
    gt[:10, :20] = 21  # person crowd
    gt[:10, 20:30] = 22  # car crowd
    gt[:10, 30:35] = 23  # second person crowd: pq_compute only remembers the last one listed
    gt_segs = [seg(21, 1, gt, crowd=1), seg(22, 2, gt, crowd=1), seg(23, 1, gt, crowd=1)]
    pred[:10, :8] = 701  # person on the first person crowd: counted, as that crowd is forgotten
    pred[:10, 30:35] = 702  # person on the last person crowd: ignored
    pred[:10, 20:24] = 703  # person on the car crowd: a false positive
    pred[:4, 24:30] = 704  # car on the car crowd: ignored; crowds never count as FN
    pred_segs = [seg(701, 1), seg(702, 1), seg(703, 1), seg(704, 2), seg(900, 3)]
    ours = check(
        tmp_path,
        [(1, gt, [*gt_segs, seg(300, 3, gt)])],
        [(1, pred, pred_segs)],
    )
    person, car = ours["per_class"][1], ours["per_class"][2]
    assert (person["tp"], person["fp"], person["fn"]) == (0, 2, 0)
    assert (car["tp"], car["fp"], car["fn"]) == (0, 0, 0)


def test_things_stuff_and_several_images(tmp_path: Path) -> None:
    gts, preds = [], []
    for image_id, shift in ((1, 0), (2, 3), (3, 7)):
        gt, pred = background()
        gt[:10, :15], gt[:10, 15:], gt[10:15, :] = 11, 12, 400  # person, car, grass
        pred[:10, shift : 15 + shift], pred[10:15, 5:] = 777, 888  # the car is never found
        gt_segs = [seg(11, 1, gt), seg(12, 2, gt), seg(400, 4, gt), seg(300, 3, gt)]
        gts.append((image_id, gt, gt_segs))
        preds.append((image_id, pred, [seg(777, 1), seg(888, 4), seg(900, 3)]))
    ours = check(tmp_path, gts, preds)
    assert ours["Things"]["n"] == 2 and ours["Stuff"]["n"] == 2 and ours["All"]["n"] == 4
    person, car = ours["per_class"][1], ours["per_class"][2]
    # IoUs 1, 120/180 and 80/220: the last is both a false positive and a false negative.
    assert (person["tp"], person["fp"], person["fn"]) == (2, 1, 1)
    assert (car["tp"], car["fn"]) == (0, 3)
    assert ours["per_class"][4]["tp"] == 3


def test_ground_truth_json_area_is_used(tmp_path: Path) -> None:
    """pq_compute takes the gt area from the JSON, not from the PNG."""
    gt, pred = background()
    gt[:10, :10] = 11
    pred[:10, :7] = 777  # IoU 0.7 with the true area, 70/130 with the JSON's
    gt_segs = [seg(11, 1, gt) | {"area": 130}, seg(300, 3, gt)]
    ours = check(tmp_path, [(1, gt, gt_segs)], [(1, pred, [seg(777, 1), seg(900, 3)])])
    assert ours["per_class"][1]["sq"] == pytest.approx(70 / 130)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blobs(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cats = synth.synthetic_categories(num_things=6, num_stuff=4)
    gts, preds = random_case(rng, cats, 5, 60, 90, num_segments=(4, 14), strength=1.5)
    ours = check(tmp_path, gts, preds, cats)
    assert 0 < ours["All"]["pq"] < 1


def test_in_memory_accumulator_equals_files_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    cats = synth.synthetic_categories(num_things=5, num_stuff=3)
    acc = PQAccumulator(cats)
    gts, preds = random_case(rng, cats, 4, 50, 70, num_segments=(4, 10))
    for (image_id, gt, gt_segs), (_, pred, pred_segs) in zip(gts, preds, strict=True):
        # Without areas in the JSON the pixel counts are used: same numbers here.
        bare = [{k: v for k, v in s.items() if k != "area"} for s in gt_segs]
        acc.add(gt.astype(np.int32), bare, pred, pred_segs, image=image_id)
    files = write_case(tmp_path, gts, preds, cats)
    assert acc.num_images == 4
    assert_same(panoptic_quality(*files), acc.result())
    # Shards merge into the same sums.
    left, right = PQAccumulator(cats), PQAccumulator(cats)
    for (i, gt, gs), (_, pred, ps) in zip(gts, preds, strict=True):
        (left if i % 2 else right).add(gt, gs, pred, ps)
    left.merge(right)
    assert_same(acc.result(), left.result())


# ------------------------------------------------------------------------------------------
# real COCO annotations


def coco_sample() -> tuple[dict, Path]:
    gt_json = COCO_SAMPLE / "sample_data/panoptic_examples.json"
    if not gt_json.is_file():
        pytest.skip("no ../shared/data/coco_panoptic_sample (a fresh clone has none)")
    return json.loads(gt_json.read_text()), gt_json.with_suffix("")


def test_coco_png_decoding_matches_panopticapi() -> None:
    _, png_dir = coco_sample()
    for png in sorted(png_dir.glob("*.png")):
        expected = rgb2id(np.array(Image.open(png), dtype=np.uint32))
        np.testing.assert_array_equal(read_id_png(png), expected)


def test_coco_gt_against_itself() -> None:
    _, png_dir = coco_sample()
    gt_json = str(png_dir) + ".json"
    categories = COCO_SAMPLE / "panoptic_coco_categories.json"  # the same 133 as in the JSON
    ours = panoptic_quality(gt_json, png_dir, gt_json, png_dir, categories=categories)
    assert ours["All"]["pq"] == 1.0 and ours["All"]["n"] == 8
    assert_same(reference((gt_json, str(png_dir), gt_json, str(png_dir))), ours)


def test_coco_gt_against_perturbed_prediction(tmp_path: Path) -> None:
    doc, png_dir = coco_sample()
    rng = np.random.default_rng(0)
    thing_ids = [c["id"] for c in doc["categories"] if c["isthing"]]
    kernel = np.ones((3, 3), np.uint8)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    anns = []
    for ann in doc["annotations"]:
        ids = read_id_png(png_dir / ann["file_name"]).astype(np.int64)
        segs = [dict(s) for s in ann["segments_info"]]
        for k, s in enumerate(segs):
            mask = ids == s["id"]
            if k % 4 == 0:  # eroded
                ids[mask & ~cv2.erode(mask.astype(np.uint8), kernel, iterations=4).astype(bool)] = 0
            elif k % 4 == 1:  # shifted
                ids[mask] = 0
                ids[np.roll(mask, (5, 9), axis=(0, 1))] = s["id"]
        dropped, relabeled = segs[2], segs[3]
        ids[ids == dropped["id"]] = 0
        relabeled["category_id"] = int(rng.choice(thing_ids))
        present = set(np.unique(ids).tolist())
        segs = [s for s in segs if s["id"] in present and s is not dropped]
        for s in segs:
            del s["area"], s["iscrowd"]
        write_id_png(pred_dir / ann["file_name"], ids)
        anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                     "segments_info": segs})  # fmt: skip
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": anns}))
    files = (str(png_dir) + ".json", str(png_dir), str(pred_json), str(pred_dir))
    ours = panoptic_quality(*files)
    assert 0.3 < ours["All"]["pq"] < 0.95
    assert_same(reference(files), ours)


# ------------------------------------------------------------------------------------------
# bad input


@pytest.fixture
def good(tmp_path: Path) -> dict:
    """A valid two-image case (as loaded dicts and file paths) for the bad-input tests."""
    gt, pred = background()
    gt[:5, :10] = 11
    pred[:5, :10] = 777
    gt_segs = [seg(11, 1, gt), seg(300, 3, gt)]
    pred_segs = [seg(777, 1), seg(900, 3)]
    files = write_case(tmp_path, [(1, gt, gt_segs), (2, gt, gt_segs)],
                       [(1, pred, pred_segs), (2, pred, pred_segs)])  # fmt: skip
    with open(files[2]) as f:
        pred_doc = json.load(f)
    return {"files": files, "pred_doc": pred_doc, "pred": pred, "tmp": tmp_path}


def rewrite_pred_json(good: dict) -> None:
    with open(good["files"][2], "w") as f:
        json.dump(good["pred_doc"], f)


def raises(good: dict, *words: str) -> str:
    with pytest.raises(PanopticEvalError) as e:
        panoptic_quality(*good["files"], workers=2)
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    return str(e.value)


def test_segment_in_png_not_in_json(good: dict) -> None:
    good["pred_doc"]["annotations"][1]["segments_info"].pop(0)  # 777
    rewrite_pred_json(good)
    raises(good, "777", "in the PNG", "000000000002.png", "not in its segments_info", "image 2")


def test_segment_in_json_not_in_png(good: dict) -> None:
    good["pred_doc"]["annotations"][0]["segments_info"].append(seg(4242, 2))
    rewrite_pred_json(good)
    raises(good, "4242", "not in the PNG", "000000000001.png", "image 1")


def test_unknown_category(good: dict) -> None:
    good["pred_doc"]["annotations"][0]["segments_info"][0]["category_id"] = 99
    rewrite_pred_json(good)
    raises(good, "unknown category_id 99", "segment id 777", "image 1", "pred.json")


def test_png_shape_differs(good: dict) -> None:
    png = os.path.join(good["files"][3], "000000000002.png")
    write_id_png(png, good["pred"][:, :-3])
    raises(good, "000000000002.png", "20x37", "20x40", "image 2")


def test_images_without_prediction(tmp_path: Path) -> None:
    gt, pred = background()
    gt_segs, pred_segs = [seg(300, 3, gt)], [seg(900, 3)]
    files = write_case(tmp_path, [(i, gt, gt_segs) for i in range(1, 14)],
                       [(1, pred, pred_segs)])  # fmt: skip
    with pytest.raises(PanopticEvalError) as e:
        panoptic_quality(*files)
    msg = str(e.value)
    assert "no prediction for 12 of the 13" in msg
    assert "000000000002.png" in msg and "(2 more)" in msg and "000000000013.png" not in msg


def test_prediction_for_unknown_image(good: dict) -> None:
    extra = dict(good["pred_doc"]["annotations"][0], image_id=31337)
    good["pred_doc"]["annotations"].append(extra)
    rewrite_pred_json(good)
    raises(good, "31337", "not in the ground truth")


@pytest.mark.parametrize(
    "damage, words",
    [
        ("truncated", ["cannot decode"]),
        ("garbage", ["cannot decode"]),
        ("missing", ["cannot read", "No such file"]),
        ("grayscale", ["1 channel", "8-bit RGB"]),
    ],
)
def test_unreadable_png(good: dict, damage: str, words: list[str]) -> None:
    png = os.path.join(good["files"][3], "000000000002.png")
    data = Path(png).read_bytes()
    if damage == "missing":
        os.remove(png)
    elif damage == "grayscale":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(png)
    else:
        Path(png).write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello")
    raises(good, png, *words)


def png_bytes(pixels: np.ndarray, filters: list[int], chunk: int = 1000) -> bytes:
    """A PNG of 8-bit RGB(A) pixels with the given filter type per row (None/Sub/Up), written
    from the PNG specification, the IDAT split into ``chunk``-byte pieces."""
    h, w, bpp = pixels.shape
    rows = []
    for r, kind in enumerate(filters):
        x = pixels[r].reshape(-1).astype(np.int64)
        if kind == 1:
            x = x - np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        elif kind == 2:
            x = x - (pixels[r - 1].reshape(-1) if r else 0)
        rows.append(bytes([kind]) + (x % 256).astype(np.uint8).tobytes())
    stream = zlib.compress(b"".join(rows))

    def chunk_of(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2 if bpp == 3 else 6, 0, 0, 0)
    idats = [chunk_of(b"IDAT", stream[i : i + chunk]) for i in range(0, len(stream), chunk)]
    return (b"\x89PNG\r\n\x1a\n" + chunk_of(b"IHDR", ihdr) + b"".join(idats)
            + chunk_of(b"IEND", b""))  # fmt: skip


def pil_ids(path: Path) -> np.ndarray:
    """panopticapi's own reading of a panoptic PNG."""
    return rgb2id(np.array(Image.open(path), dtype=np.uint32))


@pytest.mark.parametrize("bpp", [3, 4])
@pytest.mark.parametrize("width", [1, 2, 5, 37])
def test_fast_png_path_equals_pil(tmp_path: Path, bpp: int, width: int) -> None:
    """The sparse None/Sub decoder, on piecewise-constant and noise rows, every width mod 8,
    RGB and RGBA (alpha changing where the id does not), against PIL + panopticapi's rgb2id."""
    rng = np.random.default_rng(width * bpp)
    h = 9
    pixels = np.repeat(rng.integers(0, 256, size=(h, 3, bpp), dtype=np.uint8), 13, axis=1)
    pixels = np.ascontiguousarray(pixels[:, :width])
    pixels[4] = rng.integers(0, 256, size=(width, bpp), dtype=np.uint8)  # a row of noise
    pixels[5] = pixels[6] = 0
    if bpp == 4:
        pixels[7, :, 3] = np.arange(width)  # alpha varies along a constant-colour row
    for name, filters in (("sub", [1] * h), ("mixed", [1, 0, 0, 1, 0, 1, 1, 0, 1])):
        png = tmp_path / f"{name}.png"
        png.write_bytes(png_bytes(pixels, filters, chunk=7))
        expected = pil_ids(png)
        np.testing.assert_array_equal(read_id_png(png), expected)
        runs = read_id_runs(png)
        assert runs.starts[0] == 0 and (np.diff(runs.starts) > 0).all()
        np.testing.assert_array_equal(runs.dense(), expected)


def test_png_decoders_agree_on_every_path(tmp_path: Path, monkeypatch) -> None:
    """Sub-only (OpenCV), Up rows (libspng), zlib instead of libdeflate, and OpenCV alone
    all read the same ids; the fast path is the one taken for OpenCV's files."""
    rng = np.random.default_rng(3)
    cats = synth.synthetic_categories(num_things=4, num_stuff=3)
    ids, _ = synth.make_ground_truth(rng, cats, 48, 61, num_segments=(5, 9))
    ids[0, :7] = 0xFFFFFF  # the largest id, all three bytes at 255
    write_id_png(tmp_path / "cv.png", ids)
    pixels = panoptic_io.id_to_rgb(ids)
    (tmp_path / "up.png").write_bytes(png_bytes(pixels, [1] + [2, 1, 0] * 15 + [2, 2]))
    Image.fromarray(pixels).save(tmp_path / "pil.png")
    data = (tmp_path / "cv.png").read_bytes()
    assert isinstance(panoptic_io._decode_ids(data), panoptic_io.IdRuns)
    for name in ("cv.png", "up.png", "pil.png"):
        np.testing.assert_array_equal(read_id_png(tmp_path / name), ids, err_msg=name)
    monkeypatch.setattr(panoptic_io, "_deflate", None)
    np.testing.assert_array_equal(read_id_png(tmp_path / "cv.png"), ids)
    monkeypatch.setattr(panoptic_io, "_spng", None)
    for name in ("cv.png", "up.png", "pil.png"):
        np.testing.assert_array_equal(read_id_png(tmp_path / name), ids, err_msg=name)


def test_png_with_corrupt_stream_is_refused(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[2:, 3:] = 200
    data = bytearray(png_bytes(pixels, [1] * 4))
    data[45:49] = b"\xff\x00\xff\x00"  # inside the zlib stream; IEND still at the end
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(PanopticEvalError, match="bad.png"):
        read_id_png(tmp_path / "bad.png")


def _pool_case(root: str) -> None:
    """Workers (forked or threads, as ``pq._can_fork`` says) give the serial result, and a bad
    image's error still reaches the caller, named."""
    rng = np.random.default_rng(11)
    cats = synth.synthetic_categories(num_things=5, num_stuff=3)
    gts, preds = random_case(rng, cats, 9, 40, 50, num_segments=(4, 9))
    files = write_case(Path(root), gts, preds, cats)
    assert_same(panoptic_quality(*files, workers=1), panoptic_quality(*files, workers=3))
    Path(files[3], "000000000006.png").write_bytes(b"not a png")
    with pytest.raises(PanopticEvalError, match="000000000006.png"):
        panoptic_quality(*files, workers=3)


def test_worker_threads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pq, "_can_fork", lambda: False)
    _pool_case(str(tmp_path))


def test_worker_processes(tmp_path: Path) -> None:
    """Forked workers, in a fresh interpreter: this one may run JAX's threads, which is
    exactly when the evaluator does not fork."""
    code = (
        "import sys; from evals import pq; assert pq._can_fork();"
        " from tests import test_eval_panoptic as t; t._pool_case(sys.argv[1])"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_category_only_predicted(tmp_path: Path) -> None:
    """A class absent from the ground truth but predicted: all FP, PQ 0, in the averages."""
    gt, pred = background()
    gt[:5, :10] = 11
    pred[:5, :10] = 777
    pred[15:, 20:30] = 778  # a car on the sky (the sky still matches, IoU 0.75)
    ours = check(
        tmp_path,
        [(1, gt, [seg(11, 1, gt), seg(300, 3, gt)])],
        [(1, pred, [seg(777, 1), seg(778, 2), seg(900, 3)])],
    )
    car = ours["per_class"][2]
    assert (car["tp"], car["fp"], car["fn"], car["pq"]) == (0, 1, 0, 0.0)
    assert ours["Things"]["n"] == 2


def test_rgba_png_alpha_is_ignored(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    expected = rgb2id(np.array(Image.open(tmp_path / "x.png"), dtype=np.uint32))
    np.testing.assert_array_equal(read_id_png(tmp_path / "x.png"), expected)


def test_cli_bad_input_exits_2_without_traceback(good: dict, capsys) -> None:
    good["pred_doc"]["annotations"][0]["segments_info"][0]["category_id"] = 99
    rewrite_pred_json(good)
    gt_json, gt_dir, pred_json, pred_dir = good["files"]
    argv = ["--gt-json", gt_json, "--gt-dir", gt_dir, "--pred-json", pred_json,
            "--pred-dir", pred_dir]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown category_id 99" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# command line


def test_cli_files_mode(good: dict, capsys) -> None:
    gt_json, _, pred_json, _ = good["files"]
    out = good["tmp"] / "res" / "pq.json"
    cats = good["tmp"] / "cats.json"
    cats.write_text(json.dumps(CATS))
    # Folders default to the JSON paths without .json, as in pq_compute.
    argv = ["--gt-json", gt_json, "--pred-json", pred_json, "--categories", str(cats),
            "--out", str(out), "--workers", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "PQ" in printed and "Things" in printed and "Stuff" in printed
    assert "100.0" in printed
    res = json.loads(out.read_text())
    assert res["All"]["pq"] == 1.0 and res["num_images"] == 2
    assert res["per_class"]["1"]["name"] == "person" and res["per_class"]["1"]["tp"] == 2


def test_cli_arguments() -> None:
    args = parse_args(["--ckpt", "runs/x", "--data", "embedded", "--max-examples", "8"])
    assert (args.ckpt, args.data, args.split, args.max_examples) == (
        "runs/x", "embedded", None, 8,  # None: each evaluator's own split
    )  # fmt: skip
    for bad in (
        ["--ckpt", "runs/x", "--gt-json", "a.json"],  # two modes at once
        ["--gt-json", "a.json"],  # no predictions
        ["--gt-json", "a.json", "--pred-json", "b.json", "--max-examples", "3"],
        ["--ckpt", "runs/x", "--max-examples", "0"],
    ):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        assert e.value.code == 2
