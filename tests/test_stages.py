"""One definition per stage kind: the held-out loss the evaluators report is the training
loss of the stage, evaluated; the runner trains with the same definition."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from evals.loops import HELDOUT_KEY, heldout_loss_fn
from uvim_givt import config as config_lib
from uvim_givt.training import runner, stages
from uvim_givt.training.trainer import split_weights

# Everything random in training that the held-out loss leaves out is switched off, so the
# two must agree to float tolerance at the same rng.
DETERMINISTIC = {
    "panoptic": ["givt.input_noise=0.0", "givt.posterior='mean'"],
    "imagenet": ["givt.input_noise=0.0", "givt.posterior='mean'",
                 "givt.model.dec_dropout_rate=0.0", "givt.model.drop_labels_probability=0.0"],
}
CASES = {  # stage kind -> (task config, overrides): image- and class-conditional GIVTs
    "vit": ("panoptic", []),
    "givt_ar": ("panoptic", []),
    "cnn": ("imagenet", []),
    "givt_masked": ("imagenet", ["givt.model.style='masked'", "givt.adaptor.enabled=True"]),
    # over code ids, with MaskGIT's label smoothing: the original UViM's VTT, and a MaskGIT
    "vtt": ("panoptic_vq", ["givt.label_smoothing=0.1"]),
    "discrete": ("imagenet_vq", ["givt.model.style='masked'", "givt.label_smoothing=0.1"]),
}
CONFIGS = {"panoptic_vq": "panoptic.py:tokens=vq", "imagenet_vq": "imagenet.py:tokens=vq"}
DETERMINISTIC["panoptic_vq"] = []  # code ids are deterministic; the tiny VTT has no dropout
DETERMINISTIC["imagenet_vq"] = DETERMINISTIC["imagenet"][2:]


# Narrow models: what is checked (which loss, which randomness) does not depend on the width,
# and the compiles are what these tests spend their time on.
SMALL = {
    "panoptic": ["vae.model.width=32", "vae.model.mlp_dim=64", "vae.model.depth=1",
                 "vae.model.decoder_depth=1", "givt.model.emb_dim=32", "givt.model.mlp_dim=64",
                 "givt.model.num_layers=1", "givt.model.num_decoder_layers=1"],
    "imagenet": ["vae.model.filters=8", "vae.model.num_groups=4", "givt.model.emb_dim=32",
                 "givt.model.mlp_dim=64", "givt.model.num_heads=2",
                 "givt.model.num_decoder_layers=1", "givt.model.num_mixtures=2"],
    "panoptic_vq": ["vae.model.width=32", "vae.model.mlp_dim=64", "vae.model.depth=1",
                    "vae.model.decoder_depth=1", "givt.model.emb_dim=32",
                    "givt.model.mlp_dim=64", "givt.model.num_layers=1"],
    "imagenet_vq": ["vae.model.filters=8", "vae.model.num_groups=4", "givt.model.emb_dim=32",
                    "givt.model.mlp_dim=64", "givt.model.num_heads=2",
                    "givt.model.num_decoder_layers=1"],
}


def _cfg(task: str, extra: list[str]):
    return config_lib.load_config(f"configs/{CONFIGS.get(task, task + '.py')}",
                                  SMALL[task] + DETERMINISTIC[task] + extra)


def _batch(cfg, kind, rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = int(cfg.data.image_size)
    out = {"image": rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)}
    if "labels" in kind.inputs:
        classes = [n for _, n in sorted(stages.stage_of(cfg, "vae").channels.values())]
        out["labels"] = np.stack([rng.integers(0, n, (2, size, size)) for n in classes],
                                 -1).astype(np.int32)
    if "label" in kind.inputs:
        out["label"] = rng.integers(0, int(cfg.givt.model.num_labels), (2,)).astype(np.int32)
    return out


def _init(kind, seed: int):
    """Initial parameters, perturbed: some heads start at zero, which would make the loss
    independent of the posterior sample (and the test below vacuous)."""
    params = jax.jit(kind.init)(jax.random.PRNGKey(seed))  # jitted: eager flax is slow
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)])


def _frozen(cfg):
    """Stage 1's variables as stage 2 reads them (a VQ-VAE's: parameters and dictionary)."""
    vae = stages.stage_of(cfg, "vae")
    params = vae.vae_params(_init(vae, 2))
    if hasattr(vae, "init_state"):
        return {"params": params, "state": vae.init_state(jax.random.PRNGKey(3))}
    return params


class _NoData:
    name = "none"

    def preprocess(self, *a, **k):  # the loss is called on arrays here
        raise AssertionError("not used")


@pytest.mark.parametrize("case", sorted(CASES))
def test_heldout_loss_is_the_training_loss_at_the_same_rng(case):
    cfg = _cfg(*CASES[case])
    stage = "vae" if case in ("vit", "cnn") else "givt"
    kind = stages.stage_of(cfg, stage)
    assert stages.kind_name(cfg, stage) == case
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(HELDOUT_KEY)
    params = _init(kind, 1)
    frozen = None
    if stage == "givt":
        frozen = _frozen(cfg)
    batch = _batch(cfg, kind, rng)
    # What the trainer differentiates (runner's Stage.loss_fn), at the held-out key.
    if stage == "vae":
        trained = runner.vae_stage(_NoData(), cfg, lambda: None)
        loss, parts = jax.jit(trained.loss_fn)(params, batch, key)
    else:
        trained = runner.givt_stage(_NoData(), cfg, lambda: None, frozen)
        loss, parts = jax.jit(trained.loss_fn)(params, batch, key, frozen)
    # What the held-out evaluator reports for the same batch (VAE parameters alone for
    # stage 1: the view of a trained run).
    held_params = params if stage == "givt" else kind.stage_params(kind.vae_params(params))
    heldout = heldout_loss_fn(kind)(held_params, batch, frozen)
    parts, weights = split_weights(parts)  # a masked model's weights: training only
    if "givt.label_smoothing=0.1" in CASES[case][1]:  # the loss is the smoothed one
        assert float(loss) == float(parts["xent_smoothed"]) != float(parts["nll_per_token"])
    assert set(weights) <= {"loss", *parts} and set(parts) <= set(heldout)
    np.testing.assert_allclose(float(heldout["loss"]), float(loss), rtol=2e-5, atol=1e-6)
    for name, value in parts.items():
        np.testing.assert_allclose(float(heldout[name]), float(value), rtol=2e-5, atol=1e-6,
                                   err_msg=name)
    # The training loss is a real function of the rng (a posterior sample or a mask), so
    # the equality above is not one of constants.
    if stage == "vae" or case in ("givt_masked", "discrete"):
        other, _ = jax.jit(lambda p, b, k, f: kind.loss(p, b, k, True, f))(
            params, batch, jax.random.PRNGKey(7), frozen)
        assert abs(float(other) - float(loss)) > 1e-7


def test_vtt_label_smoothing_leaves_the_padding_id_out():
    """The VTT's smoothed loss, brute force in NumPy: 0.9 + 0.1 / (V - 1) on the code id + 1,
    0.1 / (V - 1) on every other id but the padding id 0, against its log-softmax over all
    V ids (big_vision's training loss)."""
    cfg = _cfg(*CASES["vtt"])
    kind = stages.stage_of(cfg, "givt")
    params, frozen = _init(kind, 1), _frozen(cfg)
    batch = _batch(cfg, kind, np.random.default_rng(2))
    loss, parts = jax.jit(lambda p: kind.loss(p, batch, jax.random.PRNGKey(0), False,
                                              frozen))(params)
    tokens = np.asarray(kind.codes(frozen, batch)) + 1
    logits = np.asarray(kind.model.apply({"params": params}, tokens, image=batch["image"]),
                        np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    v = logp.shape[-1]
    target = 0.9 * np.eye(v)[tokens] + 0.1 / (v - 1) * (np.arange(v) != 0)
    np.testing.assert_allclose(float(loss), -np.mean(np.sum(target * logp, -1)), rtol=1e-5)
    nll = -np.mean(np.take_along_axis(logp, tokens[..., None], -1))
    np.testing.assert_allclose(float(parts["nll_per_token"]), nll, rtol=1e-5)


def test_training_randomness_is_left_out_of_the_heldout_loss():
    """With input noise on (the tiny panoptic recipe), the training loss moves with the rng
    and the held-out one does not see the noise."""
    cfg = config_lib.load_config("configs/panoptic.py",
                                 SMALL["panoptic"] + ["givt.posterior='mean'"])
    assert float(cfg.givt.input_noise) > 0
    kind = stages.stage_of(cfg, "givt")
    vae = stages.stage_of(cfg, "vae")
    params, frozen = _init(kind, 1), _init(vae, 2)
    batch = _batch(cfg, kind, np.random.default_rng(1))
    train = jax.jit(lambda k: kind.loss(params, batch, k, True, frozen)[0])
    heldout = jax.jit(lambda k: kind.loss(params, batch, k, False, frozen)[0])
    a, b = float(train(jax.random.PRNGKey(0))), float(train(jax.random.PRNGKey(5)))
    h0, h5 = float(heldout(jax.random.PRNGKey(0))), float(heldout(jax.random.PRNGKey(5)))
    assert a != b and h0 == h5 and h0 != a


def test_definitions_are_built_once_per_config():
    cfg = _cfg("panoptic", [])
    assert stages.stage_of(cfg, "givt") is stages.stage_of(cfg, "givt")
    same = config_lib.load_config("configs/panoptic.py", SMALL["panoptic"]
                                  + DETERMINISTIC["panoptic"] + ["givt.sampling.temperature=0.9"])
    assert stages.stage_of(same, "givt") is stages.stage_of(cfg, "givt")  # sampling only
    other = _cfg("panoptic", ["givt.model.style='masked'"])
    assert stages.stage_of(other, "givt") is not stages.stage_of(cfg, "givt")


@pytest.mark.parametrize("task", ["panoptic", "imagenet"])
def test_published_heldout_nll_is_the_training_loss_without_input_noise(task):
    """big_vision's validation_fn is its training loss_fn: a posterior sample of the codes,
    labels dropped and dropout as in training. ``codes="sample"`` reports exactly what the
    trainer differentiates on a recipe without input noise, at the held-out key folded with
    the batch index; ``codes="mean"`` is another, deterministic number."""
    cfg = config_lib.load_config(f"configs/{task}.py", SMALL[task])
    assert cfg.evals.givt_loss.codes == "sample" and cfg.givt.posterior == "sample"
    kind, vae = stages.stage_of(cfg, "givt"), stages.stage_of(cfg, "vae")
    params, frozen = _init(kind, 1), vae.vae_params(_init(vae, 2))
    batch = _batch(cfg, kind, np.random.default_rng(3))
    quiet = config_lib.load_config(f"configs/{task}.py", SMALL[task] + ["givt.input_noise=0.0"])
    trained = runner.givt_stage(_NoData(), quiet, lambda: None, frozen)
    loss_fn = jax.jit(trained.loss_fn)
    for index in (0, 3):
        key = jax.random.fold_in(jax.random.PRNGKey(HELDOUT_KEY), index)
        want, _ = loss_fn(params, batch, key, frozen)
        got = heldout_loss_fn(kind, "sample")(params, batch, frozen, index)
        np.testing.assert_allclose(float(got["loss"]), float(want), rtol=2e-5)
    means = heldout_loss_fn(kind, "mean")(params, batch, frozen, 0)
    sample = heldout_loss_fn(kind, "sample")(params, batch, frozen, 0)
    assert abs(float(means["loss"]) - float(sample["loss"])) > 1e-4
    with pytest.raises(ValueError, match="codes='median'"):
        heldout_loss_fn(kind, "median")


def test_completion_keeps_the_given_codes_and_ends_at_the_oracle():
    """``Predictor.predict(given=labels, num_given=k)``: the first k codes are the ground
    truth's posterior means and the rest are sampled given them; k = 0 is the plain sampled
    prediction (same seed), k = seq_len decodes the true codes (the oracle)."""
    from uvim_givt.sampling.predictor import Predictor
    cfg = _cfg("panoptic", ["givt.sampling.num_samples=1", "givt.sampling.beam_size=1",
                            "givt.sampling.fan_size=1"])
    kind, vae = stages.stage_of(cfg, "givt"), stages.stage_of(cfg, "vae")
    params, vae_params = _init(kind, 1), vae.vae_params(_init(vae, 2))
    batch = _batch(cfg, kind, np.random.default_rng(4))
    pred = Predictor(cfg, vae_params, params)
    truth = np.asarray(pred.encode(batch["labels"]))
    seq_len = truth.shape[1]
    k = seq_len // 2
    codes = np.asarray(pred.sample_codes(0, image=batch["image"], given=truth,
                                         keep=np.arange(seq_len) < k))
    np.testing.assert_allclose(codes[:, :k], truth[:, :k], atol=1e-6)
    assert np.abs(codes[:, k:] - truth[:, k:]).max() > 1e-2  # the rest are drawn
    for got, want in ((pred.predict(batch["image"], seed=3, given=batch["labels"],
                                    num_given=0), pred.predict(batch["image"], seed=3)),
                      (pred.predict(batch["image"], seed=3, given=batch["labels"],
                                    num_given=seq_len), pred.oracle(batch["labels"]))):
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4)
            assert np.abs(want[name]).max() > 1e-3
    nll = pred.position_nll(batch["image"], batch["labels"])
    heldout = heldout_loss_fn(kind, "mean")(params, batch, vae_params, 0)
    assert nll.shape == truth.shape[:2]
    np.testing.assert_allclose(nll.mean(), float(heldout["nll_per_token"]), rtol=1e-5)
