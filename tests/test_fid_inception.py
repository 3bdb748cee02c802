"""The FID Inception network (evals/features/): weight files, preprocessing, errors,
and (with the optional ``[fid-check]`` extra: torch + pytorch-fid) the activations of
pytorch-fid's own network on the same random weights."""

from __future__ import annotations

import copy
import struct
import zipfile

import cv2
import numpy as np
import pytest

from evals import features as X
from evals import fid_inception as fid_cli
from evals import generation as G
from evals import generation_metrics as M
from evals.features import fid_inception as F
from evals.features import keras_inception as K
from evals.features import torch_weights as TW

# ----------------------------------------------------------------------------- helpers


def _random_variables(seed: int = 0, zeros: bool = False) -> dict:
    """Flax variables with He-scaled kernels and non-trivial BatchNorm statistics (or
    read-only zeros that take no memory)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for path, shape in F.variable_shapes().items():
        leaf = path[-1]
        if zeros:
            val = np.broadcast_to(np.float32(0), shape)
        elif leaf == "kernel":
            val = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif leaf in ("var", "scale"):
            val = rng.uniform(0.5, 1.5, size=shape)
        else:
            val = 0.1 * rng.normal(size=shape)
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[leaf] = val.astype(np.float32, copy=False)
    return out


def _torch_layout(variables: dict) -> dict[str, np.ndarray]:
    """The same weights under pytorch-fid's names and layouts, written out independently
    of the module's mapping: conv [kh, kw, in, out] -> [out, in, kh, kw], FC transposed."""
    names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
             "var": "running_var"}
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, (*prefix, k))
            else:
                a = v.transpose(3, 2, 0, 1) if v.ndim == 4 else (v.T if v.ndim == 2 else v)
                out[".".join((*prefix, names[k]))] = a

    walk(variables["params"], ())
    walk(variables["batch_stats"], ())
    return out


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, (*prefix, k))
        else:
            yield (*prefix, k), v


# A torch state dict pickled by hand (protocol 2, the opcodes torch.save writes), so the
# reader is tested without torch: OrderedDict of _rebuild_tensor_v2(storage, ...) calls.
def _op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _op_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _op_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_tensors(tensors, legacy: bool) -> bytes:
    """tensors: [(key, storage_type, storage_key, storage_numel, offset, size, stride)]."""
    out = b"\x80\x02" + _op_global("collections", "OrderedDict") + b")R"
    for key, stype, skey, numel, offset, size, stride in tensors:
        pid = [_op_str("storage"), _op_global("torch", stype), _op_str(skey), _op_str("cpu"),
               _op_int(numel)] + ([b"N"] if legacy else [])
        args = [_op_tuple(pid) + b"Q", _op_int(offset), _op_tuple([_op_int(s) for s in size]),
                _op_tuple([_op_int(s) for s in stride]), b"\x89",
                _op_global("collections", "OrderedDict") + b")R"]
        out += _op_str(key) + _op_global("torch._utils", "_rebuild_tensor_v2")
        out += _op_tuple(args) + b"R" + b"s"
    return out + b"."


