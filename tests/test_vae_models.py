"""Stage-1 VAEs: reference parameter trees, shapes, losses, clipping, a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from uvim_givt.models import vae_losses
from uvim_givt.models.cnn_vae import CNNVAE
from uvim_givt.models.vit_vae import ViTVAE

TREES = Path(__file__).parent / "data" / "big_vision_param_trees.json"

TINY_CHANNELS = {"sem": (0, 5), "inst": (1, 3)}


def tiny_vit_vae(**kw) -> ViTVAE:
    cfg = dict(label_channels=TINY_CHANNELS, input_size=(32, 32), patch_size=(8, 8), width=32,
               scan=False,
               depth=1, decoder_depth=1, mlp_dim=64, num_heads=2, code_len=4, codeword_dim=4)
    cfg.update(kw)
    return ViTVAE(**cfg)


def tiny_cnn_vae(**kw) -> CNNVAE:
    cfg = dict(filters=32, num_res_blocks=1, channel_multipliers=(1, 2, 2), codeword_dim=4,
               input_size=(32, 32))
    cfg.update(kw)
    return CNNVAE(**cfg)


def toy_labels(batch: int = 2, size: int = 32) -> jnp.ndarray:
    """A fixed blocky 2-channel label map (classes < 5 and < 3)."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    sem = (rows // 8 + cols // 8) % 5
    inst = np.minimum(rows // 16 + (cols >= 16), 2)
    lab = np.stack([sem, inst], axis=-1)
    lab = np.stack([np.rot90(lab, k) for k in range(batch)])
    return jnp.asarray(lab, jnp.int32)


# ----------------------------------------------------------- reference trees
@pytest.mark.parametrize("key,make,shape", [
    ("vae_uvim_panoptic_stage1",
     lambda: ViTVAE(label_channels={"semantics": (0, 134), "instances": (1, 100)},
                    codeword_dim=32),
     (1, 512, 512, 2)),
    ("vae_uvim_depth_stage1",
     lambda: ViTVAE(label_channels={"depth": (0, 256)}, codeword_dim=16),
     (1, 512, 512, 1)),
    ("vae_imagenet256_cnn", lambda: CNNVAE(), (1, 256, 256, 3)),
])
def test_reference_param_trees(key, make, shape):
    ref = json.loads(TREES.read_text())[key]
    model = make()
    dtype = jnp.float32 if key.endswith("cnn") else jnp.int32
    x = jax.ShapeDtypeStruct(shape, dtype)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    flat = {k: list(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    assert sorted(flat) == sorted(ref["params"])
    assert flat == ref["params"]
    assert sum(int(np.prod(s)) for s in flat.values()) == ref["num_params"]


# ------------------------------------------------------------------ ViT VAE
@pytest.fixture(scope="module")
def vit():
    """A tiny ViT VAE, its parameters, a toy label map and its eval-mode outputs (built once)."""
    model = tiny_vit_vae()
    labels = toy_labels()
    params = jax.jit(model.init)(jax.random.PRNGKey(0), labels)["params"]
    outputs = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, labels)
    return model, params, labels, outputs


def test_vit_vae_shapes_and_roundtrip(vit):
    model, params, labels, (logits, aux) = vit
    v = {"params": params}
    mu, logvar = jax.eval_shape(lambda x: model.apply(v, x, method=model.encode), labels)
    assert mu.shape == logvar.shape == (2, 4, 4)
    dec = jax.eval_shape(lambda z: model.apply(v, z, method=model.decode), mu)
    expected = {"sem": (2, 32, 32, 5), "inst": (2, 32, 32, 3)}
    assert {k: x.shape for k, x in dec.items()} == expected
    train = jax.eval_shape(lambda x, r: model.apply(v, x, train=True, rngs={"dropout": r}),
                           labels, jax.random.PRNGKey(0))
    assert {k: x.shape for k, x in train[0].items()} == expected
    assert train[1]["z"].shape == (2, 4, 4)
    assert {k: x.shape for k, x in logits.items()} == expected
    np.testing.assert_array_equal(aux["z"], aux["mu"])  # the mean in eval


def test_vit_vae_channel_order_is_alphabetical(vit):
    """The mapping's order does not matter: layout is sorted by name (big_vision's)."""
    a, params, labels, (out_a, _) = vit
    b = tiny_vit_vae(label_channels={"inst": (1, 3), "sem": (0, 5)})
    assert a.channel_order == b.channel_order == ("inst", "sem")
    oh = a.apply({"params": params}, labels, method=a.one_hot)
    np.testing.assert_array_equal(oh[..., :3], jax.nn.one_hot(labels[..., 1], 3))  # inst first
    np.testing.assert_array_equal(oh[..., 3:], jax.nn.one_hot(labels[..., 0], 5))
    out_b, _ = jax.jit(lambda p, x: b.apply({"params": p}, x))(params, labels)
    for k in out_a:
        np.testing.assert_allclose(out_a[k], out_b[k])


def test_vit_vae_pixel_layout(vit):
    """Head features per token are (row in patch, column in patch, class)."""
    model, params, _, _ = vit
    p, q, c = 8, 8, 8
    bias = jnp.arange(p * q * c, dtype=jnp.float32)
    kernel = jnp.zeros_like(params["decoder_head"]["kernel"])
    v = {"params": {**params, "decoder_head": {"kernel": kernel, "bias": bias}}}
    pix = jax.jit(lambda v, z: model.apply(v, z, method=model.decode_pixels))(
        v, jnp.zeros((1, 4, 4)))
    expected = np.tile(np.asarray(bias).reshape(p, q, c), (4, 4, 1))
    np.testing.assert_array_equal(pix[0], expected)
    logits = model.apply(v, pix, method=model.split_logits)
    np.testing.assert_array_equal(logits["inst"][0], expected[..., :3])
    np.testing.assert_array_equal(logits["sem"][0], expected[..., 3:])


def test_code_dropout_and_posterior_sampling(vit):
    rng = jax.random.PRNGKey(3)
    seq = np.asarray(vae_losses.code_dropout_mask(rng, 16, 10, "seq"))
    rnd = np.asarray(vae_losses.code_dropout_mask(rng, 16, 10, "random"))
    assert (np.diff(seq.astype(int), axis=1) <= 0).all()  # kept tokens form a prefix
    np.testing.assert_array_equal(seq.sum(1), rnd.sum(1))  # same count, shuffled positions
    assert not (seq == rnd).all()
    assert vae_losses.code_dropout_mask(rng, 2, 10, "none").all()

    _, params, labels, _ = vit
    model = tiny_vit_vae(code_dropout="seq")
    run = jax.jit(lambda p, x, r: model.apply({"params": p}, x, train=True,
                                              rngs={"dropout": r})[1])
    auxs = [run(params, labels, jax.random.PRNGKey(i)) for i in range(8)]
    z = np.stack([np.asarray(a["z"]) for a in auxs])  # [8, B, L, D]
    mu = np.stack([np.asarray(a["mu"]) for a in auxs])
    zeroed = np.all(z == 0, axis=-1)  # [8, B, L]
    assert zeroed.any() and not zeroed.all()
    assert (np.diff(zeroed.astype(int), axis=-1) >= 0).all()  # dropped tokens form a suffix
    kept = ~zeroed
    assert not np.allclose(z[kept], mu[kept])  # kept tokens are posterior samples, not the mean


# -------------------------------------------------------------------- losses
def np_kl(mu, logvar):
    return 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1.0 - logvar, axis=(1, 2))


def np_xent(logits, labels, ignore_zero):
    b, k = logits.shape[0], logits.shape[-1]
    lg = logits.reshape(b, -1, k).astype(np.float64)
    lab = labels.reshape(b, -1)
    lse = np.log(np.sum(np.exp(lg - lg.max(-1, keepdims=True)), -1)) + lg.max(-1)
    nll = lse - np.take_along_axis(lg, lab[..., None], -1)[..., 0]
    out = []
    for i in range(b):
        valid = lab[i] != 0 if ignore_zero else np.ones_like(lab[i], bool)
        out.append(nll[i][valid].mean() if valid.any() else 0.0)
    return np.asarray(out)


def test_kl_matches_numpy():
    rs = np.random.RandomState(0)
    mu, logvar = rs.randn(3, 5, 4), rs.randn(3, 5, 4)
    kl = vae_losses.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar))
    np.testing.assert_allclose(kl, np_kl(mu, logvar), rtol=1e-5)
    kl_mean = vae_losses.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar), "mean")
    np.testing.assert_allclose(kl_mean, np_kl(mu, logvar) / 5, rtol=1e-5)
    assert float(vae_losses.gaussian_kl(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)))[0]) == 0.0


