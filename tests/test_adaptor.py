"""The invertible (iRevNet) adaptor: exact inverse, log-determinant against the numerical
Jacobian, the NLL's change of variables, published parameter names, the disabled tree
unchanged, loading by name, and a tiny ImageNet run that trains, samples through the
inverse and resumes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tasks import imagenet as I  # noqa: E741
from uvim_givt.compat import big_vision as bv
from uvim_givt.config import load_config
from uvim_givt.data import catalog
from uvim_givt.errors import ConfigError
from uvim_givt.models import builders
from uvim_givt.models.adaptor import PARAMS_KEY, InvertibleAdaptor, grid_shape
from uvim_givt.sampling import sample_autoregressive
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training import checkpoint as ckpt_lib
from uvim_givt.training.objectives import givt_nll_loss
from uvim_givt.training.runner import copy_vae, givt_stage, load_run, train_run
from uvim_givt.training.trainer import train

TINY_GIVT = ["givt.model.emb_dim=32", "givt.model.mlp_dim=64", "givt.model.num_heads=2",
             "givt.model.num_decoder_layers=1", "givt.model.num_mixtures=2"]


def _cfg(*extra, adaptor=True, style="ar"):
    sets = [*TINY_GIVT, f"givt.adaptor.enabled={adaptor}", "givt.adaptor.num_blocks=3",
            *extra]
    return load_config(f"configs/imagenet.py:size=tiny,style={style}", sets)


def _random_params(abstract, seed):
    """Random values everywhere (init leaves GroupNorm at scale 1, bias 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), abstract)


def _adaptor(num_channels=4, num_blocks=3, bottleneck=8, patch=(1, 1), seq_len=4, seed=0):
    a = InvertibleAdaptor(num_channels=num_channels, num_blocks=num_blocks,
                          num_channels_bottleneck=bottleneck, pixel_shuffle_patch_size=patch)
    shapes = jax.eval_shape(a.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, seq_len, num_channels)))["params"]
    return a, _random_params(shapes, seed)


def _numerical_logdet(a, params, z):
    """log|det| of the Jacobian of forward on ``z`` (all of it: one example, or a batch,
    whose Jacobian is block-diagonal over the examples), by jacfwd in float64."""
    with jax.enable_x64():
        p64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), params)
        x = jnp.asarray(z, jnp.float64)

        def f(flat):
            return a.apply({"params": p64}, flat.reshape(x.shape).reshape(-1, *x.shape[-2:]),
                           method=a.forward).reshape(-1)
        jac = np.asarray(jax.jit(jax.jacfwd(f))(x.reshape(-1)))
    sign, logdet = np.linalg.slogdet(jac)
    assert sign != 0
    return logdet, jac


@pytest.mark.parametrize("channels,patch,seq_len", [(4, (1, 1), 16), (8, (1, 2), 32),
                                                    (2, (2, 1), 8)])
