"""Size presets shared by the UViM dense-task configs (panoptic, depth).

``paper`` reproduces the published models (see shared/reference): 512px input,
a ViT-B-shaped VAE (enc 6 / dec 12 layers, code 16x16) and a ViT-L/16
encoder-decoder GIVT (24+24 layers). ``tiny`` is sized to train both stages on a
2-core CPU in a few minutes on the embedded 64px data; ``base`` is in between.
"""

from __future__ import annotations

import ml_collections

from uvim_givt.config import parse_arg
from uvim_givt.errors import ConfigError
from uvim_givt.training.trainer import default_train_config

SIZES = ("tiny", "base", "paper")
# The dense tasks' token kinds (config argument ``tokens``): "continuous", GIVT-UViM (a
# Gaussian ViT VAE, a GIVT stage 2); "vq", the original UViM (a VQ-VAE with the image as
# context, ``vae.kind="vqvae"``; its discrete stage 2 is not built yet: train --stage vae).
TOKENS = ("continuous", "vq")
# The paper trains the (pretrained) stage-2 image encoder at 0.1x the learning rate.
ENCODER_LR_MULT = (("^(encoder|EmbedPatches|pos_embedding_encoder)/", 0.1),)


def check_size(size: str) -> None:
    if size not in SIZES:
        raise ConfigError(f"unknown size preset {size!r}: one of {SIZES}")


def dense_config(task: str, arg: str | None) -> tuple[ml_collections.ConfigDict,
                                                      ml_collections.ConfigDict]:
    """The start of a dense task's config (panoptic, depth): its argument (``size``, default
    tiny, checked) and the config with ``task``, ``size`` and ``seed`` set."""
    a = parse_arg(arg, size="tiny", tokens="continuous")
    check_size(a.size)
    if a.tokens not in TOKENS:
        raise ConfigError(f"unknown tokens {a.tokens!r}: one of {TOKENS}")
    c = ml_collections.ConfigDict()
    c.task = task
    c.size = a.size
    c.seed = 0
    return a, c


def vit_vae_model(size: str, codeword_dim: int, label_channels: dict) -> dict:
    """ViT VAE over label maps; ``label_channels``: name -> (index in the label map, classes)."""
    return dict(_vit_vae_shape(size, codeword_dim), label_channels=label_channels,
                **model_precision())


def vqvae_model(size: str, label_channels: dict) -> dict:
    """The original UViM's VQ-VAE over label maps (big_vision proj/uvim/vit.py; paper: the
    model section of vqvae_coco_panoptic.py / vqvae_nyu_depth.py, identical for both tasks:
    the ViT-B shape of the GIVT VAE, 768-d codewords, 4,096 of them, the image as context in
    the encoder and the decoder, the resize bottleneck, random code dropout). ``min_count``:
    a codeword whose discounted count falls under it is replaced by a split of the most
    frequent one (0.1 ~= 0.995 ** 500: unused for ~500 batches)."""
    shape = _vit_vae_shape(size, codeword_dim=768)
    if size == "paper":
        vq = dict(codeword_dim=768, dict_size=4096, dict_momentum=0.995,
                  code_dropout="random")
    elif size == "base":
        vq = dict(codeword_dim=256, dict_size=1024, dict_momentum=0.995,
                  code_dropout="random")
    else:
        # tiny: a small dictionary and a short memory (0.9 ** 22 < 0.1: a codeword unused
        # for ~22 of the run's batches is split), so a short run uses its codewords.
        vq = dict(codeword_dim=32, dict_size=128, dict_momentum=0.9, code_dropout="none")
    shape.update(vq, min_count=0.1, with_encoder_ctx=True, with_decoder_ctx=True,
                 bottleneck_resize=True, **layer_stack(False))
    return dict(shape, label_channels=label_channels, **model_precision())


def layer_stack(scan: bool) -> dict:
    """``scan``: a transformer's layers as one ``nn.scan`` (parameters stacked, the published
    checkpoints' layout) or unrolled. ``remat_policy``: what a scanned stack keeps for the
    backward pass (``uvim_givt.models.common.REMAT_POLICIES``; big_vision's
    "nothing_saveable" recomputes each layer's forward pass, "dots_saveable" keeps the
    matmul outputs); unused when unrolled."""
    return dict(scan=scan, remat_policy="nothing_saveable")