def test_xent_ignore_zero_matches_numpy():
    rs = np.random.RandomState(1)
    logits = rs.randn(3, 6, 7, 5).astype(np.float32)
    labels = rs.randint(0, 5, size=(3, 6, 7))
    labels[2] = 0  # an example without any valid pixel contributes 0
    for ign in (False, True):
        got = vae_losses.pixel_xent(jnp.asarray(logits), jnp.asarray(labels), ignore_zero=ign)
        np.testing.assert_allclose(got, np_xent(logits, labels, ign), rtol=1e-5, atol=1e-6)

    lab2 = np.stack([labels, rs.randint(0, 3, size=(3, 6, 7))], -1)
    logit_d = {"sem": jnp.asarray(logits), "inst": jnp.asarray(rs.randn(3, 6, 7, 3))}
    mu, logvar = rs.randn(3, 4, 2), rs.randn(3, 4, 2)
    loss, m = vae_losses.label_vae_loss(
        logit_d, jnp.asarray(lab2), jnp.asarray(mu), jnp.asarray(logvar),
        label_channels=TINY_CHANNELS, beta=0.1, ignore_zero={"sem"})
    x_sem = np_xent(logits, labels, True).mean()
    x_inst = np_xent(np.asarray(logit_d["inst"]), lab2[..., 1], False).mean()
    kl = np_kl(mu, logvar).mean()
    np.testing.assert_allclose(m["xent/sem"], x_sem, rtol=1e-5)
    np.testing.assert_allclose(m["xent/inst"], x_inst, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, x_sem + x_inst + 0.1 * kl, rtol=1e-5)


