"""Discrete-token generation: the VQ tokenizer over images (VQGAN, ViT-VQGAN's factorised
codes), the GIVT over ids (causal and MaskGIT) with guidance on the logits, checked against
NumPy computations written from the definitions, and a tiny ``tokens=vq`` run of both
styles on the embedded digits."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.imagenet import get_config
from tasks import imagenet as I  # noqa: E741
from uvim_givt.config import load_config
from uvim_givt.errors import ConfigError
from uvim_givt.models.categorical import CategoricalHead, guided_logits, smoothed_xent
from uvim_givt.models.givt import GIVT
from uvim_givt.models.vqgan import CNNVQ, VectorQuantizer, entropy_loss
from uvim_givt.sampling import sample_autoregressive, sample_maskgit
from uvim_givt.sampling.cfg import sample_cfg
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training import stages
from uvim_givt.training.objectives import givt_nll_loss
from uvim_givt.training.runner import load_run


def _np_l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


# --------------------------------------------------------------------------- the quantiser
@pytest.mark.parametrize("factorized", [0, 3])
def test_quantizer_is_the_nearest_codeword(factorized):
    vq = VectorQuantizer(dict_size=12, codeword_dim=6, factorized_dim=factorized)
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 6))
    params = vq.init(jax.random.PRNGKey(1), z)["params"]
    out, aux = vq.apply({"params": params}, z)
    p = jax.tree_util.tree_map(np.asarray, params)
    x = np.asarray(z, np.float64)
    e = np.asarray(p["codebook"], np.float64)
    if factorized:  # ViT-VQGAN: project, l2-normalise both sides, look up there
        x = _np_l2(x @ p["factor_in"]["kernel"] + p["factor_in"]["bias"])
        e = _np_l2(e)
    brute = np.argmin(((x[:, :, None] - e[None, None]) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(aux["ids"]), brute)
    expected = e[brute]
    if factorized:
        expected = expected @ p["factor_out"]["kernel"] + p["factor_out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    # ids decode to what the forward pass fed the decoder
    np.testing.assert_allclose(np.asarray(vq.apply({"params": params}, aux["ids"],
                                                   method=vq.embed)), expected, atol=1e-5)


def test_straight_through_gradient_reaches_the_encoder_not_the_codebook():
    vq = VectorQuantizer(dict_size=8, codeword_dim=4)
    z = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = vq.init(jax.random.PRNGKey(1), z)["params"]
    c = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
    g_z, g_p = jax.grad(lambda z, p: jnp.sum(vq.apply({"params": p}, z)[0] * c),
                        argnums=(0, 1))(z, params)
    np.testing.assert_allclose(np.asarray(g_z), np.asarray(c), atol=1e-6)  # identity
    assert float(jnp.abs(g_p["codebook"]).max()) == 0.0  # only the codebook loss moves it


def test_codebook_and_commitment_gradients_match_their_definitions():
    """With the image losses and the entropy loss off, the codebook's gradient is the
    codebook loss's alone: d/de_k mean((x - e_ids)^2) = 2/(N D) sum_{i: ids_i = k}
    (e_k - x_i)."""
    cfg = load_config("configs/imagenet.py:tokens=vq", [
        "vae.w_entropy=0.0", "vae.model.filters=8", "vae.model.num_groups=4",
        "vae.model.dict_size=16", "vae.model.input_size=(8, 8)",
        "vae.model.channel_multipliers=(1, 2)"])
    kind = stages.stage_of(cfg, "vae")
    params = jax.jit(kind.init)(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 3), minval=-1, maxval=1)
    grads = jax.jit(jax.grad(
        lambda p: kind.loss(p, {"image": x}, jax.random.PRNGKey(2), True)[0]))(params)
    model = kind.train_model
    _, aux = model.apply({"params": params["vae"]}, x)
    xs = np.asarray(aux["x"], np.float64).reshape(-1, 16)
    ids = np.asarray(aux["ids"]).reshape(-1)
    e = np.asarray(params["vae"]["quantizer"]["codebook"], np.float64)
    expected = np.zeros_like(e)
    np.add.at(expected, ids, e[ids] - xs)
    expected *= 2.0 / xs.size
    np.testing.assert_allclose(np.asarray(grads["vae"]["quantizer"]["codebook"]), expected,
                               rtol=1e-4, atol=1e-8)
    _, parts = kind.loss(params, {"image": x}, jax.random.PRNGKey(2), True)
    sq = np.mean((xs - e[ids]) ** 2)
    np.testing.assert_allclose(float(parts["codebook"]), sq, rtol=1e-5)
    np.testing.assert_allclose(float(parts["commitment"]), 0.25 * sq, rtol=1e-5)
    used = np.bincount(ids, minlength=16)
    np.testing.assert_allclose(float(parts["codebook_zeros_ratio"]), np.mean(used == 0))
    np.testing.assert_allclose(float(parts["codebook_max_ratio"]), used.max() / len(ids))


def test_entropy_loss_matches_numpy():
    d = np.random.default_rng(0).uniform(0, 2, (2, 7, 5))
    t = 0.3
    logits = -d.reshape(-1, 5) / t
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    per_code = -np.mean(np.sum(p * np.log(p), axis=-1))
    avg = p.mean(0)
    expected = per_code - (-np.sum(avg * np.log(avg)))
    np.testing.assert_allclose(float(entropy_loss(jnp.asarray(d), t)), expected, rtol=1e-5)


def test_cnn_vq_codes_round_trip():
    model = CNNVQ(filters=8, num_res_blocks=1, channel_multipliers=(1, 2), codeword_dim=4,
                  input_size=(8, 8), num_groups=4, dict_size=5)
    x = jnp.zeros((2, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert set(params) == {"cnn_encoder", "quantizer", "cnn_decoder"}
    ids = model.apply({"params": params}, x, method=model.encode)
    assert ids.shape == (2, model.code_len) == (2, 16) and ids.dtype == jnp.int32
    recon, aux = model.apply({"params": params}, x)
    np.testing.assert_array_equal(np.asarray(aux["ids"]), np.asarray(ids))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids,
                                                      method=model.decode)),
                               np.asarray(recon), atol=1e-5)


# ------------------------------------------------------------------ the model over ids
def _discrete(style="ar", seq_len=6, vocab=7, **kw):
    return GIVT(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=2, seq_len=seq_len,
                num_labels=3, style=style, vocab_size=vocab, drop_labels_probability=0.1,
                mask_style="concat", **kw)


def _params(model, key=0):
    ids = jnp.zeros((1, model.seq_len), jnp.int32)
    mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
    params = model.init(jax.random.PRNGKey(key), ids, jnp.zeros((1,), jnp.int32),
                        input_mask=mask)["params"]
    # LogitsDense starts at zero: randomise it so the distributions differ by position
    dense = params["decoder"]["LogitsDense"]
    dense["kernel"] = jax.random.normal(jax.random.PRNGKey(key + 1), dense["kernel"].shape)
    return params


def test_discrete_loss_is_the_cross_entropy_of_the_ids():
    model = _discrete()
    params = _params(model)
    ids = jax.random.randint(jax.random.PRNGKey(3), (4, 6), 0, 7)
    labels = jnp.asarray([0, 1, 2, 1])
    loss, parts = givt_nll_loss(model, params, ids, jax.random.PRNGKey(0), labels=labels,
                                train=False)
    logits = np.asarray(model.apply({"params": params}, ids, labels), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp, np.asarray(ids)[..., None], -1))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(parts["nll_per_dim"]) == float(parts["nll"])  # one id per token


def test_smoothed_xent_is_the_cross_entropy_of_optax_smoothed_labels():
    """MaskGIT's label smoothing: optax.smooth_labels' targets; the padding id (the VTT's
    0) is never a target and gets none of the smoothed mass, masked (the head's -inf) or not
    (the VTT's training log-softmax)."""
    logits = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 1, 8)
    logp = jax.nn.log_softmax(logits)
    optax_xent = optax.softmax_cross_entropy(logits, optax.smooth_labels(
        jax.nn.one_hot(ids, 8), 0.1))
    np.testing.assert_allclose(smoothed_xent(logp, ids, 0.1), optax_xent, rtol=1e-6)
    np.testing.assert_allclose(smoothed_xent(logp, ids, 0.0),
                               -np.take_along_axis(np.asarray(logp), np.asarray(ids)[..., None],
                                                   -1)[..., 0], rtol=1e-6)
    # the head masks the padding id: optax's smoothing over the other 7 ids
    masked = CategoricalHead(8, pad_id=0).smoothed_xent(logits, ids, 0.1)
    np.testing.assert_allclose(masked, optax.softmax_cross_entropy(
        logits[..., 1:], optax.smooth_labels(jax.nn.one_hot(ids - 1, 7), 0.1)), rtol=1e-6)
    # a finite padding log-probability (the VTT's loss): targets 0.9 + 0.1 / 7 and 0.1 / 7
    target = 0.9 * np.eye(8)[np.asarray(ids)] + 0.1 / 7 * (np.arange(8) != 0)
    np.testing.assert_allclose(smoothed_xent(logp, ids, 0.1, pad_id=0),
                               -np.sum(target * np.asarray(logp, np.float64), -1), rtol=1e-6)


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_label_smoothing_changes_the_loss_not_the_reported_nll(style):
    """With label_smoothing the loss is the smoothed cross-entropy over the same tokens
    (all of them, or the same random mask), the reported NLL the plain one; a GIVT over
    real vectors refuses it."""
    model = _discrete(style)
    params = _params(model)
    ids = jax.random.randint(jax.random.PRNGKey(3), (4, 6), 0, 7)
    labels = jnp.asarray([0, 1, 2, 1])
    key = jax.random.PRNGKey(5)
    plain, plain_parts = givt_nll_loss(model, params, ids, key, labels=labels, train=True)
    loss, parts = givt_nll_loss(model, params, ids, key, labels=labels, train=True,
                                label_smoothing=0.1)
    np.testing.assert_allclose(float(parts["nll"]), float(plain), rtol=1e-6)
    assert float(loss) == float(parts["xent_smoothed"]) and abs(float(loss - plain)) > 1e-3
    # affine in the smoothing only if both terms cover the same tokens (the same mask)
    double, _ = givt_nll_loss(model, params, ids, key, labels=labels, train=True,
                              label_smoothing=0.2)
    np.testing.assert_allclose(float(loss - plain), float(double - loss), rtol=1e-4)
    if style == "ar":  # every token, brute force in NumPy
        logits = np.asarray(model.apply({"params": params}, ids, labels), np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        target = 0.9 * np.eye(7)[np.asarray(ids)] + 0.1 / 7
        np.testing.assert_allclose(float(givt_nll_loss(
            model, params, ids, key, labels=labels, train=False, label_smoothing=0.1)[0]),
            -np.mean(np.sum(target * logp, -1)), rtol=1e-5)
    else:  # one ratio over the masked tokens: the same weight as the NLL's
        assert float(parts["weight/xent_smoothed"]) == float(plain_parts["weight/nll"]) > 0
    with pytest.raises(ValueError, match="label_smoothing=0.1: only a softmax over code ids"):
        givt_nll_loss(_discrete(style, vocab=0, out_dim=4), {}, jnp.zeros((4, 6, 4)), key,
                      labels=labels, label_smoothing=0.1)


def test_cached_greedy_decoding_equals_recomputed_argmax():
    """Ancestral sampling at temperature 0 with the KV cache picks, at every position, the
    argmax of a full teacher-forced pass over the ids chosen so far (brute force)."""
    model = _discrete()
    params = _params(model)
    labels = jnp.asarray([2, 0])
    tokens, _ = sample_autoregressive(model, params, jax.random.PRNGKey(0), labels=labels,
                                      temperature=0.0)
    ids = np.zeros((2, 6), np.int32)
    for i in range(6):
        logits = model.apply({"params": params}, jnp.asarray(ids), labels)
        ids[:, i] = np.argmax(np.asarray(logits)[:, i], axis=-1)
    np.testing.assert_array_equal(np.asarray(tokens), ids)


def test_guidance_on_logits():
    head = CategoricalHead(5, pad_id=None)
    lc = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    lu = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    w = 1.5
    tok, logp, accepted = sample_cfg(jax.random.PRNGKey(2), head, lc, lu, w, temperature=0.7)
    g = ((1 + w) * np.asarray(lc, np.float64) - w * np.asarray(lu, np.float64)) / 0.7
    g_logp = g - np.log(np.exp(g).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(logp),
                               np.take_along_axis(g_logp, np.asarray(tok)[:, None], 1)[:, 0],
                               rtol=1e-5, atol=1e-6)
    assert float(accepted) == 1.0
    np.testing.assert_allclose(np.asarray(guided_logits(lc, lu, 0.0)), np.asarray(lc))
    # the draws follow the guided softmax (many draws of one row)
    keys = jax.random.split(jax.random.PRNGKey(3), 20000)
    draws = jax.vmap(lambda k: sample_cfg(k, head, lc[0], lu[0], w)[0])(keys)
    freq = np.bincount(np.asarray(draws), minlength=5) / len(keys)
    g1 = (1 + w) * np.asarray(lc[0], np.float64) - w * np.asarray(lu[0], np.float64)
    np.testing.assert_allclose(freq, np.exp(g1) / np.exp(g1).sum(), atol=0.015)


def test_discrete_maskgit_keeps_given_ids_and_fills_the_rest():
    model = _discrete("masked", seq_len=8)
    params = _params(model)
    labels = jnp.asarray([0, 2])
    gt = jnp.tile(jnp.arange(8, dtype=jnp.int32) % 7, (2, 1))
    keep = jnp.arange(8) < 3
    for w in (None, 2.0):
        out, trace = sample_maskgit(model, params, jax.random.PRNGKey(0), labels=labels,
                                    num_steps=4, choice_temperature=1.0, cfg_weight=w,
                                    keep_gt=keep, gt=gt, return_trace=True)
        assert out.shape == (2, 8) and out.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(out)[:, :3], np.asarray(gt)[:, :3])
        assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < 7))
        assert bool(trace["uncovered"][-1].all())
        np.testing.assert_array_equal(np.asarray(trace["inputs"][-1]), np.asarray(out))


