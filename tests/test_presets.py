"""The ``paper`` presets against the published configs, value for value.

The table below is written from google-research/big_vision configs/proj/givt/
(givt_coco_panoptic.py, vae_coco_panoptic.py, givt_nyu_depth.py, vae_nyu_depth.py),
translated into our keys; each row notes the published setting it stands for. Lengths are
epochs there: steps = round(epochs * examples / batch) with COCO train[4096:] = 114,191 and
NYU train = 47,584 examples.

Sharding: the published configs that set ``sharding_strategy = [('.*', 'fsdp(axis="data")')]``
(vae_coco_panoptic.py, vae_nyu_depth.py, givt_imagenet2012.py) have ``train.fsdp`` on; the
others (givt_coco_panoptic.py, givt_nyu_depth.py) replicate.

Not modelled (and why): the VAEs' shuffle buffer of 25,000 (one buffer per run here: the
GIVTs' 50,000); ``keep_ckpt_steps`` (we keep the last ``keep_ckpts``).
"""

from __future__ import annotations

import pytest

from uvim_givt import config as config_lib

VIT_VAE = {  # proj.givt.vit, both tasks
    "vae.kind": "vit",
    "vae.model.input_size": (512, 512), "vae.model.patch_size": (16, 16),
    "vae.model.code_len": 256, "vae.model.width": 768, "vae.model.depth": 6,
    "vae.model.decoder_depth": 12, "vae.model.mlp_dim": 3072, "vae.model.num_heads": 12,
    "vae.model.code_dropout": "none", "vae.ema_decay": 0.0,
}
GIVT_L16 = {  # VTT_MODELS['large'], patches 16, learned posemb, 1 mixture
    "givt.model.num_layers": 24, "givt.model.num_decoder_layers": 24,
    "givt.model.num_heads": 16, "givt.model.mlp_dim": 4096, "givt.model.emb_dim": 1024,
    "givt.model.patches": (16, 16), "givt.model.input_size": (512, 512),
    "givt.model.seq_len": 256, "givt.model.num_labels": None, "givt.model.num_mixtures": 1,
    "givt.model.fix_square_plus": True, "givt.model.scale_tol": 1e-6,
    "givt.model.dec_dropout_rate": 0.0, "givt.model.style": "ar",
    "givt.input_noise": 0.0, "data.image_size": 512, "data.flip": True,
    "data.crop_area_min": 0.05,  # inception_box(area=(0.05, 1.0))
    "data.shuffle_buffer": 50_000,
}
VAE_OPTIM = {  # scale_by_adam(b2=0.95), lr 1e-3, wd 1e-4, grad_clip_norm 1, cosine
    "vae.train.optim.optimizer": "adam", "vae.train.optim.b1": 0.9,
    "vae.train.optim.b2": 0.95, "vae.train.optim.eps": 1e-8, "vae.train.optim.lr": 1e-3,
    "vae.train.optim.wd": 1e-4, "vae.train.optim.wd_mode": "schedule_scaled",
    "vae.train.optim.wd_pattern": "/kernel$", "vae.train.optim.grad_clip": 1.0,
    "vae.train.optim.schedule": "cosine",
    "vae.train.optim.warmup_steps": 1,  # warmup_steps=0.1: only step 0 has lr 0
    "vae.train.optim.lr_mults": [], "vae.train.batch_size": 1024,
    "vae.train.log_every": 50, "vae.train.ckpt_every": 1000,
    "vae.train.fsdp": True,  # sharding_strategy fsdp(axis="data")
}
GIVT_OPTIM = {  # big_vision.scale_by_adafactor(beta2_cap=0.95), lr 1e-3, wd 1e-6, no clip
    "givt.train.optim.optimizer": "big_vision_adafactor",
    "givt.train.optim.big_vision_adafactor.beta2_cap": 0.95,
    "givt.train.optim.big_vision_adafactor.decay_rate": 0.8,
    "givt.train.optim.big_vision_adafactor.momentum": 0.9,
    "givt.train.optim.big_vision_adafactor.min_dim_size_to_factor": 32,
    "givt.train.optim.lr": 1e-3, "givt.train.optim.wd": 1e-6,
    "givt.train.optim.wd_mode": "schedule_scaled", "givt.train.optim.wd_pattern": "/kernel$",
    "givt.train.optim.grad_clip": 0.0, "givt.train.optim.schedule": "cosine",
    # lr_mults: pos_embedding_encoder, EmbedPatches, encoder x0.1; decoder x1
    "givt.train.optim.lr_mults": [("^(encoder|EmbedPatches|pos_embedding_encoder)/", 0.1)],
    "givt.train.batch_size": 512, "givt.train.log_every": 50, "givt.train.ckpt_every": 1000,
    "givt.train.fsdp": False,  # no sharding_strategy: replicated
}