def test_image_vae_loss():
    rs = np.random.RandomState(2)
    rec, tgt = rs.rand(2, 4, 4, 3), rs.rand(2, 4, 4, 3)
    mu, logvar = rs.randn(2, 3, 2), rs.randn(2, 3, 2)
    loss, m = vae_losses.vae_loss(jnp.asarray(rec), jnp.asarray(tgt), jnp.asarray(mu),
                                  jnp.asarray(logvar), beta=0.01,
                                  extra_losses={"perceptual": jnp.float32(0.5)})
    mse = np.mean((rec - tgt) ** 2)
    np.testing.assert_allclose(m["rec"], mse, rtol=1e-5)
    np.testing.assert_allclose(loss, mse + 0.01 * np_kl(mu, logvar).mean() + 0.5, rtol=1e-5)
    assert set(m) == {"rec", "kl", "perceptual", "loss"}
    _, m_sum = vae_losses.vae_loss(jnp.asarray(rec), jnp.asarray(tgt), jnp.asarray(mu),
                                   jnp.asarray(logvar), beta=0.0, rec_reduction="sum")
    np.testing.assert_allclose(m_sum["rec"], 0.5 * np.sum((rec - tgt) ** 2) / 2, rtol=1e-5)


# ------------------------------------------------------------------ CNN VAE
@pytest.mark.parametrize("mults,grid", [((1, 2, 2), 8), ((1, 2), 16)])
def test_cnn_vae_latent_shapes(mults, grid):
    model = tiny_cnn_vae(channel_multipliers=mults)
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    mu, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode),
                                params, images)
    assert mu.shape == logvar.shape == (2, grid * grid, 4)
    assert model.code_len == grid * grid and model.latent_grid == (grid, grid)
    out = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), params, mu)
    assert out.shape == (2, 32, 32, 3)


@pytest.fixture(scope="module")
def cnn():
    model = tiny_cnn_vae(channel_multipliers=(1, 2))  # 16x16 latents
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images)["params"]
    return model, params, images


def test_cnn_vae_roundtrip(cnn):
    model, params, images = cnn
    run = jax.jit(lambda p, x, r: model.apply({"params": p}, x, train=True, rngs={"dropout": r}))
    rec, aux = run(params, images, jax.random.PRNGKey(1))
    mu = aux["mu"]
    assert mu.shape == aux["logvar"].shape == aux["z"].shape == (2, 256, 4)
    assert not np.allclose(aux["z"], mu)  # a posterior sample in training
    assert rec.shape == images.shape and float(jnp.max(jnp.abs(rec))) <= 1.0
    grid_z = model.to_grid(mu)
    assert grid_z.shape == (2, 16, 16, 4)
    np.testing.assert_array_equal(model.to_sequence(grid_z), mu)
    np.testing.assert_array_equal(grid_z[:, 0, 1], mu[:, 1])  # row-major
    with pytest.raises(ValueError, match="code grid"):
        model.to_grid(mu[:, :10])