# ---------------------------------------------------------------------- configs
def test_vq_presets_are_the_published_tokenizers():
    """The paper VQ values (MaskGIT's tokenizer; ViT-VQGAN's factorised lookup), and the
    transformer over ids is the GIVT of the same preset with a softmax."""
    table = {"vqgan": dict(dict_size=1024, codeword_dim=256, factorized_dim=0),
             "vit_vqgan": dict(dict_size=8192, codeword_dim=256, factorized_dim=32)}
    givt = get_config("size=paper")
    for quantizer, values in table.items():
        c = get_config(f"size=paper,tokens=vq,quantizer={quantizer}")
        assert c.vae.kind == "vqgan" and c.givt.kind == "discrete"
        assert {k: c.vae.model[k] for k in values} == values
        assert (c.vae.w_commitment, c.vae.w_entropy, c.vae.entropy_temperature) == \
            (0.25, 0.1, 0.01)
        assert "beta" not in c.vae
        assert c.givt.model.vocab_size == values["dict_size"]
        for key in ("emb_dim", "num_heads", "mlp_dim", "num_decoder_layers", "seq_len",
                    "dec_dropout_rate", "drop_labels_probability"):
            assert c.givt.model[key] == givt.givt.model[key], key
        assert c.givt.train.to_dict() == givt.givt.train.to_dict()
        assert c.vae.train.to_dict() == givt.vae.train.to_dict()
    masked = get_config("size=paper,tokens=vq,style=masked")
    s = masked.givt.sampling
    assert (s.num_steps, s.choice_temperature, s.cfg_weight, s.temperature) == (8, 4.5, 0, 1)
    # MaskGIT trains with label smoothing 0.1; VQGAN's transformer and every GIVT with none
    assert masked.givt.label_smoothing == 0.1
    for args in ("size=paper,tokens=vq", "size=paper", "tokens=vq,style=masked"):
        assert get_config(args).givt.label_smoothing == 0.0, args