def model_precision(attention: bool = True) -> dict:
    """``dtype``: the compute dtype of a model's matmuls and activations, float32 or
    bfloat16 (mixed precision: parameters, optimiser state, losses and the GMM head stay
    float32; on a CPU bf16 is slower, see benchmarks/bench_precision.py). ``attention``
    (models with attention): fused (jax.nn.dot_product_attention) or reference (flax's
    hand-written attention)."""
    return dict(dtype="float32", **(dict(attention="fused") if attention else {}))


def _vit_vae_shape(size: str, codeword_dim: int) -> dict:
    if size == "paper":
        return dict(input_size=(512, 512), patch_size=(16, 16), width=768, depth=6,
                    decoder_depth=12, mlp_dim=3072, num_heads=12, code_len=256,
                    codeword_dim=codeword_dim, dropout=0.0, code_dropout="none",
                    **layer_stack(True))
    if size == "base":
        # Layers unrolled: scanned (recomputing each layer's forward pass) the base train
        # step takes 1.08-1.11x the time on a CPU (benchmarks/README.md, vit_vae base).
        return dict(input_size=(128, 128), patch_size=(8, 8), width=384, depth=4,
                    decoder_depth=6, mlp_dim=1536, num_heads=6, code_len=64,
                    codeword_dim=codeword_dim, dropout=0.0, code_dropout="none",
                    **layer_stack(False))
    return dict(input_size=(64, 64), patch_size=(8, 8), width=64, depth=2, decoder_depth=2,
                mlp_dim=256, num_heads=4, code_len=64, codeword_dim=codeword_dim, dropout=0.0,
                code_dropout="none", **layer_stack(False))


#: the codes a stage-2 held-out NLL scores (evals.evaluators.HELDOUT_CODES): "sample", a
#: posterior sample with label dropout, as big_vision's validation_fn ("mean": the means)
HELDOUT_CODES = "sample"


def evaluator(kind: str, prediction: str, *, split: str = "validation", num_examples: int = 0,
              every: int = 0, batch_size: int = 50, overlays: int = 0,
              after_training: bool = True, **extra) -> dict:
    """One evaluator declaration (``cfg.evals.<name>``), run by the runner and ``eval``.

    kind: the metric family (evals/): panoptic | depth | generation | loss.
    prediction: what is scored: oracle (stage 1: encode the ground truth, decode),
      sampled (stage 2 samples, decoded), teacher_forced (stage 2 given the true codes:
      its decoded means for a task metric, its NLL for kind "loss") or
      baseline (a task's reference predictor, e.g. the training-set mean depth).
    num_examples: cap on the split (0 = all of it). every: also run every N steps of the
      evaluated stage's training (0 = only after it). overlays: pictures of the first N
      predictions of a dense evaluator (RUN/predictions/). after_training: run after the
      stage and by a plain ``eval`` (False: only when named, ``eval --evaluator NAME``).
    A stage-2 ``loss`` evaluator's ``codes``: what its NLL scores (HELDOUT_CODES).
    """
    if kind == "loss" and prediction == "teacher_forced":
        extra.setdefault("codes", HELDOUT_CODES)
    return dict(kind=kind, prediction=prediction, split=split, num_examples=num_examples,
                every=every, batch_size=batch_size, overlays=overlays,
                after_training=after_training, **extra)