@pytest.mark.parametrize("patch", [(1, 2), (2, 2), (2, 1)])
def test_cnn_vae_pixel_shuffle_matches_a_loop(patch):
    """Codes hold a ph x pw patch of latents, channel-major (published
    "b (h ph) (w pw) c -> b (h w) (c ph pw)"), checked against explicit loops."""
    ph, pw = patch
    model = tiny_cnn_vae(channel_multipliers=(1, 2), pixel_shuffle_patch_size=patch)
    h = w = 16
    grid = np.random.default_rng(0).normal(size=(2, h, w, 4)).astype(np.float32)
    want = np.zeros((2, (h // ph) * (w // pw), 4 * ph * pw), np.float32)
    for i in range(h // ph):
        for j in range(w // pw):
            for c in range(4):
                for a in range(ph):
                    for b in range(pw):
                        want[:, i * (w // pw) + j, (c * ph + a) * pw + b] = \
                            grid[:, i * ph + a, j * pw + b, c]
    seq = model.to_sequence(jnp.asarray(grid))
    np.testing.assert_array_equal(seq, want)
    np.testing.assert_array_equal(model.to_grid(seq), grid)
    assert model.code_len == h * w // (ph * pw) and model.code_dim == 4 * ph * pw
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    mu, _ = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), params, images)
    assert mu.shape == (2, model.code_len, model.code_dim)
    out = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), params, mu)
    assert out.shape == (2, 32, 32, 3)


def test_cnn_vae_logvar_clip_and_io_convention(cnn):
    model, params, _ = cnn
    images = jnp.zeros((1, 32, 32, 3))
    head = params["cnn_encoder"]["Conv_1"]
    encode = jax.jit(lambda m, p: m.apply({"params": p}, images, method=m.encode)[1],
                     static_argnums=0)

    def with_logvar_bias(value):
        bias = jnp.concatenate([jnp.zeros(4), jnp.full(4, value)])
        enc = {**params["cnn_encoder"], "Conv_1": {"kernel": jnp.zeros_like(head["kernel"]),
                                                   "bias": bias}}
        return {**params, "cnn_encoder": enc}

    for value, expected in ((100.0, 20.0), (-100.0, -30.0), (3.0, 3.0)):
        np.testing.assert_allclose(encode(model, with_logvar_bias(value)), expected)

    # Decoder outputs live in [0, 1] inside the network: 0.75 -> 0.5, 5 -> clipped to 1.
    last_name = f"Conv_{len(model.channel_multipliers)}"  # the decoder's output conv
    last = params["cnn_decoder"][last_name]
    decode = jax.jit(lambda p: model.apply({"params": p}, jnp.zeros((1, 256, 4)),
                                           method=model.decode))
    for value, expected in ((0.75, 0.5), (5.0, 1.0), (-5.0, -1.0)):
        dec = {**params["cnn_decoder"], last_name: {"kernel": jnp.zeros_like(last["kernel"]),
                                                    "bias": jnp.full(3, value)}}
        np.testing.assert_allclose(decode({**params, "cnn_decoder": dec}), expected, rtol=1e-6)


# ------------------------------------------------------------------ training
def test_tiny_vit_vae_training_lowers_loss(vit):
    model, params, labels, _ = vit
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    def loss_fn(p, rng):
        logits, aux = model.apply({"params": p}, labels, train=True, rngs={"dropout": rng})
        return vae_losses.label_vae_loss(logits, labels, aux["mu"], aux["logvar"],
                                         label_channels=TINY_CHANNELS, beta=1e-3,
                                         ignore_zero={"inst"})

    @jax.jit
    def step(p, o, rng):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, rng)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    params, opt, loss = step(params, opt, jax.random.PRNGKey(0))
    first = float(loss)  # the loss before the first update
    np.testing.assert_allclose(first, np.log(5) + np.log(3), rtol=0.05)  # zero-init head
    for i in range(1, 60):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
    assert float(loss) < 0.7 * first, (first, float(loss))