def test_inverse_undoes_forward(channels, patch, seq_len):
    a, params = _adaptor(channels, 4, 2 * channels, patch, seq_len)
    forward = jax.jit(lambda v: a.apply({"params": params}, v, method=a.forward))
    inverse = jax.jit(lambda v: a.apply({"params": params}, v, method=a.inverse))
    z = jax.random.normal(jax.random.PRNGKey(1), (3, seq_len, channels))
    y = forward(z)
    assert float(jnp.max(jnp.abs(y - z))) > 0.1  # the flow does transform the codes
    back = inverse(y)
    np.testing.assert_allclose(np.asarray(back), np.asarray(z), atol=1e-5, rtol=0)
    # and the other way round: forward undoes inverse
    again = forward(inverse(z))
    np.testing.assert_allclose(np.asarray(again), np.asarray(z), atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch,seq_len", [((1, 1), 4), ((1, 2), 8)])
def test_logdet_equals_that_of_the_numerical_jacobian(patch, seq_len):
    a, params = _adaptor(4, 3, 8, patch, seq_len, seed=3)
    z = jax.random.normal(jax.random.PRNGKey(2), (2, seq_len, 4))
    _, logdet = a.apply({"params": params}, z, method=a.forward_and_logdet)
    assert logdet.shape == (2,)
    for i in range(2):
        expected, jac = _numerical_logdet(a, params, z[i])
        np.testing.assert_allclose(float(logdet[i]), expected, atol=1e-4)
        # a genuinely non-trivial map: not a permutation of the inputs (whose |entries|
        # would sum to n)
        assert np.abs(jac).sum() > jac.shape[0] + 1


def _nll_setup(style):
    cfg = _cfg(style=style)
    model, adaptor = builders.build_model("givt", cfg), builders.build_adaptor(cfg)
    params = jax.jit(lambda k: builders.init_givt_stage(model, adaptor, k))(
        jax.random.PRNGKey(0))
    params = {**params, PARAMS_KEY: _random_params(params[PARAMS_KEY], 4)}
    z = jax.random.normal(jax.random.PRNGKey(5), (2, model.seq_len, model.out_dim))
    labels = jnp.asarray([1, 7], jnp.int32)
    return model, adaptor, params, z, labels


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_nll_with_adaptor_is_nll_of_transformed_codes_minus_logdet(style):
    model, adaptor, params, z, labels = _nll_setup(style)
    key = jax.random.PRNGKey(9)

    def loss(p, codes, with_adaptor):
        return givt_nll_loss(model, p, codes, key, labels=labels, train=False,
                             adaptor=adaptor if with_adaptor else None)
    loss = jax.jit(loss, static_argnums=2)
    nll, metrics = loss(params, z, True)
    # independently: the adaptor's forward by itself, the GIVT alone on its output, and the
    # log-determinant of the numerical Jacobian, spread over the L tokens
    a_params = params[PARAMS_KEY]
    y = adaptor.apply({"params": a_params}, z, method=adaptor.forward)
    givt_only = {k: v for k, v in params.items() if k != PARAMS_KEY}
    nll_y, _ = loss(givt_only, y, False)
    logdet_batch, _ = _numerical_logdet(adaptor, a_params, z)  # sum over the examples
    expected = float(nll_y) - logdet_batch / len(z) / model.seq_len
    np.testing.assert_allclose(float(nll), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["nll_adapted"]), float(nll_y), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["nll_per_dim"]), float(nll) / model.out_dim,
                               rtol=1e-6)
    # the GIVT of raw codes scores something else: the adaptor is really in the loop
    nll_z, _ = loss(givt_only, z, False)
    assert abs(float(nll_z) - float(nll)) > 1e-3


def test_the_adaptor_is_trained_jointly_and_params_without_it_are_refused():
    model, adaptor, params, z, labels = _nll_setup("ar")
    grads = jax.jit(jax.grad(lambda p: givt_nll_loss(
        model, p, z, jax.random.PRNGKey(0), labels=labels, adaptor=adaptor)[0]))(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads[PARAMS_KEY])]
    assert all(np.isfinite(norms)) and sum(norms) > 0
    with pytest.raises(ValueError, match="adaptor"):
        givt_nll_loss(model, params, z, jax.random.PRNGKey(0), labels=labels)


def _flat(tree):
    return {"/".join(k): tuple(v.shape) for k, v in
            traverse_util.flatten_dict(jax.tree_util.tree_map(lambda x: x, tree)).items()}


def test_parameter_names_follow_the_published_module():
    """big_vision models/proj/givt/adaptor.py: a list ``modules`` of iRevNet blocks; the first
    block has no pre-activation GroupNorm; each half's net is C/2 -> B/2 -> B/2 -> C/2."""
    a, params = _adaptor(num_channels=16, num_blocks=2, bottleneck=64, seq_len=16)
    expected = {}
    for i in range(2):
        expected[f"modules_{i}/Conv_0/kernel"] = (3, 3, 8, 32)
        expected[f"modules_{i}/Conv_1/kernel"] = (3, 3, 32, 32)
        expected[f"modules_{i}/Conv_2/kernel"] = (3, 3, 32, 8)
        for gn, n in (("gn_0", 8), ("gn_1", 32), ("gn_2", 32)):
            if gn == "gn_0" and i == 0:
                continue
            expected[f"modules_{i}/{gn}/scale"] = (n,)
            expected[f"modules_{i}/{gn}/bias"] = (n,)
    assert _flat(params) == expected


