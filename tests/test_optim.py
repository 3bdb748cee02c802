"""Optimiser construction: schedules, weight-decay mask, multipliers, adafactor, and
big_vision's optimiser semantics against a numpy reference."""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import optax
import pytest

from uvim_givt import schema
from uvim_givt.training.optim import learning_rate_schedule, make_optimizer, multipliers
from uvim_givt.training.trainer import default_train_config

PARAMS = {"enc": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}},
          "EmbedLabels": {"embedding": jnp.ones((5, 4))},
          "LayerNorm": {"scale": jnp.ones((4,))}}


def _cfg(**kw):
    base = default_train_config().optim.to_dict()  # every key a config has
    base.update(dict(optimizer="adam", lr=0.1, schedule="cosine", warmup_steps=10,
                     warmup_fraction=0.0, b1=0.9,
                     b2=0.95, eps=1e-8, wd=0.0, grad_clip=0.0, lr_mults=[]), **kw)
    return ml_collections.ConfigDict(base)


def test_cosine_schedule_matches_formula():
    sched = learning_rate_schedule(_cfg(), total_steps=110)
    assert float(sched(0)) == 0.0 and math.isclose(float(sched(5)), 0.05, rel_tol=1e-6)
    for step in (10, 40, 77, 110):
        expect = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert math.isclose(float(sched(step)), expect, rel_tol=1e-5, abs_tol=1e-8)


def test_weight_decay_only_on_matching_params():
    tx, _ = make_optimizer(_cfg(wd=0.5, warmup_steps=0, schedule="constant"), PARAMS, 10)
    zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    # zero gradients: adam contributes nothing, only decoupled decay (lr * wd * p) moves
    np.testing.assert_allclose(updates["enc"]["Dense_0"]["kernel"], -0.05)
    np.testing.assert_allclose(updates["EmbedLabels"]["embedding"], -0.05)
    np.testing.assert_allclose(updates["enc"]["Dense_0"]["bias"], 0.0)
    np.testing.assert_allclose(updates["LayerNorm"]["scale"], 0.0)


def test_multipliers_first_match_wins():
    m = multipliers(PARAMS, [("^enc/.*kernel$", 0.1), ("^enc/", 0.5)])
    assert m["enc"]["Dense_0"]["kernel"] == 0.1 and m["enc"]["Dense_0"]["bias"] == 0.5
    assert m["LayerNorm"]["scale"] == 1.0


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_optimizers_reduce_a_quadratic(name):
    cfg = _cfg(optimizer=name, lr=0.05, warmup_steps=0, schedule="constant", grad_clip=1.0,
               b1=0.9 if name == "adam" else 0.0, b2=0.95 if name == "adam" else 0.8)
    params = {"w": {"kernel": jnp.full((4, 4), 3.0)}}
    tx, _ = make_optimizer(cfg, params, 100)
    state = tx.init(params)
    loss = lambda p: jnp.sum(jnp.square(p["w"]["kernel"]))
    start = float(loss(params))
    for _ in range(50):
        g = jax.grad(loss)(params)
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    assert float(loss(params)) < 0.2 * start


def test_unknown_optimizer_and_schedule():
    with pytest.raises(ValueError, match="unknown optimizer 'sgdx'"):
        make_optimizer(_cfg(optimizer="sgdx"), PARAMS, 10)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate_schedule(_cfg(schedule="step"), 10)


# ------------------------------------------------ big_vision semantics vs a numpy reference
# The reference below is written from big_vision's definitions (big_vision/optax.py `make`
# and `scale_by_adafactor`, utils.create_learning_rate_schedule), not from optax: per step
# t, update = -s(t) * (lr * lr_mult * u + wd * p) on kernels, u the optimiser's direction
# after the global-norm clip, s(t) the schedule's 0..1 shape.

BV_PARAMS_SHAPES = {
    "encoder": {"qkv": {"kernel": (4, 32, 40)},       # 3-D, factored over (32, 40)
                "LayerNorm": {"scale": (40,)}},
    "decoder": {"Dense_0": {"kernel": (48, 32),       # factored, largest axis first
                            "bias": (32,)},
                "head": {"kernel": (8, 40)}},         # 8 < 32: second moment kept in full
    "pos_embedding": (6, 40),                         # not a kernel: no weight decay
}


def _bv_params(frozen: bool):
    shapes = dict(BV_PARAMS_SHAPES, **({"frozen": {"kernel": (3, 5)}} if frozen else {}))
    flat = {}

    def fill(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                fill(v, prefix + (k,))
            else:
                flat[prefix + (k,)] = v

    fill(shapes, ())
    rng = np.random.default_rng(0)
    params = {}
    for path, shape in flat.items():
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jnp.asarray(rng.normal(size=shape) + 1.0, jnp.float32)
    return params


def _flat(tree) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(k.key for k in path)] = np.asarray(leaf, np.float64)
    return out


