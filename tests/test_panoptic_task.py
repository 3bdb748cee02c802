"""Panoptic task: label coding round trips (the published coding on real COCO annotations is
in test_panoptic_published.py), the COCO folder reader, a tiny two-stage run."""

import json
import os

import cv2
import numpy as np
import pytest

from evals.panoptic_io import id_to_rgb, rgb_to_id
from tasks import panoptic as P
from uvim_givt.data.pipeline import DataError

CATS = [{"id": 1, "isthing": 1, "name": "a", "color": [255, 0, 0]},
        {"id": 7, "isthing": 1, "name": "b", "color": [0, 255, 0]},
        {"id": 20, "isthing": 0, "name": "s", "color": [0, 0, 255]},
        {"id": 21, "isthing": 0, "name": "t", "color": [9, 9, 9]}]


def _random_scene(rs, h=40, w=50):
    ids = np.zeros((h, w), np.int64)
    segs = []
    # stuff background in two halves, then random thing rectangles on top
    for sid, lab, sl in ((101, 2, np.s_[:, : w // 2]), (102, 3, np.s_[:, w // 2:])):
        ids[sl] = sid
        segs.append((sid, lab, False))
    for k in range(rs.randint(1, 6)):
        y, x = rs.randint(0, h - 6), rs.randint(0, w - 6)
        ids[y:y + rs.randint(3, 8), x:x + rs.randint(3, 8)] = 200 + k
        segs.append((200 + k, rs.randint(0, 2), False))
    present = set(np.unique(ids).tolist())
    segs = [s for s in segs if s[0] in present]
    ids[0, :3] = 0  # some void
    return ids, segs


def _partition(ids, cat_of):
    """Segmentation as a set of (frozenset of pixels, category)."""
    out = set()
    for sid in np.unique(ids):
        if sid == 0:
            continue
        out.add((frozenset(np.flatnonzero(ids.ravel() == sid).tolist()), cat_of[int(sid)]))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_encode_decode_round_trip(seed):
    """Published encoding -> its two-channel map -> published decoding gives the same
    segmentation (the real-COCO version is in test_panoptic_published.py)."""
    rs = np.random.RandomState(seed)
    ids, segs = _random_scene(rs)
    oid = np.array([s[0] for s in segs])
    lab = np.array([s[1] for s in segs])
    labels = P.encode_panoptic(ids, oid, lab, num_instances=16)
    out_ids, out_segs = P.decode_panoptic(labels, CATS, min_area_fraction=0.0)
    gt_cat = {int(i): CATS[int(la)]["id"] for i, la in zip(oid, lab, strict=True)}
    pred_cat = {s["id"]: s["category_id"] for s in out_segs}
    assert _partition(out_ids, pred_cat) == _partition(ids, gt_cat)
    for s in out_segs:
        assert s["area"] == int((out_ids == s["id"]).sum())


def test_instances_are_canonical_by_centre_of_mass():
    rs = np.random.RandomState(3)
    ids, segs = _random_scene(rs, 60, 60)
    oid = np.array([s[0] for s in segs])
    lab = np.array([s[1] for s in segs])
    labels = P.encode_panoptic(ids, oid, lab, 16)
    inst = labels[..., 1]
    # brute force: every segment (stuff too) sorted by the published key cx + H * cy
    centres = sorted((np.argwhere(ids == s[0]).mean(0) @ [60, 1], s[0]) for s in segs)
    for rank, (_, sid) in enumerate(centres, start=1):
        assert np.all(inst[ids == sid] == rank)
    assert np.all(inst[ids == 0] == 0)
    # a permutation of the segment ids gives the same labels (stable ordering)
    perm = {s[0]: 900 + i for i, s in enumerate(segs[::-1])}
    ids2 = np.vectorize(lambda v: perm.get(v, 0))(ids)
    labels2 = P.encode_panoptic(ids2, np.array([perm[s[0]] for s in segs]), lab, 16)
    np.testing.assert_array_equal(labels, labels2)


def test_crowd_keeps_its_class_and_instances_beyond_capacity_drop():
    ids = np.array([[1, 1, 2, 2], [3, 3, 4, 4]])
    labels = P.encode_panoptic(ids, np.array([1, 2, 3, 4]), np.array([0, 0, 0, 1]),
                               num_instances=3)
    # Segment 2 is crowd in COCO: published, it is labelled like any other segment.
    assert labels[..., 0].tolist() == [[1, 1, 1, 1], [1, 1, 2, 2]]
    assert labels[..., 1].tolist() == [[1, 1, 2, 2], [0, 0, 0, 0]]  # ids 3, 4 do not fit


def test_min_area_fraction_drops_to_void():
    labels = np.stack([np.array([[3, 3, 3], [3, 3, 1]]), np.array([[1, 1, 1], [1, 1, 2]])], -1)
    ids, segs = P.decode_panoptic(labels, CATS, min_area_fraction=1 / 6)
    assert [s["category_id"] for s in segs] == [20] and ids[1, 2] == 0
    ids, segs = P.decode_panoptic(labels, CATS, min_area_fraction=0.0)
    assert sorted(s["category_id"] for s in segs) == [1, 20]


def test_things_encoding_numbers_only_non_crowd_things():
    """``data.panoptic_encoding = "things"`` (tiny): stuff instance 0, crowd void, things
    ranked by (row, column) of their centre."""
    ids = np.array([[1, 1, 2, 2, 5], [3, 3, 4, 4, 5]])
    labels = P.encode_things(ids, np.array([1, 2, 3, 4, 5]), np.array([0, 0, 1, 2, 0]),
                             np.array([False, True, False, False, False]),
                             np.array([c["isthing"] == 1 for c in CATS]), num_instances=3)
    assert labels[..., 0].tolist() == [[1, 1, 0, 0, 1], [2, 2, 3, 3, 1]]
    # things 1 (centre row 0), 5 (row 0.5), 3 (row 1): id 3 does not fit 3 channels
    assert labels[..., 1].tolist() == [[1, 1, 0, 0, 2], [0, 0, 0, 0, 2]]


def test_things_decoding_is_per_pixel():
    sem = _one_hot(np.array([[1, 1, 2, 3, 3, 3]]), 5)
    ins = _one_hot(np.array([[1, 1, 1, 0, 1, 2]]), 4)
    ids, segs = P.decode_things({"semantics": sem, "instances": ins}, CATS, 0.0)
    cat_of = {s["id"]: s["category_id"] for s in segs}
    # pixel 2 is its own (class b, instance 1) segment; stuff ignores the instance
    assert [cat_of.get(int(i), 0) for i in ids[0]] == [1, 1, 7, 20, 20, 20]
    assert len(set(ids[0, 3:])) == 1
    ids, segs = P.decode_things({"semantics": sem, "instances": ins}, CATS, 1 / 6)
    assert sorted(s["category_id"] for s in segs) == [1, 20] and ids[0, 2] == 0


def _one_hot(x, n):
    return (x[..., None] == np.arange(n)).astype(np.float32)


@pytest.mark.parametrize("size,encoding,fraction", [("tiny", "things", 0.03 ** 2),
                                                    ("base", "published", 0.0),
                                                    ("paper", "published", 0.0)])
def test_presets_choose_the_label_coding(size, encoding, fraction):
    from uvim_givt.config import load_config
    cfg = load_config(f"configs/panoptic.py:size={size}")
    assert cfg.data.panoptic_encoding == encoding and cfg.data.min_area_fraction == fraction
    P.PanopticTask().check_config(cfg)


@pytest.mark.parametrize("setting,words", [
    ("data.panoptic_encoding=stuff",
     "data.panoptic_encoding='stuff': one of ('published', 'things')"),
    ("data.min_area_fraction=1.0", "data.min_area_fraction=1.0: must be in [0, 1)")])
def test_bad_coding_keys_are_refused(setting, words, tmp_path, capsys):
    assert P.main(["train", "--workdir", str(tmp_path / "run"), "--set", setting]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_png_id_encoding_round_trip(tmp_path):
    ids = np.random.RandomState(0).randint(0, 2**24, (7, 9))
    cv2.imwrite(str(tmp_path / "x.png"), id_to_rgb(ids)[..., ::-1])
    back = rgb_to_id(cv2.imread(str(tmp_path / "x.png"))[..., ::-1])
    np.testing.assert_array_equal(back, ids)


# ----------------------------------------------------------------------- the folder reader
def _write_folder(root, split="validation", break_with=None):
    os.makedirs(root / "annotations" / f"panoptic_{split}", exist_ok=True)
    os.makedirs(root / split, exist_ok=True)
    anns = []
    for k in range(2):
        ids = np.zeros((16, 16), np.int64)
        ids[:8] = 5
        ids[8:] = 9
        segs = [{"id": 5, "category_id": 20, "iscrowd": 0}, {"id": 9, "category_id": 1,
                                                           "iscrowd": 0}]
        if break_with == "json_only" and k == 1:
            segs.append({"id": 77, "category_id": 1, "iscrowd": 0})
        if break_with == "png_only" and k == 1:
            ids[0, 0] = 66
        if break_with == "category" and k == 1:
            segs[0]["category_id"] = 999
        cv2.imwrite(str(root / "annotations" / f"panoptic_{split}" / f"{k}.png"),
                    id_to_rgb(ids)[..., ::-1])
        cv2.imwrite(str(root / split / f"{k}.jpg"), np.full((16, 16, 3), 100, np.uint8))
        anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": segs})
    if break_with == "truncated":
        data = open(root / split / "1.jpg", "rb").read()
        open(root / split / "1.jpg", "wb").write(data[:40])
    json.dump({"annotations": anns, "categories": CATS,
               "images": [{"id": k, "file_name": f"{k}.jpg"} for k in range(2)]},
              open(root / "annotations" / f"panoptic_{split}.json", "w"))


def test_folder_reader_reads_examples(tmp_path):
    _write_folder(tmp_path)
    cats, examples = P.read_coco_folder(str(tmp_path), "validation")
    examples = list(examples)
    assert cats == CATS and len(examples) == 2
    assert examples[0]["panoptic_objects"]["label"].tolist() == [2, 0]


@pytest.mark.parametrize("problem,words", [
    ("json_only", "[77] are in the JSON but not in the PNG"),
    ("png_only", "[66] are in the PNG but not in the JSON"),
    ("category", "unknown category_id 999"),
    ("truncated", "1.jpg: .*truncated"),  # the reader names the file and the problem
])
def test_folder_reader_bad_input(tmp_path, problem, words):
    _write_folder(tmp_path, break_with=problem)
    with pytest.raises(DataError, match=words.replace("[", r"\[").replace("]", r"\]")):
        list(P.read_coco_folder(str(tmp_path), "validation")[1])
    _, kept = P.read_coco_folder(str(tmp_path), "validation", skip_bad=True)
    assert len(list(kept)) == 1


# -------------------------------------------------------------------- end to end (tiny)
TINY = ["--set", "data.embedded_num_train=48", "--set", "data.embedded_num_validation=8",
        "--set", "vae.train.total_steps=3", "--set", "givt.train.total_steps=3",
        "--set", "vae.train.batch_size=8", "--set", "givt.train.batch_size=8",
        "--set", "vae.model.width=32", "--set", "vae.model.mlp_dim=64",
        "--set", "vae.model.depth=1", "--set", "vae.model.decoder_depth=1",
        "--set", "givt.model.emb_dim=32", "--set", "givt.model.mlp_dim=64",
        "--set", "givt.model.num_layers=1", "--set", "givt.model.num_decoder_layers=1",
        "--set", "vae.model.code_len=16", "--set", "givt.model.seq_len=16",
        "--set", "givt.model.patches=(16,16)",  # a 4x4 encoder grid: encoder_skip fits
        "--set", "givt.sampling.beam_size=1", "--set", "givt.sampling.fan_size=1",
        "--set", "evals.oracle.batch_size=4", "--set", "evals.sampled.batch_size=4",
        "--set", "evals.oracle.overlays=2", "--set", "evals.sampled.overlays=2",
        "--set", "evals.oracle.every=2", "--set", "evals.oracle.num_examples=4"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
    run = str(root / "run")
    assert P.main(["train", "--workdir", run, *TINY]) == 0
    return run


def test_tiny_two_stage_run(tiny_run, capsys):
    records = sorted(os.listdir(os.path.join(tiny_run, "eval")))
    # The declared evaluators: the oracle every 2 steps (on 4 images) and after stage 1 with
    # the held-out VAE loss; after stage 2 the samples (the whole 8-image split), the
    # teacher-forced means and the held-out NLL.
    assert records == ["givt_givt_loss_validation_embedded_step00000003_train.json",
                       "givt_sampled_validation_embedded_step00000003_train.json",
                       "givt_teacher_forced_validation_embedded_step00000003_train.json",
                       "vae_oracle_validation_embedded_step00000002_train.json",
                       "vae_oracle_validation_embedded_step00000003_train.json",
                       "vae_vae_loss_validation_embedded_step00000003_train.json"]
    periodic = json.load(open(os.path.join(tiny_run, "eval", records[3])))
    assert periodic["metrics"]["num_images"] == 4 and periodic["step"] == 2
    assert periodic["extra"]["periodic"] and periodic["evaluator"] == "oracle"
    metrics = [json.loads(x) for x in open(os.path.join(tiny_run, "metrics.jsonl"))]
    assert any("eval/oracle/PQ" in m and m["step"] == 2 for m in metrics)
    rec = json.load(open(os.path.join(tiny_run, "eval", records[1])))
    assert rec["task"] == "panoptic" and rec["metrics"]["num_images"] == 8
    assert rec["origin"] == "train" and rec["prediction"] == "sampled"
    assert 0 <= rec["metrics"]["PQ"] <= 100
    assert len([f for f in os.listdir(os.path.join(tiny_run, "predictions"))]) == 4
    info = json.load(open(os.path.join(tiny_run, "run_info.json")))
    assert set(info["num_params"]) == {"vae", "givt"}


def test_eval_commands_run_the_declared_evaluators_without_overwriting(tiny_run, capsys):
    """`tasks.panoptic eval` and `evals.panoptic --ckpt` go through the same evaluator and
    give the same PQ; each writes its own record, tagged with the command."""
    from evals import panoptic as pq_cli
    assert P.main(["eval", "--ckpt", tiny_run]) == 0
    assert pq_cli.main(["--ckpt", tiny_run]) == 0
    records = {r: json.load(open(os.path.join(tiny_run, "eval", r)))
               for r in os.listdir(os.path.join(tiny_run, "eval"))
               if r.startswith("givt_sampled_")}
    by_origin = {r["origin"]: r for r in records.values()}
    assert set(by_origin) == {"train", "eval", "cli"}
    for origin in ("eval", "cli"):
        assert by_origin[origin]["metrics"] == by_origin["train"]["metrics"]


def test_rerun_resumes_and_changed_config_is_refused(tiny_run, capsys):
    assert P.main(["train", "--workdir", tiny_run, "--no-eval", *TINY]) == 0
    lines = open(os.path.join(tiny_run, "metrics.jsonl")).read().splitlines()
    assert max(json.loads(x)["step"] for x in lines) == 3  # nothing retrained
    assert P.main(["train", "--workdir", tiny_run, *TINY, "--set", "vae.beta=0.5"]) == 2
    assert "different config (vae.beta differ" in capsys.readouterr().err


def test_vae_ckpt_of_other_shape_is_refused(tiny_run, tmp_path, capsys):
    code = P.main(["train", "--stage", "givt", "--vae-ckpt", tiny_run, "--workdir",
                   str(tmp_path / "r2"), *TINY, "--set", "vae.model.codeword_dim=4",
                   "--set", "givt.model.out_dim=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not match this config's VAE" in err and "vae.model.codeword_dim" in err
    # without --vae-ckpt, stage 1 and stage 2 that disagree are refused before training
    assert P.main(["train", "--workdir", str(tmp_path / "r3"), *TINY,
                   "--set", "vae.model.codeword_dim=4"]) == 2
    assert "givt.model.out_dim=16 but the VAE's codes have 4 channels" in capsys.readouterr().err


def test_predict_writes_coco_files(tiny_run, tmp_path):
    os.makedirs(tmp_path / "imgs")
    for k in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"im{k}.jpg"),
                    np.random.RandomState(k).randint(0, 255, (30, 40, 3)).astype(np.uint8))
    assert P.main(["predict", "--ckpt", tiny_run, "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "out")]) == 0
    doc = json.load(open(tmp_path / "out" / "panoptic_pred.json"))
    assert [a["file_name"] for a in doc["annotations"]] == ["im0.png", "im1.png", "im2.png"]
    png = cv2.imread(str(tmp_path / "out" / "panoptic_pred" / "im0.png"))
    assert png.shape == (30, 40, 3)
    ids = set(np.unique(rgb_to_id(png[..., ::-1])).tolist()) - {0}
    assert ids == {s["id"] for s in doc["annotations"][0]["segments_info"]}


def test_real_tfds_builder_path_with_mock_data():
    """`--data tfds:coco/2017_panoptic` goes through TFDS's real builder (mocked offline)."""
    import tensorflow_datasets as tfds

    from uvim_givt.config import load_config

    cfg = load_config("configs/panoptic.py:size=paper", ["data.image_size=32"])
    with tfds.testing.mock_data(num_examples=2):
        ex = next(P.TASK.load(cfg, "tfds:coco/2017_panoptic", "validation").as_numpy_iterator())
    assert ex["image"].dtype == np.uint8 and ex["panoptic_image"].shape[-1] == 3
    objs = ex["panoptic_objects"]
    n = min(len(v) for v in objs.values())  # mock data draws each field's length separately
    ids = rgb_to_id(ex["panoptic_image"])
    objs = {"id": np.unique(ids)[:n], "label": objs["label"][:n] % 133,
            "is_crowd": objs["is_crowd"][:n]}
    out = P.TASK.preprocess(cfg, dict(ex, panoptic_objects=objs), train=True,
                            seed=np.array([0, 1]))
    assert out["image"].shape == (32, 32, 3) and out["labels"].shape == (32, 32, 2)
    assert float(np.abs(out["image"]).max()) <= 1.0