def test_disabled_tree_is_unchanged_and_enabled_adds_params_adaptor():
    off, on = _cfg(adaptor=False), _cfg(adaptor=True)
    assert builders.build_adaptor(off) is None
    model = builders.build_model("givt", off)
    plain = _flat(jax.eval_shape(lambda: builders.init_givt(model, jax.random.PRNGKey(0))))
    assert _flat(builders.abstract_params("givt", off)) == plain
    with_adaptor = _flat(builders.abstract_params("givt", on))
    assert {k: v for k, v in with_adaptor.items() if not k.startswith(PARAMS_KEY)} == plain
    assert {k.split("/")[1] for k in with_adaptor if k.startswith(PARAMS_KEY)} == \
        {"modules_0", "modules_1", "modules_2"}
    # the same initial values as before the adaptor existed (same key use)
    key = jax.random.PRNGKey(3)
    same = jax.tree_util.tree_map(
        np.array_equal, jax.jit(lambda k: builders.init_givt_stage(model, None, k))(key),
        jax.jit(lambda k: builders.init_givt(model, k))(key))
    assert all(jax.tree_util.tree_leaves(same))


def test_published_imagenet_values_and_grid():
    cfg = load_config("configs/imagenet.py:size=paper", ["givt.adaptor.enabled=True"])
    a = builders.build_adaptor(cfg)  # givt_imagenet2012.py: 8 blocks, 4 x out_dim
    assert (a.num_blocks, a.num_channels, a.num_channels_bottleneck) == (8, 16, 64)
    assert load_config("configs/imagenet.py:size=paper").givt.adaptor.enabled is False
    assert grid_shape(256, (1, 1)) == (16, 16)
    # 512px large GIVT-Causal: the 32x32 grid shuffled by (1, 2), 8 x out_dim bottleneck
    big = load_config("configs/imagenet.py:size=paper,res=512,model=large,adaptor=True")
    a = builders.build_adaptor(big)
    assert (a.num_blocks, a.num_channels, a.num_channels_bottleneck) == (8, 32, 256)
    assert grid_shape(big.givt.model.seq_len, a.pixel_shuffle_patch_size) == (32, 16)


@pytest.mark.parametrize("setting,message", [
    ("givt.adaptor.pixel_shuffle_patch_size=(1, 3)", "not a square grid shuffled by"),
    ("givt.adaptor.num_channels_bottleneck=6", "multiple of the 2 GroupNorm groups"),
])
def test_adaptor_that_does_not_fit_the_codes_is_a_config_error(setting, message):
    with pytest.raises(ConfigError, match=f"givt.adaptor.*{message}"):
        builders.build_adaptor(_cfg(setting))


def test_released_checkpoint_with_adaptor_loads_by_name(tmp_path):
    """A big_vision GIVT checkpoint stores the adaptor as ``params_adaptor/...`` next to
    the GIVT: it converts into a run directory with the adaptor enabled, and a config
    without one names the setting."""
    cfg = _cfg()
    params = _random_params(builders.abstract_params("givt", cfg), 6)
    npz = bv.save_npz(str(tmp_path / "givt_adaptor.npz"), params)
    sets = [*TINY_GIVT, "givt.adaptor.enabled=True", "givt.adaptor.num_blocks=3"]
    out = str(tmp_path / "run")
    bv.convert(npz, "configs/imagenet.py", out, sets, log=lambda _: None)
    loaded, _ = ckpt_lib.load_params(out, "givt")
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), b),
                                  loaded, params)
    assert all(jax.tree_util.tree_leaves(same))
    with pytest.raises(bv.CheckpointMismatch, match="givt.adaptor.enabled=True"):
        bv.convert(npz, "configs/imagenet.py", str(tmp_path / "off"), TINY_GIVT,
                   log=lambda _: None)