def _bv_shape(t: int, warmup: int, total: int) -> float:
    """big_vision's cosine schedule with base=1: cosine over the steps after the warm-up,
    times a linear warm-up factor."""
    progress = min(max((t - warmup) / (total - warmup), 0.0), 1.0)
    s = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s * min(1.0, t / warmup) if warmup else s


class _NpBigVisionAdafactor:
    """big_vision's scale_by_adafactor for one parameter."""

    def __init__(self, shape, *, decay_rate, beta2_cap, min_dim_size_to_factor, eps,
                 clipping_threshold, momentum, momentum_dtype):
        self.decay_rate, self.cap, self.eps = decay_rate, beta2_cap, eps
        self.clip, self.mom, self.mom_dtype = clipping_threshold, momentum, momentum_dtype
        self.axes = None
        if len(shape) >= 2:
            order = np.argsort(shape, kind="stable")
            if shape[order[-2]] >= min_dim_size_to_factor:
                self.axes = (int(order[-2]), int(order[-1]))  # the two largest
        if self.axes:
            moved = np.moveaxis(np.zeros(shape), self.axes, (-2, -1))
            self.row, self.col = np.zeros(moved.shape[:-1]), np.zeros(moved.shape[:-2]
                                                                      + moved.shape[-1:])
        else:
            self.v = np.zeros(shape)
        self.m = np.zeros(shape).astype(momentum_dtype)

    def __call__(self, g: np.ndarray, t: int) -> np.ndarray:
        beta = min(self.cap, 1.0 - (t + 1.0) ** -self.decay_rate)
        g2 = g * g + self.eps
        if self.axes:
            # Adafactor: EMAs of the row and column means of g^2 over the two largest axes;
            # V = R C^T / mean(R) (other axes are batch axes).
            gg = np.moveaxis(g2, self.axes, (-2, -1))
            self.row = beta * self.row + (1 - beta) * gg.mean(-1)
            self.col = beta * self.col + (1 - beta) * gg.mean(-2)
            v = self.row[..., :, None] * self.col[..., None, :] / \
                self.row.mean(-1)[..., None, None]
            v = np.moveaxis(v, (-2, -1), self.axes)
        else:
            self.v = beta * self.v + (1 - beta) * g2
            v = self.v
        u = g / np.sqrt(v)
        if self.clip:
            u = u / max(1.0, np.sqrt(np.mean(u * u)) / self.clip)
        if self.mom:
            if self.mom_dtype == ml_dtypes.bfloat16:
                # jax multiplies the bfloat16 accumulator by the (weakly typed) momentum in
                # bfloat16, so this product is rounded (and momentum is bf16(0.9)) too
                decayed = (self.m * ml_dtypes.bfloat16(self.mom)).astype(np.float64)
            else:
                decayed = self.mom * self.m.astype(np.float64)
            u = (1 - self.mom) * u + decayed
            self.m = u.astype(self.mom_dtype)
        return u


class _NpAdam:
    """optax.scale_by_adam (big_vision's stage-1 ``optax_name='scale_by_adam'``)."""

    def __init__(self, shape, *, b1, b2, eps):
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m, self.v = np.zeros(shape), np.zeros(shape)

    def __call__(self, g: np.ndarray, t: int) -> np.ndarray:
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mhat, vhat = self.m / (1 - self.b1 ** (t + 1)), self.v / (1 - self.b2 ** (t + 1))
        return mhat / (np.sqrt(vhat) + self.eps)


def _np_big_vision_updates(params, grads, make_dir, *, lr, wd, lr_mults, grad_clip, warmup,
                           total):
    """Per-step updates of big_vision's optax.make chain: global-norm clip, optimiser,
    x lr, x lr_mults, + wd * p on '.*/kernel$', x schedule shape, x -1; mult 0 = frozen."""
    p = _flat(params)
    mult = {n: next((m for rx, m in lr_mults if re.search(rx, n)), 1.0) for n in p}
    opt = {n: make_dir(p[n].shape) for n in p if mult[n]}
    out = []
    for t, g_tree in enumerate(grads):
        g = {n: x for n, x in _flat(g_tree).items() if mult[n]}
        norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
        if grad_clip and norm > grad_clip:
            g = {n: x * (grad_clip / norm) for n, x in g.items()}
        s = _bv_shape(t, warmup, total)
        step = {}
        for n in p:
            if not mult[n]:
                step[n] = np.zeros_like(p[n])
                continue
            u = lr * mult[n] * opt[n](g[n], t)
            if re.fullmatch(r".*/kernel", n):
                u = u + wd * p[n]
            step[n] = -s * u
            p[n] = p[n] + step[n]
        out.append(step)
    return out