def dense_evaluators(kind: str, size: str, baseline: bool = False,
                     heldout_split: str = "validation", every: dict | None = None,
                     extra_splits: dict | None = None, uncertainty: dict | None = None,
                     discrete: bool = False) -> dict:
    """The dense tasks' evaluators, as the published configs declare theirs:

    * ``vae_loss`` / ``givt_loss``: held-out losses (stage-1 loss, reconstruction and KL;
      stage-2 NLL per token and per dimension) on ``heldout_split``;
    * ``oracle`` / ``sampled``: the task metric of stage 1 (ground truth encoded, decoded)
      and stage 2 (samples) on the validation split, with 8 overlay PNGs each;
    * ``teacher_forced``: the task metric of stage 2's teacher-forced means, decoded; its
      gap to ``sampled`` measures the exposure bias;
    * ``exposure`` (run when named): the task metric of completions of the first 0, 1/4,
      1/2, 3/4 and all true codes, and the NLL per code position;
    * ``uncertainty`` (run when named): calibration and spread of 8 code samples per image
      (``uncertainty``: the task's ``channels`` and ``value_key``; evals.evaluators);
    * optionally the task's ``baseline``, and, from ``extra_splits`` ({suffix: split}),
      ``oracle_<suffix>`` / ``sampled_<suffix>`` on more splits (e.g. the held-out one).

    ``every`` maps evaluator names to their period in steps (0 or absent: after the stage).
    ``discrete`` (the original UViM: VQ-VAE and VTT): the stage-2 loss is scored as
    big_vision's validation_fn does it, without dropout (``codes="mean"``: the code ids are
    deterministic); the research evaluators serve both token kinds (the VTT completes
    given code ids and draws its samples as the GIVT does).
    """
    every = every or {}
    bs = 8 if size == "paper" else 50
    out = dict(
        vae_loss=evaluator("loss", "oracle", split=heldout_split, batch_size=bs,
                           every=every.get("vae_loss", 0)),
        givt_loss=evaluator("loss", "teacher_forced", split=heldout_split, batch_size=bs,
                            every=every.get("givt_loss", 0),
                            **({"codes": "mean"} if discrete else {})),
        oracle=evaluator(kind, "oracle", batch_size=bs, overlays=8,
                         every=every.get("oracle", 0)),
        sampled=evaluator(kind, "sampled", batch_size=bs, overlays=8,
                          every=every.get("sampled", 0)),
        teacher_forced=evaluator(kind, "teacher_forced", batch_size=bs, overlays=0),
        # the exposure-bias curve: the metric with the first 0, 1/4, ... of the true codes
        # given, and stage 2's NLL per code position; run when named (eval --evaluator)
        exposure=evaluator(kind, "completed", batch_size=bs, keep=(0.0, 0.25, 0.5, 0.75, 1.0),
                           num_examples=512 if size == "paper" else 100,
                           after_training=False),
        uncertainty=evaluator(kind, "uncertainty", batch_size=bs, draws=8,
                              levels=(0.5, 0.8, 0.9, 0.95), overlays=8,
                              num_examples=512 if size == "paper" else 100,
                              after_training=False,
                              **{"channels": (), "value_key": "", "std_scale": 1.0,
                                 **(uncertainty or {})}))
    for suffix, split in (extra_splits or {}).items():
        for name in ("oracle", "sampled"):
            out[f"{name}_{suffix}"] = evaluator(kind, name, split=split, batch_size=bs,
                                                every=every.get(name, 0), overlays=0)
    if baseline:
        out["baseline"] = evaluator(kind, "baseline", batch_size=bs, overlays=0)
    return out


def givt_encdec_model(size: str, out_dim: int, seq_len: int, input_size) -> dict:
    # Layers unrolled, as the published UViM stage 2 (its checkpoints' tree). Scanned
    # (givt.model.scan=True; the published trees load into either) the paper step compiled
    # 4x faster on a CPU, ran 0.90-0.94x the time in 0.6x the memory (benchmarks/README.md,
    # "The GPU suite"): the first thing the accelerator measurement decides.
    common = dict(num_labels=None, seq_len=seq_len, out_dim=out_dim, num_mixtures=1,
                  head_kind="per_channel", style="ar", input_size=tuple(input_size),
                  fix_square_plus=True, scale_tol=1e-6, stem=(), stem_strides=(),
                  encoder_skip=False, **layer_stack(False), **model_precision())
    if size == "paper":
        return dict(common, emb_dim=1024, num_heads=16, mlp_dim=4096, num_layers=24,
                    num_decoder_layers=24, patches=(16, 16), enc_dropout_rate=0.0,
                    dec_dropout_rate=0.0)
    if size == "base":
        return dict(common, emb_dim=384, num_heads=6, mlp_dim=1536, num_layers=6,
                    num_decoder_layers=6, patches=(8, 8), enc_dropout_rate=0.0,
                    dec_dropout_rate=0.1)
    # Tiny: a conv stem does most of the image encoding: 3x3 convs of 16, 16, 32, 32
    # channels at strides 1, 2, 2, 1 (the first at the full 64 px, which tells the small
    # shapes apart), a 2x2 patch embedding onto the 8x8 code grid, then one transformer
    # layer (the decoder one too). A from-scratch ViT learns images slowly in CPU minutes:
    # panoptic things PQ 23.6 against 17.5 with the earlier (16, 32) stride-2 stem and 3
    # layers, at the same 3,000 steps in 15% less time (docs/DEVIATIONS.md). Each encoded
    # image token is added to the decoder input at its position (encoder_skip; the 8x8
    # code grid is the encoder's grid).
    return dict(common, emb_dim=96, num_heads=4, mlp_dim=384, num_layers=1,
                num_decoder_layers=1, patches=(8, 8), enc_dropout_rate=0.0,
                dec_dropout_rate=0.0, stem=(16, 16, 32, 32),
                stem_strides=(1, 2, 2, 1), encoder_skip=True)


