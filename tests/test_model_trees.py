"""Paper-scale GIVT models build exactly the published big_vision parameter trees."""

import json
import math
import os

import flax
import jax
import jax.numpy as jnp
import pytest

from tasks.base import build_givt
from uvim_givt.config import load_config
from uvim_givt.models.givt import GIVT

REF = json.load(open(os.path.join(os.path.dirname(__file__), "data",
                                  "big_vision_param_trees.json")))


def _tree(model, *args, **kwargs):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    flat = flax.traverse_util.flatten_dict(shapes["params"], sep="/")
    return {k: list(v.shape) for k, v in flat.items()}


def _assert_same(name, tree):
    ref = REF[name]["params"]
    assert sorted(set(ref) - set(tree)) == [], "missing"
    assert sorted(set(tree) - set(ref)) == [], "unexpected"
    assert {k: tree[k] for k in ref if tree[k] != ref[k]} == {}, "shapes differ"
    assert sum(math.prod(s) for s in tree.values()) == REF[name]["num_params"]


IMAGENET = dict(emb_dim=1024, num_heads=16, mlp_dim=4096, num_decoder_layers=24, seq_len=256,
                out_dim=16, num_labels=1000, num_mixtures=16, head_kind="diag",
                drop_labels_probability=0.1, scan=True)


def test_givt_causal_imagenet256_tree():
    _assert_same("givt_imagenet256_causal",
                 _tree(GIVT(**IMAGENET), jnp.zeros((1, 256, 16)), jnp.zeros((1,), jnp.int32)))


def test_givt_maskgit_imagenet256_tree():
    model = GIVT(**IMAGENET, style="masked", mask_style="concat")
    _assert_same("givt_imagenet256_maskgit",
                 _tree(model, jnp.zeros((1, 256, 16)), jnp.zeros((1,), jnp.int32),
                       input_mask=jnp.zeros((1, 256), bool)))


@pytest.mark.parametrize("task", ["panoptic", "depth"])
def test_uvim_stage2_tree_from_paper_config(task):
    if not os.path.exists(os.path.join("configs", f"{task}.py")) and task == "depth":
        pytest.skip("depth config not present")
    cfg = load_config(f"configs/{task}.py:size=paper")
    model = build_givt(cfg)
    _assert_same(f"givt_uvim_{task}_stage2",
                 _tree(model, jnp.zeros((1, model.seq_len, model.out_dim)),
                       image=jnp.zeros((1, 512, 512, 3))))