# Storage "0": 12 floats shared by three tensors (contiguous, a transposed view, an offset
# slice); storage "1": a 0-d int64 (BatchNorm's num_batches_tracked).
_STORE0 = np.arange(12, dtype=np.float32) * 0.5 - 1.0
_STORE1 = np.array([7], np.int64)
_TENSORS = [
    ("a.weight", "FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
    ("a.weight_t", "FloatStorage", "0", 12, 0, (4, 3), (1, 4)),
    ("b.bias", "FloatStorage", "0", 12, 8, (4,), (1,)),
    ("bn.num_batches_tracked", "LongStorage", "1", 1, 0, (), ()),
]
_EXPECTED = {
    "a.weight": _STORE0.reshape(3, 4),
    "a.weight_t": _STORE0.reshape(3, 4).T,
    "b.bias": _STORE0[8:],
    "bn.num_batches_tracked": np.array(7, np.int64),
}


def _write_zip_pth(path, pkl: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")


def _write_legacy_pth(path, pkl: bytes, storages: dict[str, tuple[int, bytes]]) -> None:
    import pickle

    with open(path, "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
        f.write(pkl)
        f.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            numel, raw = storages[key]
            f.write(struct.pack("<q", numel) + raw)


# ----------------------------------------------------------------------------- without torch


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_hand_made_torch_files(tmp_path, fmt):
    path = tmp_path / f"tiny_{fmt}.pth"
    pkl = _pickle_tensors(_TENSORS, legacy=fmt == "legacy")
    if fmt == "zip":
        _write_zip_pth(path, pkl, {"0": _STORE0.tobytes(), "1": _STORE1.tobytes()})
    else:
        _write_legacy_pth(path, pkl, {"0": (12, _STORE0.tobytes()), "1": (1, _STORE1.tobytes())})
    state = TW.read_state_dict(str(path))
    assert list(state) == list(_EXPECTED)  # order kept
    for k, want in _EXPECTED.items():
        assert state[k].dtype == want.dtype and state[k].shape == want.shape, k
        np.testing.assert_array_equal(state[k], want)


def test_reader_unpickles_nothing_but_tensors(tmp_path):
    marker = tmp_path / "ran"
    evil = b"\x80\x02" + _op_global("os", "system") + _op_tuple([_op_str(f"touch {marker}")])
    evil += b"R."
    path = tmp_path / "evil.pth"
    _write_zip_pth(path, evil, {})
    with pytest.raises(TW.FIDWeightsError) as e:
        TW.read_state_dict(str(path))
    assert "evil.pth" in str(e.value) and "os.system" in str(e.value)
    assert not marker.exists()


def test_weight_file_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(TW.FIDWeightsError, match="Nothing is downloaded") as e:
        F.load_variables(str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(e.value) and TW.WEIGHTS_FILE in str(e.value)

    (tmp_path / "junk.pth").write_bytes(b"not a weights file at all")
    with pytest.raises(TW.FIDWeightsError, match="junk.pth"):
        F.load_variables(str(tmp_path / "junk.pth"))

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(TW.FIDWeightsError, match="neither a torch file nor an .npz"):
        F.load_variables(str(tmp_path / "other.zip"))

    # a state dict of the wrong network: each kind of mismatch is named (zero-cost arrays)
    state = _torch_layout(_random_variables(zeros=True))
    del state["Mixed_6c.branch7x7_2.conv.weight"]
    state["Mixed_5b.branch_pool.bn.running_var"] = np.ones(31, np.float32)
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    with pytest.raises(TW.FIDWeightsError) as e:
        F.params_from_state_dict(state, source="wrong.npz")
    msg = str(e.value)
    assert "wrong.npz" in msg and "1 missing key(s) (Mixed_6c.branch7x7_2.conv.weight)" in msg
    assert "Mixed_5b.branch_pool.bn.running_var is [31], expected [32]" in msg
    assert "1 unexpected key(s) (AuxLogits.fc.weight)" in msg


def test_resize_matches_opencv():
    """pytorch-fid's resize (bilinear, half-pixel centres, no antialiasing) against
    OpenCV's INTER_LINEAR (the same definition, written independently), up and down."""
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (64, 48), (500, 333), (299, 299), (1, 7)]:
        img = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        ours = np.asarray(F.preprocess(img))[0]
        ref = cv2.resize(img[0].astype(np.float32) / 255.0, (299, 299),
                         interpolation=cv2.INTER_LINEAR) * 2 - 1
        np.testing.assert_allclose(ours, ref, atol=2e-6, err_msg=f"{h}x{w}")
    # rows of the resize matrix are convex weights; 299 -> 299 is the identity
    m = F.bilinear_matrix(37, 299)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(F.bilinear_matrix(299, 299), np.eye(299, dtype=np.float32))


@pytest.fixture(scope="module")
def npz_extractor(tmp_path_factory):
    variables = _random_variables(1)
    path = tmp_path_factory.mktemp("fid") / "fid_inception.npz"
    np.savez(path, **_torch_layout(variables))
    return variables, str(path)


def test_npz_weights_network_and_records(npz_extractor, tmp_path):
    """The .npz path end to end (one 299px compile, ~20-40 s on 2 busy CPU cores)."""
    variables, path = npz_extractor
    loaded = F.load_variables(path)
    want = dict(_flat(variables))
    got = dict(_flat(loaded))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))

    ext = X.get_extractor(f"fid_inception:{path}", batch_size=2)
    assert isinstance(ext, F.FIDInceptionExtractor) and isinstance(ext, X.FeatureExtractor)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    feats, probs = ext.features_and_probs(images)  # 3 images, batches of 2: a padded tail
    assert feats.shape == (3, F.FEATURE_DIM) and probs.shape == (3, F.NUM_LOGITS)
    assert np.all(feats >= 0) and feats.std() > 0  # a mean of ReLU outputs
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # an image's features do not depend on its batch (here: a padded tail, then a full one)
    np.testing.assert_allclose(ext.features(images[1:]), feats[1:], rtol=1e-5, atol=1e-6)

    # records say which network made the FID; 1008 graph classes are not the dataset's
    res = M.evaluate_generation(images, images[::-1], ext, sample_labels=np.array([1, 2, 3]),
                                is_splits=1)
    assert res["extractor"] == "fid_inception" and res["fid_comparable_to_published"] is True
    assert "class_accuracy" not in res["metrics"]
    assert res["metrics"]["FID"] == pytest.approx(0.0, abs=1e-3)  # same images, other order


def test_extractor_specs_and_labels(tmp_path, capsys):
    with pytest.raises(X.GenerationEvalError, match="fid_inception:PATH"):
        X.get_extractor("fid_inception:")
    with pytest.raises(X.GenerationEvalError, match="Nothing is downloaded") as e:
        X.get_extractor(f"fid_inception:{tmp_path / 'w.pth'}")
    assert TW.WEIGHTS_FILE in str(e.value)
    for spec in ("keras_inception:", "inception:"):  # Keras, under both names
        with pytest.raises(X.GenerationEvalError, match="Nothing is downloaded") as e:
            X.get_extractor(spec + str(tmp_path / "k.h5"))
        assert K.INCEPTION_WEIGHTS_FILE in str(e.value)
    with pytest.raises(X.GenerationEvalError, match="fid_inception:PATH or keras_inception"):
        X.get_extractor("vgg")
    assert K.InceptionV3Extractor.name == "keras_inception"
    assert not K.InceptionV3Extractor.comparable_to_published
    assert X.extractor_record(K.InceptionV3Extractor.__new__(K.InceptionV3Extractor),
                              "inception:k.h5") == {
        "extractor": "keras_inception", "fid_comparable_to_published": False,
        "extractor_spec": "inception:k.h5"}
    assert fid_cli.main([str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err


def test_cli_checks_and_converts(npz_extractor, tmp_path, capsys):
    _, path = npz_extractor
    out = tmp_path / "copy.npz"
    assert fid_cli.main([path, "--to-npz", str(out)]) == 0
    assert "all 472 FID Inception arrays present" in capsys.readouterr().out
    with np.load(out) as a, np.load(path) as b:
        assert sorted(a.files) == sorted(b.files)


# ----------------------------------------------------------------------------- with pytorch-fid


# The cross-check's images: random pixels at these sizes (64x80 resized, 299x299 as is)
_CHECK_SIZES = ((64, 80), (299, 299))


def _check_images(seed: int, size: tuple[int, int], n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size, 3), dtype=np.uint8)


def _calibration_batch(torch):
    """Images like the compared ones (other seeds), at 299x299 as the network sees them."""
    batch = []
    for size in _CHECK_SIZES:
        x = torch.from_numpy(_check_images(100, size)).permute(0, 3, 1, 2).float() / 255.0
        batch.append(torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                                     align_corners=False))
    return torch.cat(batch)


@pytest.fixture(scope="module")
def pytorch_fid_model():
    """pytorch-fid's InceptionV3([3]) built by its own code with random weights: its
    weight download is replaced by the freshly built network's own state dict."""
    torch = pytest.importorskip("torch")
    inception_mod = pytest.importorskip("pytorch_fid.inception")
    import inspect

    built = []

    def no_download(*_args, **_kwargs):
        # called inside fid_inception_v3(), whose local `inception` is the patched network
        net = inspect.currentframe().f_back.f_locals["inception"]
        built.append(net)
        return net.state_dict()

    mp = pytest.MonkeyPatch()
    mp.setattr(inception_mod, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    try:
        model = inception_mod.InceptionV3([3], use_fid_inception=True)
    finally:
        mp.undo()
    (net,) = built
    # Non-trivial BatchNorm: random scales and shifts, running statistics of the real
    # activations (cumulative over one batch), then moved a little, so none is 0 or 1 and
    # every layer's output stays O(1).
    gen = torch.Generator().manual_seed(1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.copy_(0.2 * torch.randn(c, generator=gen))
            m.momentum = None
            m.reset_running_stats()
        model.train()
        model(_calibration_batch(torch))
        for m in bns:
            c = m.num_features
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=gen))
            m.running_var.mul_(0.9 + 0.2 * torch.rand(c, generator=gen))
        net.fc.bias.copy_(torch.randn(net.fc.out_features, generator=gen))
    model.eval()
    net.eval()
    return torch, model, net


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_matches_pytorch_fid_on_random_weights(pytorch_fid_model, tmp_path, fmt):
    """Same weights file, same images: pool3 and IS probabilities of the flax port vs
    pytorch-fid's network (run with the [fid-check] extra)."""
    torch, model, net = pytorch_fid_model
    path = tmp_path / f"random_fid_inception_{fmt}.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=fmt == "zip")

    # the reader gives exactly what torch.load gives
    ours = TW.read_state_dict(str(path))
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    if fmt == "legacy":
        return  # same arrays: the network comparison below needs running once

    ext = F.FIDInceptionExtractor(str(path), batch_size=4)
    # pytorch-fid's network in float64 is the reference: its float32 run differs from it
    # by more (seen: 1.0e-3 on features up to 6) than the flax port does (9e-5).
    model64 = copy.deepcopy(model).double()
    for size in _CHECK_SIZES:
        images = _check_images(0, size)
        feats, probs = ext.features_and_probs(images)
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
            ref32 = model(x.float())[0][:, :, 0, 0].double().numpy()
            ref = model64(x.double())[0][:, :, 0, 0]
            ref_probs = torch.softmax(ref @ net.fc.weight.double().T, dim=1).numpy()
        ref = ref.numpy()
        scale = np.abs(ref).max()
        print(f"\n{size}: max |pool3| {scale:.3g}; max |flax - pytorch-fid float64| "
              f"{np.abs(feats - ref).max():.3g}, max |pytorch-fid float32 - float64| "
              f"{np.abs(ref32 - ref).max():.3g}, max |flax - pytorch-fid float32| "
              f"{np.abs(feats - ref32).max():.3g}; IS probs {np.abs(probs - ref_probs).max():.3g}")
        assert ref.std() > 0.1 and scale < 100  # O(1) activations, not ~0 or blown up
        np.testing.assert_allclose(feats, ref, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-5)


def test_generation_cli_labels_fids_that_are_not_comparable(tmp_path, capsys, monkeypatch):
    """The files-mode CLI records the extractor's label and says when its FID cannot be
    set beside published ones (a stand-in extractor: mean colour and its softmax)."""
    import json

    class Stub:
        name, comparable_to_published = "keras_inception", False

        def features(self, images):
            return images.reshape(len(images), -1, 3).mean(1) / 255.0

        def probs(self, images):
            f = np.exp(self.features(images))
            return f / f.sum(1, keepdims=True)

    monkeypatch.setattr(G, "get_extractor", lambda spec, cache=None: Stub())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", images=rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8),
             labels=np.arange(8) % 3)
    out = tmp_path / "r.json"
    argv = ["--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "s.npz"),
            "--is-splits", "1", "--out", str(out)]
    assert G.main(argv) == 0
    assert "not comparable to published FIDs" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["extractor"] == "keras_inception" and res["fid_comparable_to_published"] is False
    assert "class_accuracy" in res["metrics"]  # its classes are the dataset's by default
