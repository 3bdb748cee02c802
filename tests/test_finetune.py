"""Starting a stage from a checkpoint (``<stage>.init``): a released .npz or a run directory,
``dont_load`` patterns, position-embedding resampling, and the key/shape report."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from uvim_givt import config as config_lib
from uvim_givt.models import builders
from uvim_givt.training import param_files as pf
from uvim_givt.training import warm_start as ws

SMALL = ["givt.model.emb_dim=32", "givt.model.mlp_dim=64", "givt.model.num_layers=1",
         "givt.model.num_decoder_layers=1"]


def _params(overrides=(), seed=0):
    cfg = config_lib.load_config("configs/panoptic.py", [*SMALL, *overrides])
    model = builders.build_model("givt", cfg)
    return jax.tree_util.tree_map(np.asarray, builders.init_givt(model, jax.random.PRNGKey(seed)))


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_everything_is_loaded_but_the_dont_load_patterns(tmp_path):
    source, fresh = _params(seed=1), _params(seed=2)
    npz = pf.save_npz(str(tmp_path / "givt.npz"), source)
    out = _flat(ws.init_from(npz, fresh, "givt", dont_load=("EmbedTargets/.*",)))
    src, new = _flat(source), _flat(fresh)
    assert set(out) == set(new)
    for k, v in out.items():
        expected = new[k] if k.startswith("EmbedTargets/") else src[k]
        np.testing.assert_array_equal(v, expected, err_msg=k)
    assert not np.array_equal(src["EmbedTargets/kernel"], new["EmbedTargets/kernel"])


def test_position_embeddings_are_resampled_to_the_new_grid(tmp_path):
    # A 32px-input encoder (4x4 patch grid) fine-tuned at 64px (8x8).
    source = _params(["givt.model.input_size=(32,32)", "givt.model.encoder_skip=False"], 1)
    fresh = _params(["givt.model.encoder_skip=False"], 2)
    assert _flat(source)["pos_embedding_encoder"].shape == (1, 16, 32)
    npz = pf.save_npz(str(tmp_path / "givt.npz"), source)
    out = _flat(ws.init_from(npz, fresh, "givt"))
    want = ws.resample_posemb(_flat(source)["pos_embedding_encoder"], (8, 8))
    np.testing.assert_allclose(out["pos_embedding_encoder"], want)
    # bilinear resampling keeps the corners of the grid
    grid = _flat(source)["pos_embedding_encoder"].reshape(4, 4, 32)
    np.testing.assert_allclose(out["pos_embedding_encoder"].reshape(8, 8, 32)[0, 0], grid[0, 0],
                               rtol=1e-5)


def test_a_checkpoint_that_does_not_fit_is_reported_key_by_key(tmp_path):
    source = _params(["givt.model.mlp_dim=128"], 1)
    npz = pf.save_npz(str(tmp_path / "givt.npz"), source)
    with pytest.raises(pf.CheckpointMismatch) as e:
        ws.init_from(npz, _params(), "givt")
    assert "6 with a different shape" in str(e.value)  # MLPs of the encoder and decoder
    assert "/Dense_0/kernel: checkpoint (32, 128), model (32, 64)" in str(e.value)
    # the mismatching parameters can be left out instead
    out = ws.init_from(npz, _params(), "givt", dont_load=(".*/(MLP|MlpBlock_0)/.*",))
    assert _flat(out)["encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape == (32, 64)


@pytest.mark.parametrize("bad,expect", [
    (np.nan, "non-finite values (NaN: 1 of"),
    (np.inf, "non-finite values (inf: 1 of"),
    ("int32", "is int32, expected floats"),
])
def test_non_finite_or_non_float_values_are_refused_naming_file_and_key(tmp_path, bad, expect):
    source = _flat(_params(["givt.model.input_size=(32,32)", "givt.model.encoder_skip=False"], 1))
    fresh = _params(["givt.model.encoder_skip=False"], 2)
    # a plain parameter, and a position embedding that is resampled (4x4 -> 8x8) on the way
    for key in ("decoder/EncDecBlock0/MLP/Dense_0/kernel", "pos_embedding_encoder"):
        spoilt = dict(source)
        if bad == "int32":
            spoilt[key] = np.round(source[key]).astype(np.int32)
        else:
            spoilt[key] = source[key].copy()
            spoilt[key].reshape(-1)[3] = bad
        npz = pf.save_npz(str(tmp_path / "givt.npz"), spoilt)
        with pytest.raises(pf.CheckpointValueError) as e:
            ws.init_from(npz, fresh, "givt")
        msg = str(e.value)
        assert msg.startswith(f"{npz}: parameter {key!r}") and expect in msg and "\n" not in msg
        # left out with dont_load, the bad parameter keeps its fresh value
        out = _flat(ws.init_from(npz, fresh, "givt", dont_load=(key,)))
        np.testing.assert_array_equal(out[key], _flat(fresh)[key])