# Tiny presets' stage-2 recipe against exposure bias (README "Deviations"): noise on the
# teacher-forcing inputs and a higher learning rate. base/paper: the published recipe.
def givt_tiny_recipe(size: str, input_noise: float = 1.0) -> dict:
    tiny = size == "tiny"
    return dict(lr=6e-3 if tiny else 1e-3, input_noise=input_noise if tiny else 0.0)


# The published UViM/GIVT training recipes (big_vision configs/proj/givt/vae_*.py and
# givt_*.py). Their lengths are epochs at their batch sizes; here steps, rounded as
# big_vision rounds total_epochs * num_examples / batch_size.
COCO_TRAIN_EXAMPLES = 118_287 - 4_096  # train[4096:]: the first 4,096 are held out
NYU_TRAIN_EXAMPLES = 47_584


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
    return int(round(epochs * num_examples / batch_size))


def published_vae_train(epochs: float, num_examples: int) -> ml_collections.ConfigDict:
    """vae_coco_panoptic.py / vae_nyu_depth.py: scale_by_adam (b2 0.95), lr 1e-3, clip 1,
    cosine, weight decay 1e-4 on kernels, multiplied by the schedule's shape but not by the
    learning rate, batch 1024. Their ``warmup_steps=0.1`` zeroes step 0 only: 1 step here.
    Parameters and optimiser state sharded over the devices (FSDP), as there."""
    t = train_group("paper", epochs_to_steps(epochs, num_examples, 1024), 1024, lr=1e-3,
                    wd=1e-4)
    t.log_every, t.ckpt_every = 50, 1000
    t.fsdp = True
    t.optim.update(optimizer="adam", b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
                   schedule="cosine", warmup_steps=1, wd_mode="schedule_scaled",
                   wd_pattern="/kernel$")
    return t


def published_givt_train(epochs: float, num_examples: int, warmup_steps: int = 0,
                         warmup_fraction: float = 0.0, batch_size: int = 512
                         ) -> ml_collections.ConfigDict:
    """givt_coco_panoptic.py / givt_nyu_depth.py (and the original UViM's stage 2,
    train_*_pretrained.py, the same recipe): big_vision's scale_by_adafactor (beta2 cap
    0.95), lr 1e-3, no clipping, cosine, weight decay 1e-6 on kernels (schedule-scaled), the
    image encoder (pretrained there) at 0.1x, batch 512; replicated (they name no sharding,
    unlike their VAEs)."""
    t = train_group("paper", epochs_to_steps(epochs, num_examples, batch_size), batch_size,
                    lr=1e-3, wd=1e-6, lr_mults=ENCODER_LR_MULT)
    t.log_every, t.ckpt_every = 50, 1000
    t.optim.update(optimizer="big_vision_adafactor", grad_clip=0.0, schedule="cosine",
                   warmup_steps=warmup_steps, warmup_fraction=warmup_fraction,
                   wd_mode="schedule_scaled", wd_pattern="/kernel$")
    t.optim.big_vision_adafactor.beta2_cap = 0.95
    return t


def sampling_group(**values: object) -> dict:
    """``givt.sampling``: every sampling setting (``uvim_givt.sampling.SamplingSettings``), at
    the values the UViM recipes leave alone; a task's config passes the values it changes
    (ImageNet: its temperature, guidance and MaskGIT t_C).

    temperature / temperature_probs: of the mixture components' spread / of the mixture
    weights. cfg_weight: DB-CFG guidance (0 = none; class-conditional models trained with
    label dropout), cfg_max_samples its rejection-sampling proposals per token (published:
    1000; a token whose proposals all fail is drawn from the conditional), unconditional:
    every label dropped. num_samples: dense tasks' code samples per image, their per-pixel
    class distributions averaged (1 = one sample, as published); test_time_flip: odd draws
    sample the mirrored image, mirrored back before averaging. Causal (style "ar"):
    beam_size / fan_size (1 / 1 = ancestral sampling), rand_top_k: beam survivors drawn from
    softmax(score / rand_top_k_temperature) instead of the best. MaskGIT (style "masked"):
    num_steps, choice_temperature (t_C), schedule (cosine, linear or pow:K)."""
    group = dict(temperature=1.0, temperature_probs=1.0, cfg_weight=0.0, cfg_max_samples=1000,
                 unconditional=False, num_samples=1, test_time_flip=False, beam_size=1,
                 fan_size=1, rand_top_k=False, rand_top_k_temperature=1.0, num_steps=16,
                 choice_temperature=1.0, schedule="cosine")
    unknown = sorted(set(values) - set(group))
    if unknown:
        raise KeyError(f"givt.sampling has no key {unknown[0]!r}")
    return {**group, **values}