PUBLISHED = {
    "panoptic": {
        **VIT_VAE, **GIVT_L16, **VAE_OPTIM, **GIVT_OPTIM,
        "data.source": "tfds:coco/2017_panoptic", "data.train_split": "train[4096:]",
        "vae.model.codeword_dim": 32, "givt.model.out_dim": 32,
        "vae.model.label_channels.semantics": (0, 134),  # 133 + void
        "vae.model.label_channels.instances": (1, 100),
        "vae.beta": 2.5e-4,
        "vae.train.total_steps": 55_757,  # 500 epochs / 1024
        "givt.train.total_steps": 44_606,  # 200 epochs / 512
        "givt.train.optim.warmup_steps": 4000,
        # ar_generation_config: temp 0.85, temp_probs 1, beam 4, fan 8
        "givt.sampling.temperature": 0.85, "givt.sampling.temperature_probs": 1.0,
        "givt.sampling.beam_size": 4, "givt.sampling.fan_size": 8,
        "givt.sampling.num_samples": 1, "givt.sampling.test_time_flip": False,
        # evals: val (mean loss) on train[:4096] every 250 (VAE) / 1000 (GIVT) steps;
        # coco_panoptic on validation every 5,000 (VAE) / 10,000 (GIVT), also on
        # train[:4096] (holdout) and train[4096:8192] (train)
        "evals.vae_loss.split": "train[:4096]", "evals.vae_loss.every": 250,
        "evals.givt_loss.split": "train[:4096]", "evals.givt_loss.every": 1000,
        "evals.oracle.split": "validation", "evals.oracle.every": 5000,
        "evals.sampled.split": "validation", "evals.sampled.every": 10_000,
        "evals.sampled_holdout.split": "train[:4096]",
        "evals.sampled_train.split": "train[4096:8192]",
        "evals.oracle_holdout.split": "train[:4096]",
        "evals.oracle_train.split": "train[4096:8192]",
        "data.min_area_fraction": 0.0,  # pred_kw min_fraction: commented out
    },
    "depth": {
        **VIT_VAE, **GIVT_L16, **VAE_OPTIM, **GIVT_OPTIM,
        "data.source": "tfds:nyu_depth_v2", "data.train_split": "train",
        "vae.model.codeword_dim": 16, "givt.model.out_dim": 16,
        "vae.model.label_channels.depth": (0, 256),  # QUANTIZATION_BINS
        "data.min_depth": 0.001, "data.max_depth": 10.0,
        "vae.ignore_zero": ("depth",),  # mask_zero_target=True
        "vae.beta": 2e-4,
        "vae.train.total_steps": 9_294,  # 200 epochs / 1024
        "givt.train.total_steps": 4_647,  # 50 epochs / 512
        "givt.train.optim.warmup_steps": 0, "givt.train.optim.warmup_fraction": 0.1,
        "givt.sampling.temperature": 0.9, "givt.sampling.temperature_probs": 1.0,
        "givt.sampling.beam_size": 2, "givt.sampling.fan_size": 8,
        "givt.sampling.num_samples": 1, "givt.sampling.test_time_flip": False,
        # evals: val (mean loss) on validation every 250; nyu_depth_val every 2,000
        "evals.vae_loss.split": "validation", "evals.vae_loss.every": 250,
        "evals.givt_loss.split": "validation", "evals.givt_loss.every": 250,
        "evals.oracle.every": 2000, "evals.sampled.every": 2000,
        # nyu_eval_crop before the prediction, argmax bin centre, nearest resize
        "data.eval_crop_before_predict": True, "data.decode": "argmax",
        "data.eval_resize": "nearest",
    },
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _norm(v):
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    return v


@pytest.mark.parametrize("task", sorted(PUBLISHED))
def test_paper_preset_equals_the_published_config(task):
    cfg = config_lib.load_config(f"configs/{task}.py:size=paper")
    wrong = {k: (_get(cfg, k), v) for k, v in PUBLISHED[task].items()
             if _norm(_get(cfg, k)) != _norm(v)}
    assert wrong == {}, "ours vs published: " + repr(wrong)


def test_step_counts_are_published_epochs_at_published_batch_sizes():
    from configs.common import COCO_TRAIN_EXAMPLES, NYU_TRAIN_EXAMPLES, epochs_to_steps
    assert COCO_TRAIN_EXAMPLES == 114_191 and NYU_TRAIN_EXAMPLES == 47_584
    assert epochs_to_steps(500, COCO_TRAIN_EXAMPLES, 1024) == 55_757
    assert epochs_to_steps(50, NYU_TRAIN_EXAMPLES, 512) == 4_647


# ImageNet, from givt_imagenet2012.py (GIVT_MODELS and its res / style / model_size
# branches), for every published combination: (config argument, expected values).
_IMAGENET_SIZES = {  # GIVT_MODELS: layers, heads, mlp, width, dropout
    "base": (12, 12, 3072, 768, 0.1),
    "default": (24, 16, 4096, 1024, 0.2),
    "large": (48, 16, 8192, 1536, 0.3),
}


def _imagenet_expected(style: str, res: int, model: str, adaptor: bool) -> dict:
    layers, heads, mlp, width, dropout = _IMAGENET_SIZES[model]
    code_len, out_dim, mixtures = (res // 16) ** 2, 16, 16
    temp, cfg_w, t_c, wd = 0.95, 0.4, 35.0, 1e-4
    bottleneck, shuffle = 4 * 16, (1, 1)
    if style == "masked":  # dec_dropout_rate 0.4, wd 0, t_C 140 at 512px
        # guidance: masked_generation_config says 0.0; the GIVT README lists 0.1 at 256px
        dropout, wd, cfg_w, temp = 0.4, 0.0, 0.1 if res == 256 else 0.0, 1.0
        t_c = 140.0 if res == 512 else 35.0
    elif res == 512 and model == "large":  # GIVT-Causal 512px: pixel shuffle (1, 2)
        dropout, code_len, out_dim, mixtures = 0.1, code_len // 2, 32, 32
        bottleneck, shuffle, temp, cfg_w = 8 * 32, (1, 2), 0.9, 0.9
    return {
        "vae.model.input_size": (res, res), "vae.model.codeword_dim": 16,
        "vae.model.filters": 128, "vae.model.num_res_blocks": 2,
        "vae.model.channel_multipliers": (1, 1, 2, 2, 4),
        "vae.model.pixel_shuffle_patch_size": shuffle,
        "vae.beta": 1e-5 if model == "large" else 5e-5,  # the two released VAEs
        "givt.model.num_decoder_layers": layers, "givt.model.num_heads": heads,
        "givt.model.mlp_dim": mlp, "givt.model.emb_dim": width,
        "givt.model.dec_dropout_rate": dropout, "givt.model.num_layers": 0,
        "givt.model.num_labels": 1000, "givt.model.seq_len": code_len,
        "givt.model.out_dim": out_dim, "givt.model.num_mixtures": mixtures,
        "givt.model.scale_tol": 1e-6, "givt.model.style": style,
        "givt.model.min_masking_rate_training": 0.3, "givt.model.mask_style": "concat",
        "givt.model.mask_schedule_train": "cosine",
        "givt.model.drop_labels_probability": 0.1, "givt.model.fix_square_plus": True,
        "givt.model.head_kind": "diag", "givt.model.scan": True,
        "givt.adaptor.enabled": adaptor, "givt.adaptor.num_blocks": 8,
        "givt.adaptor.num_channels_bottleneck": bottleneck,
        "givt.adaptor.pixel_shuffle_patch_size": shuffle,
        "givt.train.optim.lr": 1e-3, "givt.train.optim.wd": wd,
        # big_vision's config.wd: kernels only (its default wd_mults), times the schedule
        "givt.train.optim.wd_mode": "schedule_scaled", "givt.train.optim.wd_pattern": "/kernel$",
        # decode_jpeg_and_inception_crop(area_min=80, ratio 1, bicubic, antialias) | flip_lr
        "data.crop_area_min": 0.8, "data.flip": True,
        "givt.train.optim.b2": 0.95, "givt.train.optim.grad_clip": 1.0,
        "givt.train.optim.warmup_fraction": 0.1, "givt.train.batch_size": 8192,
        "givt.train.total_steps": 78_000,  # 500 epochs of 1.28M images / 8192
        "givt.train.fsdp": True,  # sharding_strategy fsdp(axis="data")
        "givt.sampling.temperature": temp, "givt.sampling.temperature_probs": 1.0,
        "givt.sampling.beam_size": 1, "givt.sampling.fan_size": 1,
        "givt.sampling.rand_top_k": False, "givt.sampling.rand_top_k_temperature": 1.0,
        "givt.sampling.cfg_weight": cfg_w, "givt.sampling.choice_temperature": t_c,
        "givt.sampling.schedule": "cosine", "givt.sampling.num_steps": 16,
        "givt.sampling.cfg_max_samples": 1000,  # CFGDensity.sample(max_samples=1_000)
    }


IMAGENET_PRESETS = [
    (f"style={style},res={res},model={model},adaptor={adaptor}", (style, res, model, adaptor))
    for style in ("ar", "masked") for res in (256, 512)
    for model in ("base", "default", "large") for adaptor in (False, True)
]


@pytest.mark.parametrize("arg,choice", IMAGENET_PRESETS, ids=[a for a, _ in IMAGENET_PRESETS])
def test_imagenet_presets_equal_the_published_config(arg, choice):
    cfg = config_lib.load_config(f"configs/imagenet.py:size=paper,{arg}")
    want = _imagenet_expected(*choice)
    wrong = {k: (_get(cfg, k), v) for k, v in want.items() if _norm(_get(cfg, k)) != _norm(v)}
    assert wrong == {}, "ours vs published: " + repr(wrong)


def test_imagenet_recipe_choices_need_the_paper_size():
    from uvim_givt.errors import ConfigError
    for arg in ("res=512", "model=large", "adaptor=True"):
        with pytest.raises(ConfigError, match="size=paper"):
            config_lib.load_config(f"configs/imagenet.py:size=tiny,{arg}")
    with pytest.raises(ConfigError, match="res=384"):
        config_lib.load_config("configs/imagenet.py:size=paper,res=384")
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        config_lib.load_config("configs/imagenet.py:size=paper,model=huge")


@pytest.mark.parametrize("task_name", ["panoptic", "depth"])
def test_paper_stage2_starts_from_the_published_vit_or_says_how(task_name, tmp_path):
    """givt_coco_panoptic.py / givt_nyu_depth.py: model_init = {'encoder': 'howto-i21k-L/16'}.
    The preset names it; training stage 2 without the file is refused with how to give it
    or opt out, before anything is written; stage 1 alone, or an explicit opt-out, pass
    that check."""
    from uvim_givt.errors import UserError
    from uvim_givt.task import get_task
    from uvim_givt.training import runner
    cfg = config_lib.load_config(f"configs/{task_name}.py:size=paper")
    assert cfg.givt.init_encoder == "howto-i21k-L/16"
    assert config_lib.load_config(f"configs/{task_name}.py").givt.init_encoder == ""
    run_dir = str(tmp_path / "run")
    with pytest.raises(UserError, match=r"givt\.init_encoder='howto-i21k-L/16'.*"
                                        r"--set givt\.init_encoder=PATH\.npz.*"
                                        r"--set givt\.init_encoder=none"):
        runner.train_run(get_task(task_name), cfg, run_dir, stage="all")
    assert not (tmp_path / "run").exists()
    runner.check_init_encoder(cfg, "vae")
    for opt_out in ("none", ""):
        cfg.givt.init_encoder = opt_out
        runner.check_init_encoder(cfg, "givt")
    cfg.givt.init_encoder = str(tmp_path / "missing.npz")
    with pytest.raises(UserError, match="missing.npz'?: no such file"):
        runner.check_init_encoder(cfg, "givt")


# The original UViM's stage 1 (tokens=vq), from big_vision configs/proj/uvim/
# vqvae_coco_panoptic.py and vqvae_nyu_depth.py (res 512, patch_size 16). Their lengths are
# epochs at batch 1024: COCO 1,000 epochs of train[4096:], NYU 200 epochs.
VQVAE = {  # config.model, both tasks
    "vae.kind": "vqvae",
    "vae.model.input_size": (512, 512), "vae.model.patch_size": (16, 16),
    "vae.model.code_len": 256, "vae.model.width": 768, "vae.model.depth": 6,
    "vae.model.decoder_depth": 12, "vae.model.mlp_dim": 3072, "vae.model.num_heads": 12,
    "vae.model.dict_size": 4096, "vae.model.codeword_dim": 768,
    "vae.model.dict_momentum": 0.995, "vae.model.min_count": 0.1,  # the model's default
    "vae.model.with_encoder_ctx": True, "vae.model.with_decoder_ctx": True,
    "vae.model.code_dropout": "random", "vae.model.bottleneck_resize": True,
    "vae.model.dropout": 0.0, "vae.model.scan": False,  # unrolled encoderblock_<i>
    "vae.freeze_dict": False, "vae.w_commitment": 0.0, "vae.ema_decay": 0.0,
    # big_vision.scale_by_adafactor(beta2_cap=0.95), cosine, 4,000 warm-up steps, clip 1
    "vae.train.optim.optimizer": "big_vision_adafactor",
    "vae.train.optim.big_vision_adafactor.beta2_cap": 0.95,
    "vae.train.optim.schedule": "cosine", "vae.train.optim.warmup_steps": 4000,
    "vae.train.optim.grad_clip": 1.0, "vae.train.batch_size": 1024,
    "vae.train.log_every": 50, "vae.train.ckpt_every": 1000,
    "data.image_size": 512, "data.flip": True, "data.crop_area_min": 0.05,
    "data.shuffle_buffer": 25_000,
}
PUBLISHED_VQ = {
    "panoptic": {
        **VQVAE, "data.source": "tfds:coco/2017_panoptic", "data.train_split": "train[4096:]",
        "vae.model.label_channels.semantics": (0, 134),  # 133 + void
        "vae.model.label_channels.instances": (1, 100),
        "vae.ignore_zero": (),
        "vae.train.optim.lr": 4e-4, "vae.train.optim.wd": 4e-5,
        "vae.train.total_steps": 111_515,  # 1,000 epochs of 114,191 / 1024
        # evals: val on train[:4096] every 250; coco_panoptic every 10,000 on validation,
        # train[:4096] and train[4096:8192]
        "evals.vae_loss.split": "train[:4096]", "evals.vae_loss.every": 250,
        "evals.oracle.split": "validation", "evals.oracle.every": 10_000,
        "evals.oracle_holdout.split": "train[:4096]", "evals.oracle_holdout.every": 10_000,
        "evals.oracle_train.split": "train[4096:8192]", "evals.oracle_train.every": 10_000,
        "data.min_area_fraction": 0.0,  # predict_kwargs min_fraction: commented out
    },
    "depth": {
        **VQVAE, "data.source": "tfds:nyu_depth_v2", "data.train_split": "train",
        "vae.model.label_channels.depth": (0, 256),  # QUANTIZATION_BINS
        "data.min_depth": 0.001, "data.max_depth": 10.0,
        "vae.ignore_zero": ("depth",),  # the loss masks the closest bin
        "vae.train.optim.lr": 1e-3, "vae.train.optim.wd": 1e-5,
        "vae.train.total_steps": 9_294,  # 200 epochs of 47,584 / 1024
        # evals: val on validation every 250; nyu_depth_val every 2,000 (nyu_eval_crop)
        "evals.vae_loss.split": "validation", "evals.vae_loss.every": 250,
        "evals.oracle.split": "validation", "evals.oracle.every": 2000,
        "data.eval_crop_before_predict": True, "data.decode": "argmax",
        "data.eval_resize": "nearest",
    },
}


@pytest.mark.parametrize("task", sorted(PUBLISHED_VQ))
def test_vq_paper_preset_equals_the_published_config(task):
    cfg = config_lib.load_config(f"configs/{task}.py:size=paper,tokens=vq")
    wrong = {k: (_get(cfg, k), v) for k, v in PUBLISHED_VQ[task].items()
             if _norm(_get(cfg, k)) != _norm(v)}
    assert wrong == {}, "ours vs published: " + repr(wrong)
    # the research evaluators (ours, not published) are declared, run only when named
    research = {n: e for n, e in cfg.evals.items() if e.prediction in ("completed",
                                                                       "uncertainty")}
    assert sorted(research) == ["exposure", "uncertainty"]
    assert not any(e.after_training for e in research.values())
    from configs.common import COCO_TRAIN_EXAMPLES, epochs_to_steps
    assert epochs_to_steps(1000, COCO_TRAIN_EXAMPLES, 1024) == 111_515


# The original UViM's stage 2, the VTT, from big_vision configs/proj/uvim/
# train_coco_panoptic_pretrained.py and train_nyu_depth_pretrained.py (as get_config()
# returns them: NYU's default arg is singlehost=True, batch 32 and 20 epochs).
VTT = {
    "givt.kind": "vtt",
    # VTT_MODELS["large"], patches 16, learned position embeddings, 512 px, 256 codes
    "givt.model.num_layers": 24, "givt.model.num_heads": 16, "givt.model.mlp_dim": 4096,
    "givt.model.emb_dim": 1024, "givt.model.patches": (16, 16),
    "givt.model.vocab_size": 4097,  # dict_size + 1
    "givt.model.posemb_type": "learn", "givt.model.input_size": (512, 512),
    "givt.model.seq_len": 256, "givt.model.zero_decoder_seq": False,
    "givt.model.dropout_rate": 0.0,  # the Model's default
    "givt.init_encoder": "howto-i21k-L/16",  # model_init = {"encoder": ...}
    # big_vision.scale_by_adafactor(beta2_cap=0.95), lr 1e-3, wd 1e-6, no clipping, cosine
    # with 4,000 warm-up steps; lr_mults: pos_embedding_encoder, EmbedPatches, encoder x0.1
    "givt.train.optim.optimizer": "big_vision_adafactor",
    "givt.train.optim.big_vision_adafactor.beta2_cap": 0.95,
    "givt.train.optim.lr": 1e-3, "givt.train.optim.wd": 1e-6,
    "givt.train.optim.grad_clip": 0.0, "givt.train.optim.schedule": "cosine",
    "givt.train.optim.warmup_steps": 4000,
    "givt.train.optim.lr_mults": [("^(encoder|EmbedPatches|pos_embedding_encoder)/", 0.1)],
    "givt.train.log_every": 50, "givt.train.ckpt_every": 1000,
    # predict_fn: temperature_sampling at temperature 1e-7 (greedy), one sample, no beam
    "givt.sampling.temperature": 1e-7, "givt.sampling.beam_size": 1,
    "givt.sampling.fan_size": 1, "givt.sampling.num_samples": 1,
    # validation_fn: the loss with train=False (no dropout)
    "evals.givt_loss.codes": "mean",
}
PUBLISHED_VTT = {
    "panoptic": {
        **VTT, "givt.train.batch_size": 512,
        "givt.train.total_steps": 44_606,  # 200 epochs of 114,191 / 512
        # val (compute_mean) on train[:4096] every 1,000; coco_panoptic every 10,000 on
        # validation, train[:4096] and train[4096:8192]
        "evals.givt_loss.split": "train[:4096]", "evals.givt_loss.every": 1000,
        "evals.sampled.split": "validation", "evals.sampled.every": 10_000,
        "evals.sampled_holdout.split": "train[:4096]", "evals.sampled_holdout.every": 10_000,
        "evals.sampled_train.split": "train[4096:8192]", "evals.sampled_train.every": 10_000,
    },
    "depth": {
        **VTT, "givt.train.batch_size": 32,
        "givt.train.total_steps": 29_740,  # 20 epochs of 47,584 / 32
        # val (compute_mean) on validation every 1,000; nyu_depth_val every 2,000
        "evals.givt_loss.split": "validation", "evals.givt_loss.every": 1000,
        "evals.sampled.split": "validation", "evals.sampled.every": 2000,
    },
}


@pytest.mark.parametrize("task", sorted(PUBLISHED_VTT))
def test_vtt_paper_preset_equals_the_published_config(task):
    cfg = config_lib.load_config(f"configs/{task}.py:size=paper,tokens=vq")
    wrong = {k: (_get(cfg, k), v) for k, v in PUBLISHED_VTT[task].items()
             if _norm(_get(cfg, k)) != _norm(v)}
    assert wrong == {}, "ours vs published: " + repr(wrong)
    # the model the preset builds is the published tree's size (715,729,921 parameters
    # for panoptic: ../shared/reference/uvim_param_trees.json)
    from uvim_givt.models import builders
    model = builders.build_model("givt", cfg)
    assert type(model).__name__ == "VTT" and model.vocab_size == cfg.vae.model.dict_size + 1


@pytest.mark.parametrize("size", ["tiny", "base"])
@pytest.mark.parametrize("task", ["panoptic", "depth", "colorization"])
def test_both_token_kinds_train_at_the_same_steps_and_batch(task, size):
    """evals.compare promises an equal budget: the tiny and base presets give the GIVT side
    and the original UViM's side (tokens=vq) the same steps and batch in each stage."""
    def budget(tokens):
        cfg = config_lib.load_config(f"configs/{task}.py:size={size},tokens={tokens}")
        return {f"{stage}.{key}": cfg[stage].train[key] for stage in ("vae", "givt")
                for key in ("total_steps", "batch_size", "grad_accum")}
    assert budget("continuous") == budget("vq")
