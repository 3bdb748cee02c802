"""Starting a stage from a checkpoint (``<stage>.init``): a released .npz or a run directory,
``dont_load`` patterns, position-embedding resampling, and the key/shape report."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from uvim_givt import config as config_lib
from uvim_givt.compat import big_vision as bv
from uvim_givt.models import builders

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
    npz = bv.save_npz(str(tmp_path / "givt.npz"), source)
    out = _flat(bv.init_from(npz, fresh, "givt", dont_load=("EmbedTargets/.*",)))
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
    npz = bv.save_npz(str(tmp_path / "givt.npz"), source)
    out = _flat(bv.init_from(npz, fresh, "givt"))
    want = bv.resample_posemb(_flat(source)["pos_embedding_encoder"], (8, 8))
    np.testing.assert_allclose(out["pos_embedding_encoder"], want)
    # bilinear resampling keeps the corners of the grid
    grid = _flat(source)["pos_embedding_encoder"].reshape(4, 4, 32)
    np.testing.assert_allclose(out["pos_embedding_encoder"].reshape(8, 8, 32)[0, 0], grid[0, 0],
                               rtol=1e-5)


def test_a_checkpoint_that_does_not_fit_is_reported_key_by_key(tmp_path):
    source = _params(["givt.model.mlp_dim=128"], 1)
    npz = bv.save_npz(str(tmp_path / "givt.npz"), source)
    with pytest.raises(bv.CheckpointMismatch) as e:
        bv.init_from(npz, _params(), "givt")
    assert "6 with a different shape" in str(e.value)  # MLPs of the encoder and decoder
    assert "/Dense_0/kernel: checkpoint (32, 128), model (32, 64)" in str(e.value)
    # the mismatching parameters can be left out instead
    out = bv.init_from(npz, _params(), "givt", dont_load=(".*/(MLP|MlpBlock_0)/.*",))
    assert _flat(out)["encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape == (32, 64)