def init_group() -> dict:
    """Where a stage starts from (``vae.init`` / ``givt.init``), to fine-tune: ``path`` = a
    run directory or a released .npz ("" = from scratch); parameters whose name fully
    matches a ``dont_load`` regex keep their fresh initialisation (e.g. a new head)."""
    return dict(path="", dont_load=())


def adaptor_group(out_dim: int, enabled: bool = False) -> dict:
    """``givt.adaptor``: the invertible (iRevNet) adaptor between the VAE's codes and the
    GIVT's sequence, trained jointly with the GIVT. The published ImageNet recipe's values
    (givt_imagenet2012.py, ``adaptor=True``): 8 blocks, a bottleneck of 4 x out_dim
    channels; ``pixel_shuffle_patch_size`` only shapes the code grid the convs see (the
    square latent grid space-to-depth shuffled by that patch)."""
    return dict(enabled=enabled, num_blocks=8, num_channels_bottleneck=4 * out_dim,
                pixel_shuffle_patch_size=(1, 1))


def train_group(size: str, steps: int, batch_size: int, lr: float, wd: float,
                lr_mults=()) -> ml_collections.ConfigDict:
    t = default_train_config()
    t.total_steps, t.batch_size = steps, batch_size
    t.log_every = 50 if size == "tiny" else 100
    t.ckpt_every = 500 if size == "tiny" else 2000
    t.optim.lr, t.optim.wd = lr, wd
    t.optim.lr_mults = list(lr_mults)
    return t


# ------------------------------------------------------- the dense tasks' two stages
def dense_train(size: str, tiny_steps: int, lr: float, tiny_batch: int = 32
                ) -> ml_collections.ConfigDict:
    """A dense task's stage trained at tiny or base size: ``tiny_steps`` at batch
    ``tiny_batch`` (tiny) or 20,000 steps at batch 128 (base), weight decay 1e-4 (paper: the
    published recipes, :func:`published_vae_train` / :func:`published_givt_train`)."""
    return train_group(size, steps={"tiny": tiny_steps, "base": 20_000}[size],
                       batch_size={"tiny": tiny_batch, "base": 128}[size], lr=lr, wd=1e-4)


def dense_vae_group(model: dict, ignore_zero: tuple[str, ...], beta: float,
                    train: ml_collections.ConfigDict) -> dict:
    """``vae``: a dense task's stage-1 ViT VAE (``model``: :func:`vit_vae_model`), trained
    from scratch. ``ignore_zero``: label channels whose class 0 is "unknown" (not in the
    loss)."""
    return dict(
        init=init_group(),
        kind="vit",
        model=model,
        ema_decay=0.0,  # EMA of the VAE for stage 2 and decoding (0 = off, as published)
        ignore_zero=ignore_zero,
        beta=beta,
        train=train,
    )


def published_vqvae_train(epochs: float, num_examples: int, lr: float, wd: float,
                          batch_size: int = 1024) -> ml_collections.ConfigDict:
    """vqvae_coco_panoptic.py / vqvae_nyu_depth.py / vqvae_imagenet2012_colorization.py:
    big_vision's scale_by_adafactor (beta2 cap 0.95), clip 1, cosine with 4,000 warm-up
    steps, weight decay on kernels (schedule-scaled, as the GIVT recipes here), batch 1024
    (the colorization one's default: 128)."""
    t = train_group("paper", epochs_to_steps(epochs, num_examples, batch_size), batch_size,
                    lr=lr, wd=wd)
    t.log_every, t.ckpt_every = 50, 1000
    t.optim.update(optimizer="big_vision_adafactor", grad_clip=1.0, schedule="cosine",
                   warmup_steps=4000, wd_mode="schedule_scaled", wd_pattern="/kernel$")
    t.optim.big_vision_adafactor.beta2_cap = 0.95
    return t


