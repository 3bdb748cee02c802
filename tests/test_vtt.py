"""The original UViM's stage 2 (models/vtt.py): its parameter tree at paper size equals the
published one, its cached decoding equals teacher forcing, and the shared autoregressive
sampler draws its code ids as a brute-force loop over full forward passes does."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from uvim_givt.models.vtt import PAD, VTT, CategoricalHead
from uvim_givt.sampling import sample_autoregressive

REFERENCE = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"
             / "uvim_param_trees.json")
# train_coco_panoptic_pretrained.py: VTT_MODELS["large"], 512 px, patches 16, 256 codes,
# vocab = dict_size 4096 + 1
PAPER = dict(num_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024, vocab_size=4097,
             seq_len=256, patches=(16, 16), input_size=(512, 512))
TINY = dict(num_layers=2, num_heads=2, mlp_dim=32, emb_dim=16, vocab_size=9, seq_len=6,
            patches=(4, 4), input_size=(8, 8))


def _tree(params) -> dict[str, list[int]]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: list(v.shape) for k, v in flat.items()}


def _tiny():
    model = VTT(**TINY)
    image = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
    ids = jax.random.randint(jax.random.PRNGKey(2), (3, TINY["seq_len"]), 1,
                             TINY["vocab_size"])
    params = model.init(jax.random.PRNGKey(0), ids, image=image)["params"]
    # LogitsDense starts at zero (as published): give it weights, so outputs differ
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["decoder"]["LogitsDense"]["kernel"] = jax.random.normal(
        jax.random.PRNGKey(3), params["decoder"]["LogitsDense"]["kernel"].shape)
    return model, params, image, ids


@pytest.mark.skipif(not REFERENCE.exists(), reason="needs ../shared/reference")
def test_paper_parameter_tree_is_the_published_one():
    ref = json.loads(REFERENCE.read_text())["uvim_vtt_large_stage2"]
    model = VTT(**PAPER)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 256), jnp.int32),
        image=jnp.zeros((1, 512, 512, 3)))["params"])
    tree = _tree(shapes)
    assert tree == ref["params"]
    assert sum(int(np.prod(s)) for s in tree.values()) == ref["num_params"]


def test_cached_decoding_equals_teacher_forcing():
    model, params, image, ids = _tiny()
    forced = model.apply({"params": params}, ids, image=image)  # [B, L, V]
    encoded = model.apply({"params": params}, image, method="encode")
    _, cache = model.apply({"params": params}, 3, encoded, method="init_cache",
                           mutable=["cache"])
    cache = cache["cache"]
    logits, cache = model.apply({"params": params, "cache": cache}, None, 3, encoded,
                                method="prefill", mutable=["cache"])
    steps = [logits[:, 0]]
    for i in range(TINY["seq_len"] - 1):
        logits, cache = model.apply({"params": params, "cache": cache["cache"]},
                                    ids[:, i:i + 1], encoded, method="decode_step",
                                    mutable=["cache"])
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), forced, atol=1e-5)


def test_position_i_sees_only_the_tokens_before_it():
    model, params, image, ids = _tiny()
    base = model.apply({"params": params}, ids, image=image)
    changed = ids.at[:, 3].set(jnp.where(ids[:, 3] == 1, 2, 1))
    other = model.apply({"params": params}, changed, image=image)
    np.testing.assert_allclose(base[:, :4], other[:, :4], atol=1e-6)  # up to and at 3
    assert not np.allclose(base[:, 4:], other[:, 4:])


def _brute_force_greedy(model, params, image):
    """Greedy decoding by full teacher-forced passes, one per position (no cache)."""
    ids = jnp.zeros((image.shape[0], model.seq_len), jnp.int32)
    for i in range(model.seq_len):
        logits = np.array(model.apply({"params": params}, ids, image=image))[:, i]
        logits[:, PAD] = -np.inf
        ids = ids.at[:, i].set(np.argmax(logits, -1))
    return np.asarray(ids)


def test_greedy_and_beam_sampling_match_brute_force():
    model, params, image, _ = _tiny()
    want = _brute_force_greedy(model, params, image)
    got, logp = sample_autoregressive(model, params, jax.random.PRNGKey(0), image=image,
                                      temperature=0.0)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == jnp.int32 and (np.asarray(got) != PAD).all()
    np.testing.assert_array_equal(logp, 0.0)  # the argmax is certain
    # beam search keeps the sequence of highest total log-probability: with 1 beam and
    # every candidate drawn at a temperature near 0, it is the greedy sequence again
    beam, _ = sample_autoregressive(model, params, jax.random.PRNGKey(0), image=image,
                                    temperature=1e-6, beam_size=2, fan_size=3)
    np.testing.assert_array_equal(beam, want)


def test_sampled_log_probability_is_the_sum_of_the_chosen_ids():
    model, params, image, _ = _tiny()
    ids, logp = sample_autoregressive(model, params, jax.random.PRNGKey(5), image=image,
                                      temperature=0.7)
    logits = np.array(model.apply({"params": params}, ids, image=image), np.float64)
    logits[..., PAD] = -np.inf
    z = logits / 0.7
    logsm = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - z.max(-1, keepdims=True)
    want = np.take_along_axis(logsm, np.asarray(ids)[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(logp, want, rtol=1e-4)


def test_completion_keeps_the_given_ids():
    model, params, image, ids = _tiny()
    keep = np.arange(TINY["seq_len"]) < 2
    got, _ = sample_autoregressive(model, params, jax.random.PRNGKey(0), image=image,
                                   temperature=1.0, keep_gt=keep, gt=ids)
    np.testing.assert_array_equal(np.asarray(got)[:, :2], np.asarray(ids)[:, :2])


def test_categorical_head_draws_the_softmax_and_never_the_padding_id():
    head = CategoricalHead(4)
    logits = jnp.array([5.0, 0.0, 1.0, 2.0])  # the padding id would win if it were allowed
    draws = np.asarray(head.sample(jax.random.PRNGKey(0), jnp.broadcast_to(logits,
                                                                           (20000, 4))))
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4)[1:] / 20000, p, atol=0.015)
    assert (draws != PAD).all()
    assert int(head.mean(logits)) == 3
    topk = CategoricalHead(4, top_k=1)
    assert set(np.asarray(topk.sample(jax.random.PRNGKey(1), jnp.broadcast_to(
        logits, (100, 4)))).tolist()) == {3}