def _run_ours(cfg, params, grads, total):
    tx, _ = make_optimizer(cfg, params, total)
    state = tx.init(params)
    out = []
    for g in grads:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(_flat(u))
    return out, state


def _grads(params, n_steps):
    # alternating scales: the global norm (~84 x scale here) is above 1 on odd steps only
    rng = np.random.default_rng(1)
    scales = [0.004, 0.05, 0.002, 0.03, 0.008, 0.1, 0.001, 0.02][:n_steps]
    return [jax.tree_util.tree_map(
        lambda x, s=s: jnp.asarray(rng.normal(size=x.shape) * s, jnp.float32), params)
        for s in scales]


BV_CASES = {
    # cap 0.5 binds from the 3rd step on; per-parameter rms clip and a frozen parameter
    "adafactor_cap_clip_frozen": dict(
        optimizer="big_vision_adafactor", grad_clip=1.0, frozen=True,
        bva=dict(beta2_cap=0.5, clipping_threshold=0.8, momentum_dtype="float32")),
    # the published stage 2: beta2_cap=0.95, bfloat16 momentum, no gradient clip
    "adafactor_published": dict(optimizer="big_vision_adafactor", grad_clip=0.0, frozen=False,
                                bva=dict(beta2_cap=0.95)),
    # the published stage 1: scale_by_adam(b2=0.95), grad_clip_norm=1
    "adam_published": dict(optimizer="adam", grad_clip=1.0, frozen=True, bva={}),
}