def dense_vqvae_group(model: dict, ignore_zero: tuple[str, ...],
                      train: ml_collections.ConfigDict) -> dict:
    """``vae`` of the original UViM: the VQ-VAE ``model`` (:func:`vqvae_model`), its
    dictionary learnt by moving averages (``freeze_dict`` = False, as published), no
    commitment loss (``w_commitment`` 0, as published)."""
    return dict(init=init_group(), kind="vqvae", model=model, ema_decay=0.0,
                ignore_zero=ignore_zero, w_commitment=0.0, freeze_dict=False, train=train)


def vtt_model(size: str, vq: dict) -> dict:
    """The original UViM's stage 2 (big_vision proj/uvim/vtt.py) over the VQ-VAE ``vq``
    (its model group): paper: VTT_MODELS["large"] of train_*_pretrained.py (ViT-L/16 at
    512 px, the decoder as deep), learned position embeddings, vocab = dict_size + 1.
    base: a ViT-S-like 6-layer pair; tiny: two layers of width 96 on 8 px patches."""
    common = dict(vocab_size=vq["dict_size"] + 1, seq_len=vq["code_len"],
                  input_size=tuple(vq["input_size"]), posemb_type="learn",
                  zero_decoder_seq=False, **model_precision())
    if size == "paper":
        return dict(common, num_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024,
                    patches=(16, 16), dropout_rate=0.0)
    if size == "base":
        return dict(common, num_layers=6, num_heads=6, mlp_dim=1536, emb_dim=384,
                    patches=(8, 8), dropout_rate=0.1)
    return dict(common, num_layers=2, num_heads=4, mlp_dim=384, emb_dim=96, patches=(8, 8),
                dropout_rate=0.0)


def dense_vtt_group(size: str, vq: dict, train: ml_collections.ConfigDict) -> dict:
    """``givt`` of the original UViM: the VTT (``givt.kind="vtt"``, :func:`vtt_model`) over
    the VQ-VAE ``vq``'s code ids, greedy decoding (the published predict_fn's temperature
    1e-7), the image encoder from howto-i21k-L/16 in the paper preset, as published. The
    keys that only a GIVT reads (posterior, input noise, adaptor) keep their off values."""
    return dict(
        init=init_group(),
        kind="vtt",
        model=vtt_model(size, vq),
        train=train,
        posterior="mean",  # code ids are deterministic (a GIVT's key, unused)
        input_noise=0.0,
        label_smoothing=0.0,  # the VTT's plain cross-entropy, as published
        sampling=sampling_group(temperature=1e-7, beam_size=1, fan_size=1),
        init_encoder="howto-i21k-L/16" if size == "paper" else "",
        adaptor=adaptor_group(1),  # off: code ids are modelled as they are
    )


def dense_givt_group(size: str, vae: dict, train: ml_collections.ConfigDict,
                     input_noise: float, sampling: dict) -> dict:
    """``givt``: a dense task's stage-2 encoder-decoder GIVT predicting the codes of the
    stage-1 VAE ``vae`` (its model group) from the image. ``input_noise``: the std of
    Gaussian noise on the teacher-forcing inputs (0 = the published recipe)."""
    return dict(
        init=init_group(),
        kind="givt",  # stage 2's kind: a GIVT (vtt: the original UViM's, dense_vtt_group)
        model=givt_encdec_model(size, out_dim=vae["codeword_dim"], seq_len=vae["code_len"],
                                input_size=vae["input_size"]),
        train=train,
        posterior="sample",  # stage-1 codes for training: sample of q(z|x) ("mean" = its mean)
        input_noise=input_noise,
        label_smoothing=0.0,  # code ids only (givt.kind vtt / discrete); a GMM has no labels
        sampling=sampling,
        # The stage-2 image encoder's start: "" or "none" = from scratch, a .npz of a
        # big_vision ViT, or a published checkpoint's name, which training asks the user to
        # give as a file. paper: big_vision's howto-i21k-L/16 ViT-L, as published (their
        # dont_load cls and head are never read: only the encoder's own parameters are).
        init_encoder="howto-i21k-L/16" if size == "paper" else "",
        adaptor=adaptor_group(vae["codeword_dim"]),  # off, as published for UViM
    )