@pytest.mark.parametrize("override, key", [
    ("vae.model.dict_size=1", "vae.model.dict_size"),
    ("vae.model.factorized_dim=99", "vae.model.factorized_dim"),
    ("givt.model.vocab_size=64", "givt.model.vocab_size"),
    ("givt.model.seq_len=32", "givt.model.seq_len"),
    ("vae.entropy_temperature=0", "vae.entropy_temperature"),
    ("givt.input_noise=0.1", "givt.input_noise"),
])
def test_impossible_vq_settings_are_refused_by_key(override, key, tmp_path, capsys):
    """Refused by the train command before its run directory exists, in one line naming
    the key."""
    run = str(tmp_path / "run")
    code = I.main(["train", "--workdir", run, "--config", "configs/imagenet.py:tokens=vq",
                   "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not os.path.exists(run)
    assert len(err) == 1 and key in err[0], err


def test_discrete_stage_needs_a_tokenizer():
    cfg = load_config("configs/imagenet.py", ["givt.kind=discrete"])
    with pytest.raises(ConfigError, match="vae.kind='cnn' makes real-valued codes"):
        stages.stage_of(cfg, "givt")
    cfg = load_config("configs/imagenet.py", ["givt.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="givt.label_smoothing=0.1: a Gaussian mixture"):
        stages.stage_of(cfg, "givt")


# ------------------------------------------------------------------ a tiny run of each
def _sets(**extra):
    sets = {
        "vae.train.total_steps": 3, "vae.train.batch_size": 8, "vae.model.filters": 8,
        "vae.model.num_groups": 4, "vae.ema_decay": 0.9,
        "givt.train.total_steps": 3, "givt.train.batch_size": 8,
        "givt.model.emb_dim": 32, "givt.model.mlp_dim": 64, "givt.model.num_heads": 2,
        "givt.model.num_decoder_layers": 1, "data.shuffle_buffer": 16,
        "evals.sampled.samples_per_class": 2, "evals.sampled.max_classes": 3,
        "evals.oracle.num_examples": 24, "evals.sampled.num_examples": 24,
        "evals.oracle.batch_size": 8, "evals.sampled.batch_size": 8,
        "evals.vae_loss.num_examples": 24, "evals.givt_loss.num_examples": 24,
        "evals.sampled.grid_per_class": 2,
        **extra,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A causal tokens=vq run, and a MaskGIT one on its tokenizer (--vae-ckpt)."""
    root = tmp_path_factory.mktemp("vq_generation")
    ar, masked = str(root / "ar"), str(root / "masked")
    assert I.main(["train", "--workdir", ar, "--config", "configs/imagenet.py:tokens=vq",
                   *_sets()]) == 0
    assert I.main(["train", "--workdir", masked, "--stage", "givt", "--vae-ckpt", ar,
                   "--config", "configs/imagenet.py:tokens=vq,style=masked",
                   *_sets(**{"givt.sampling.num_steps": 4})]) == 0
    return {"ar": ar, "masked": masked}


def _records(run):
    d = os.path.join(run, "eval")
    recs = [json.load(open(os.path.join(d, f))) for f in os.listdir(d)]
    return {(r["stage"], r["kind"]): r["metrics"] for r in recs}


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_vq_run_trains_evaluates_and_reloads(runs, style):
    rec = _records(runs[style])
    m = rec[("givt", "generation")]
    for key in ("FID", "FID_no_cfg", "class_accuracy", "FID_random_latents"):
        assert np.isfinite(m[key]), key
    assert np.isfinite(rec[("givt", "loss")]["nll_per_token"])
    if style == "ar":  # the tokenizer's own records (the masked run reuses it)
        vae = rec[("vae", "loss")]
        assert vae["rec"] > 0 and vae["codebook"] > 0 and 0 < vae["codebook_perplexity"]
        assert np.isfinite(rec[("vae", "generation")]["FID_recon"])
    run = load_run(runs[style])
    gen = Predictor(run.cfg, run.vae_params, run.givt_params, batch_size=8)
    ids = gen.sample_latents([1, 2, 2], seed=0)
    assert ids.shape == (3, 64) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 128
    images = gen.decode_images(ids)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    # completion: the first 16 ids of the images' own codes kept, the rest drawn
    codes = np.asarray(gen.encode(gen.reconstruct(np.zeros((3, 32, 32, 3), np.float32))))
    keep = np.arange(64) < 16
    done = np.asarray(gen.sample_codes(1, labels=np.asarray([1, 2, 2]), given=codes,
                                       keep=keep))
    np.testing.assert_array_equal(done[:, :16], codes[:, :16])