@pytest.mark.parametrize("case", list(BV_CASES))
def test_big_vision_semantics_step_for_step(case):
    spec = BV_CASES[case]
    total, warmup, lr, wd = 10, 3, 0.01, 0.05
    lr_mults = [("^encoder/", 0.1)] + ([("^frozen/", 0.0)] if spec["frozen"] else [])
    cfg = _cfg(optimizer=spec["optimizer"], lr=lr, wd=wd, wd_mode="schedule_scaled",
               wd_pattern="/kernel$", schedule="cosine", warmup_steps=warmup,
               grad_clip=spec["grad_clip"], lr_mults=lr_mults)
    cfg.big_vision_adafactor.update(spec["bva"])
    params = _bv_params(spec["frozen"])
    grads = _grads(params, 8)
    ours, state = _run_ours(cfg, params, grads, total)

    if spec["optimizer"] == "adam":
        def make_dir(shape):
            return _NpAdam(shape, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps))
    else:
        bva = cfg.big_vision_adafactor
        assert int(bva.decay_offset) == 0 and float(bva.momentum) > 0

        def make_dir(shape):
            return _NpBigVisionAdafactor(
                shape, decay_rate=float(bva.decay_rate), beta2_cap=float(bva.beta2_cap),
                min_dim_size_to_factor=int(bva.min_dim_size_to_factor), eps=float(bva.eps),
                clipping_threshold=float(bva.clipping_threshold), momentum=float(bva.momentum),
                momentum_dtype=np.dtype(jnp.dtype(bva.momentum_dtype)))
    ref = _np_big_vision_updates(params, grads, make_dir, lr=lr, wd=wd, lr_mults=lr_mults,
                                 grad_clip=spec["grad_clip"], warmup=warmup, total=total)

    bf16 = spec["optimizer"] == "big_vision_adafactor" and \
        cfg.big_vision_adafactor.momentum_dtype == "bfloat16"
    # The reference models the bfloat16 roundings too (here it agrees to ~3e-7), but one
    # rounding that lands on the other side after a float32 ulp of difference (another
    # backend's summation order) would shift an update by up to 2^-8: allow that, not more.
    rtol = 5e-3 if bf16 else 2e-5
    assert len(ours) == len(ref) == 8
    for t, (o, r) in enumerate(zip(ours, ref, strict=True)):
        assert set(o) == set(r)
        for n in r:
            scale = float(np.max(np.abs(r[n]))) or 1.0
            np.testing.assert_allclose(o[n], r[n], rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{case} step {t} {n}")
        if t == 0:  # s(0) = 0: the first step moves nothing (big_vision's warm-up)
            assert all(float(np.max(np.abs(x))) == 0.0 for x in o.values())
    if spec["frozen"]:
        assert all(float(np.max(np.abs(o["frozen/kernel"]))) == 0.0 for o in ours)
    if bf16:
        assert any(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(state))


def test_beta2_cap_changes_updates_once_it_binds():
    # the cap case above is only informative if the cap binds within its steps:
    # 1 - t^-0.8 passes 0.5 at the 3rd step, so the 2nd updates agree and later ones not
    params = _bv_params(False)
    grads = _grads(params, 6)
    runs = []
    for cap in (0.5, 0.999):
        cfg = _cfg(optimizer="big_vision_adafactor", lr=0.01, wd=0.0, schedule="constant",
                   warmup_steps=0, grad_clip=0.0)
        cfg.big_vision_adafactor.update(dict(beta2_cap=cap, momentum_dtype="float32"))
        runs.append(_run_ours(cfg, params, grads, 10)[0])
    w0, w1 = runs[0][-1]["decoder/head/kernel"], runs[1][-1]["decoder/head/kernel"]
    assert np.max(np.abs(w0 - w1)) > 1e-3 * np.max(np.abs(w1))
    np.testing.assert_array_equal(runs[0][1]["decoder/head/kernel"],
                                  runs[1][1]["decoder/head/kernel"])  # cap not yet binding


@pytest.mark.parametrize("lr", [0.0, 1e-3, 10.0])
def test_schedule_scaled_decay_is_independent_of_lr_and_only_on_kernels(lr):
    total, warmup, wd = 20, 4, 0.5
    cfg = _cfg(lr=lr, wd=wd, wd_mode="schedule_scaled", wd_pattern="/kernel$",
               schedule="cosine", warmup_steps=warmup, grad_clip=0.0,
               lr_mults=[("^enc/", 0.1), ("^frozen/", 0.0)])
    params = dict(PARAMS, frozen={"kernel": jnp.ones((2, 2))})
    tx, _ = make_optimizer(cfg, params, total)
    state = tx.init(params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(8):
        # zero gradients: adam contributes nothing, only the decay moves parameters
        u, state = tx.update(zero, state, params)
        s = _bv_shape(t, warmup, total)
        # wd * s(t) * p whatever the peak lr (even 0) and the lr_mult (0.1) of enc/
        np.testing.assert_allclose(u["enc"]["Dense_0"]["kernel"], -wd * s, rtol=1e-6,
                                   atol=1e-9)
        for leaf in (u["enc"]["Dense_0"]["bias"], u["EmbedLabels"]["embedding"],
                     u["LayerNorm"]["scale"], u["frozen"]["kernel"]):
            np.testing.assert_array_equal(leaf, 0.0)
    if lr == 0.0:
        # the AdamW-style mode scales the decay by the learning rate: nothing moves
        tx, _ = make_optimizer(_cfg(lr=0.0, wd=wd, wd_pattern="/kernel$", warmup_steps=0,
                                    schedule="constant"), PARAMS, total)
        u, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, PARAMS), tx.init(PARAMS),
                         PARAMS)
        np.testing.assert_array_equal(u["enc"]["Dense_0"]["kernel"], 0.0)


def test_lr_scaled_decay_keeps_its_semantics():
    # default mode: the decay is multiplied by lr * s(t) * lr_mult (AdamW), as before
    cfg = _cfg(wd=0.5, warmup_steps=0, schedule="constant", lr_mults=[("^enc/", 0.1)])
    assert default_train_config().optim.wd_mode == "lr_scaled"
    tx, _ = make_optimizer(cfg, PARAMS, 10)
    zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    u, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(u["enc"]["Dense_0"]["kernel"], -0.1 * 0.5 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(u["EmbedLabels"]["embedding"], -0.1 * 0.5, rtol=1e-6)


def test_the_config_rules_accept_the_new_choices():
    import ml_collections
    cfg = ml_collections.ConfigDict({"givt": {"train": default_train_config()}})
    t = cfg.givt.train
    t.optim.optimizer, t.optim.wd_mode = "big_vision_adafactor", "schedule_scaled"
    schema.check(cfg, schema.LIBRARY_RULES, require_all=True)
    t.optim.wd_mode, t.optim.big_vision_adafactor.momentum_dtype = "decoupledx", "int8"
    with pytest.raises(schema.ConfigError) as e:
        schema.check(cfg, schema.LIBRARY_RULES)
    assert "givt.train.optim.wd_mode='decoupledx': one of ('lr_scaled', 'schedule_scaled')" \
        in str(e.value)
    assert "givt.train.optim.big_vision_adafactor.momentum_dtype='int8'" in str(e.value)
    with pytest.raises(ValueError, match="unknown wd_mode 'decoupledx'"):
        make_optimizer(_cfg(wd_mode="decoupledx"), PARAMS, 10)