# ------------------------------------------------------------------ a tiny ImageNet run
RUN_SETS = [*TINY_GIVT, "givt.adaptor.enabled=True", "givt.adaptor.num_blocks=2",
            "vae.train.total_steps=2", "vae.train.batch_size=4", "vae.model.filters=8",
            "vae.model.num_groups=4", "vae.ema_decay=0.0", "givt.train.total_steps=4",
            "givt.train.batch_size=4", "givt.train.ckpt_every=2", "givt.train.keep_ckpts=5",
            "givt.train.optim.schedule=constant", "givt.train.optim.warmup_fraction=0.0",
            "data.shuffle_buffer=16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = load_config("configs/imagenet.py:size=tiny", RUN_SETS)
    run_dir = str(tmp_path_factory.mktemp("adaptor") / "run")
    train_run(I.TASK, cfg, run_dir, log=lambda _: None)
    return cfg, run_dir


def test_run_trains_the_adaptor_and_samples_through_its_inverse(tiny_run):
    cfg, run_dir = tiny_run
    run = load_run(run_dir)
    assert run.givt_step == 4 and PARAMS_KEY in run.givt_params
    model, adaptor = builders.build_model("givt", cfg), builders.build_adaptor(cfg)
    init = jax.jit(lambda k: builders.init_givt_stage(model, adaptor, k))(
        jax.random.split(jax.random.PRNGKey(int(cfg.givt.train.seed)))[0])
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(run.givt_params[PARAMS_KEY]),
        jax.tree_util.tree_leaves(init[PARAMS_KEY]), strict=True)]
    assert max(moved) > 0  # trained with the GIVT
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=4)
    gen = gen.with_settings(gen.settings.replace(temperature=0.9, cfg_weight=0.0))
    labels = jnp.asarray([0, 3, 3, 9], jnp.int32)
    key = jax.random.PRNGKey(11)
    z = gen.sample_codes(0, labels=labels, rng=key)
    # independently: the plain sampler on the GIVT's side, then the adaptor's inverse
    y, _ = sample_autoregressive(gen.model, run.givt_params, key, labels=labels,
                                 temperature=0.9, temperature_probs=1.0)
    expected = jax.jit(lambda p, v: adaptor.apply({"params": p}, v, method=adaptor.inverse))(
        run.givt_params[PARAMS_KEY], y)
    np.testing.assert_allclose(np.asarray(z), np.asarray(expected), atol=1e-5)
    assert not np.allclose(np.asarray(z), np.asarray(y), atol=1e-3)
    images = gen.decode_images(np.asarray(z))
    vae = builders.build_model("vae", cfg)
    decoded = jax.jit(lambda p, v: vae.apply({"params": p}, v, method=vae.decode))(
        run.vae_params, expected)
    expected_images = np.clip(np.round((np.asarray(decoded) + 1) * 127.5), 0, 255)
    # two separately compiled decoders may round a value at .5 either way: one grey level
    assert np.abs(images.astype(np.int32) - expected_images).max() <= 1
    # teacher forcing reads the adapted codes and maps its means back
    x = np.zeros((2, 32, 32, 3), np.float32)
    assert gen.teacher_forced(None, x, labels=np.asarray([1, 2], np.int32)).shape == x.shape


def test_rerun_and_interrupted_run_resume_with_the_adaptor(tiny_run, tmp_path):
    cfg, run_dir = tiny_run
    metrics = open(os.path.join(run_dir, "metrics.jsonl")).read()
    train_run(I.TASK, cfg, run_dir, log=lambda _: None)  # same command: nothing retrained
    assert open(os.path.join(run_dir, "metrics.jsonl")).read() == metrics
    # stop after 2 steps, resume to 4: the same parameters as the uninterrupted run
    other = str(tmp_path / "resumed")
    copy_vae(run_dir, other)
    vae_params = load_run(run_dir, need_givt=False).vae_params
    stage = givt_stage(I.TASK, cfg,
                       lambda: catalog.load(I.TASK.readers, cfg, cfg.data.source, "train"),
                       vae_params)
    half = cfg.givt.train.copy_and_resolve_references()
    half.total_steps = 2
    train(half, other, "givt", stage)
    res = train(cfg.givt.train, other, "givt", stage)
    assert res.step == 4
    full = load_run(run_dir).givt_params
    same = jax.tree_util.tree_map(lambda a, b: np.allclose(np.asarray(a), np.asarray(b),
                                                           atol=1e-6), res.params, full)
    assert all(jax.tree_util.tree_leaves(same))
