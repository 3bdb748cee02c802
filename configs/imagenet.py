"""Class-conditional image generation: CNN VAE (stage 1) + decoder-only GIVT (stage 2).

    python -m tasks.imagenet train                                     # embedded digits, tiny
    python -m tasks.imagenet train --config configs/imagenet.py:size=tiny,style=masked
    python -m tasks.imagenet train --config configs/imagenet.py:size=paper \
        --data tfds:imagenet2012
    python -m tasks.imagenet train --config configs/imagenet.py:size=paper,res=512,model=large
    size:    tiny (embedded 32px digits, CPU minutes) | paper (the published recipes)
    style:   ar (GIVT-Causal) | masked (GIVT-MaskGIT); also --set givt.model.style=masked
    res:     paper: 256 | 512 (the CNN VAE's 16x downsampling: 16x16 or 32x32 latents)
    model:   paper: base | default | large (the published GIVT sizes, givt_imagenet2012.py)
    adaptor: paper: False | True (the invertible adaptor, trained with the GIVT)
    tokens:  continuous (GIVT, default) | vq (discrete: a VQ tokenizer on the same CNN
             backbone and losses, and the same transformer over its ids with a softmax)
    quantizer: tokens=vq: vqgan (MaskGIT's VQGAN lookup) | vit_vqgan (ViT-VQGAN's
             factorised, l2-normalised codes)

``paper`` follows big_vision's ``givt_imagenet2012.py`` for every combination: at 256px
(default model) it builds exactly the published parameter trees (``vae_imagenet256_cnn``,
``givt_imagenet256_causal``, ``givt_imagenet256_maskgit``). GIVT-MaskGIT uses decoder
dropout 0.4, no weight decay and, at 512px, choice temperature 140; the 512px large
GIVT-Causal pixel-shuffles the 32x32 latent grid by (1, 2) into 512 tokens of 32
channels, with 32 mixture components, dropout 0.1, the adaptor's bottleneck 8 x 32, and
samples at temperature 0.9 with DB-CFG 0.9; the large model's VAE has beta 1e-5.
``tiny`` is tuned so that ``python -m tasks.imagenet train`` finishes in well under 10
minutes on a 2-core CPU.

``tokens=vq`` is the discrete-token baseline on the same backbone, data and protocol: stage 1
is a VQ tokenizer (``vae.kind="vqgan"``, ``models/vqgan.py``) with the CNN VAE's encoder,
decoder, image losses and schedule, and the MaskGIT tokenizer's bottleneck (paper: 1024
codewords of 256 dims, commitment 0.25, entropy loss 0.1 at temperature 0.01;
``quantizer=vit_vqgan``: 8192 codewords looked up in 32 l2-normalised dims, ViT-VQGAN's
factorised codes); stage 2 (``givt.kind="discrete"``) is the GIVT of the same size and
recipe with an id lookup and a softmax over the codewords, causal (VQGAN's transformer) or
MaskGIT; samples are guided on the logits. The paper VQ samplers take the published
MaskGIT decoding (8 steps, choice temperature 4.5, no guidance; causal: temperature 1, no
guidance); tiny guides the causal models of both kinds alike (0.4), and samples the MaskGIT
VQ model unguided at choice temperature 60 (its sweep, docs/RESULTS.md).
"""

from __future__ import annotations

import ml_collections

from configs.common import (
    adaptor_group,
    evaluator,
    init_group,
    layer_stack,
    model_precision,
    sampling_group,
    train_group,
)
from uvim_givt.config import parse_arg
from uvim_givt.errors import ConfigError

SIZES = ("tiny", "paper")
TOKENS = ("continuous", "vq")
QUANTIZERS = ("vqgan", "vit_vqgan")
STYLES = ("ar", "masked")
RESOLUTIONS = (256, 512)
# The published GIVT sizes (givt_imagenet2012.py GIVT_MODELS).
GIVT_SIZES = {
    "base": dict(num_decoder_layers=12, num_heads=12, mlp_dim=3072, emb_dim=768,
                 dec_dropout_rate=0.1),
    "default": dict(num_decoder_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024,
                    dec_dropout_rate=0.2),
    "large": dict(num_decoder_layers=48, num_heads=16, mlp_dim=8192, emb_dim=1536,
                  dec_dropout_rate=0.3),
}


def is_pixel_shuffled(a: ml_collections.ConfigDict) -> bool:
    """The published 512px large GIVT-Causal: latents space-to-depth shuffled by (1, 2)."""
    return a.size == "paper" and a.res == 512 and a.model == "large" and a.style == "ar"


def cnn_vae_model(size: str, res: int = 256, pixel_shuffle: bool = False) -> dict:
    """Keyword arguments of ``CNNVAE`` (nothing else: ``compat.big_vision`` builds from it)."""
    if size == "paper":
        # The MaskGIT tokenizer shape without quantization: 256px -> 16x16x16 (512px ->
        # 32x32x16, or 32x16x32 pixel-shuffled).
        return dict(filters=128, num_res_blocks=2, channel_multipliers=(1, 1, 2, 2, 4),
                    codeword_dim=16, input_size=(res, res), num_groups=32,
                    unit_range_io=True, logvar_clip=(-30.0, 20.0),
                    pixel_shuffle_patch_size=(1, 2) if pixel_shuffle else (1, 1),
                    **model_precision(attention=False))
    # 32px digits -> 8x8x4 latents (a 64-token sequence of 4-d vectors).
    # 16 filters: at 32 the full-resolution convs cost ~1 s/step on 2 CPU cores.
    return dict(filters=16, num_res_blocks=1, channel_multipliers=(1, 2, 2), codeword_dim=4,
                input_size=(32, 32), num_groups=8, unit_range_io=True,
                logvar_clip=(-30.0, 20.0), pixel_shuffle_patch_size=(1, 1),
                **model_precision(attention=False))


def vq_model(size: str, res: int = 256, quantizer: str = "vqgan") -> dict:
    """Keyword arguments of ``CNNVQ``: the CNN VAE's backbone with a codebook."""
    vae = cnn_vae_model(size, res)
    if size == "paper":  # MaskGIT's tokenizer: 1024 x 256; ViT-VQGAN: 8192 in 32 dims
        lookup = {"vqgan": dict(dict_size=1024, codeword_dim=256, factorized_dim=0),
                  "vit_vqgan": dict(dict_size=8192, codeword_dim=256, factorized_dim=32)
                  }[quantizer]
    else:  # digits: 8x8 codes of 128 codewords (448 bits an image)
        lookup = dict(dict_size=128, codeword_dim=16,
                      factorized_dim=0 if quantizer == "vqgan" else 4)
    return dict(vae, **lookup)


def discrete_model(givt: dict, dict_size: int) -> dict:
    """The GIVT ``givt`` over code ids: the same transformer, ``vocab_size`` codewords, no
    Gaussian-mixture keys (the softmax head has none)."""
    gmm = ("out_dim", "num_mixtures", "head_kind", "fix_square_plus", "scale_tol")
    return dict({k: v for k, v in givt.items() if k not in gmm}, vocab_size=dict_size)


def givt_model(size: str, style: str, vae: dict, num_classes: int,
               model: str = "default") -> dict:
    """Keyword arguments of a decoder-only, class-conditional ``GIVT``."""
    grid = vae["input_size"][0] // 2 ** (len(vae["channel_multipliers"]) - 1)
    ph, pw = vae["pixel_shuffle_patch_size"]
    common = dict(num_layers=0, seq_len=grid * grid // (ph * pw),
                  out_dim=vae["codeword_dim"] * ph * pw,
                  num_labels=num_classes, style=style, mask_style="concat",
                  drop_labels_probability=0.1, head_kind="diag", fix_square_plus=True,
                  scale_tol=1e-6, min_masking_rate_training=0.3,
                  mask_schedule_train="cosine", **model_precision())
    if size == "paper":
        shape = dict(GIVT_SIZES[model])
        if style == "masked":
            shape["dec_dropout_rate"] = 0.4
        elif ph * pw > 1:  # the 512px large GIVT-Causal
            shape["dec_dropout_rate"] = 0.1
        return dict(common, **shape, num_mixtures=32 if ph * pw > 1 else 16,
                    **layer_stack(True))
    return dict(common, emb_dim=96, num_heads=4, mlp_dim=384, num_decoder_layers=3,
                num_mixtures=8, dec_dropout_rate=0.1, **layer_stack(False))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, size="tiny", style="ar", res=256, model="default", adaptor=False,
                  tokens="continuous", quantizer="vqgan")
    if a.size not in SIZES:
        raise ConfigError(f"unknown size preset {a.size!r}: one of {SIZES}")
    if a.style not in STYLES:
        raise ConfigError(f"unknown style {a.style!r}: one of {STYLES}")
    if a.res not in RESOLUTIONS:
        raise ConfigError(f"res={a.res}: one of {RESOLUTIONS}")
    if a.tokens not in TOKENS:
        raise ConfigError(f"unknown tokens {a.tokens!r}: one of {TOKENS}")
    if a.quantizer not in QUANTIZERS:
        raise ConfigError(f"unknown quantizer {a.quantizer!r}: one of {QUANTIZERS}")
    vq = a.tokens == "vq"
    if vq and (a.adaptor or a.res != 256 or a.model != "default"):
        raise ConfigError("tokens=vq: the discrete baseline of the 256px default GIVT "
                          "(res=256, model=default, adaptor=False)")
    if a.model not in GIVT_SIZES:
        raise ConfigError(f"unknown model size {a.model!r}: one of {sorted(GIVT_SIZES)}")
    paper = a.size == "paper"
    if not paper and (a.res, a.model, a.adaptor) != (256, "default", False):
        raise ConfigError("res, model and adaptor choose among the published recipes: give "
                          "them with size=paper (tiny is the 32px digits model)")
    masked = a.style == "masked"
    shuffled = is_pixel_shuffled(a)
    c = ml_collections.ConfigDict()
    c.task = "imagenet"
    c.size = a.size
    c.seed = 0
    vae = cnn_vae_model(a.size, a.res, shuffled)
    num_classes = 1000 if paper else 10
    c.data = dict(
        source="tfds:imagenet2012" if paper else "embedded",
        image_size=vae["input_size"][0],
        num_classes=num_classes,
        train_split="train",
        val_split="validation",
        data_dir="",  # TFDS data dir for embedded/tfds sources ("" = TFDS_DATA_DIR or default)
        # Training augmentation (published: an inception crop keeping 80-100% of the area
        # at aspect 1, resized bicubic with antialiasing, and a horizontal flip); off for
        # digits: a flipped digit is another symbol. 1.0 = no crop: the short side resized
        # to image_size and the centre cut, as in evaluation.
        crop_area_min=0.8 if paper else 1.0,
        flip=paper,
        shuffle_buffer=10_000 if paper else 2_000,
        # Keep the loaded examples in memory after the first epoch: the embedded data's few
        # MB; COCO / NYU / ImageNet decoded would need hundreds of GB, so those stream.
        cache=not paper,
        skip_bad=False,  # folder:PATH: skip (and count) unreadable images instead of failing
    )
    c.vae = dict(
        init=init_group(),
        kind="cnn",
        model=vae,
        # KL weight (the KL is summed over all latent dims, the L2 averaged over pixels).
        # (published: 5e-5; 1e-5 for the large GIVT's VAE)
        beta=(1e-5 if a.model == "large" else 5e-5) if paper else 2e-4,
        # EMA of the VAE parameters (0 = off); when on, the EMA weights are what stage 2
        # trains on and what decodes samples.
        ema_decay=0.999 if paper else 0.99,
        perceptual=dict(
            weight=0.1 if paper else 0.0,
            # VGG16 feature weights (Keras' vgg16 *_notop.h5, or an .npz with
            # <layer>/kernel, <layer>/bias): a file the user provides; never downloaded.
            weights="",
        ),
        adversarial=dict(
            weight=0.1 if paper else 0.0,  # generator loss weight (hinge GAN)
            filters=64,                     # PatchGAN width (doubles per layer)
            num_layers=3,
        ),
        train=train_group(a.size, steps=200_000 if paper else 1_500,
                          batch_size=256 if paper else 32, lr=1e-4 if paper else 2e-3,
                          wd=1e-4 if paper else 0.0),
    )
    c.vae.train.optim.b2 = 0.99
    # GIVT-Causal 256: adam b2=0.95, lr 1e-3 cosine with 10% warm-up, wd 1e-4, clip 1,
    # batch 8192 (~500 epochs of ImageNet). GIVT-MaskGIT: dropout 0.4, no weight decay.
    givt = givt_model(a.size, a.style, vae, num_classes, a.model)
    c.givt = dict(
        init=init_group(),
        kind="givt",  # stage 2's kind (a GIVT)
        model=givt,
        posterior="sample",  # stage-2 targets: a sample of q(z|x) ("mean" = its mean)
        input_noise=0.0,     # std of noise on the teacher-forcing inputs (0 = published)
        label_smoothing=0.0,  # of code ids (tokens=vq); a Gaussian mixture has no labels
        init_encoder="",     # decoder-only: no image encoder to initialise
        # invertible adaptor (published: off unless adaptor=True; 512px large: 8 x out_dim
        # bottleneck channels on the (1, 2)-shuffled grid)
        adaptor=adaptor_group(givt["out_dim"], enabled=a.adaptor),
        train=train_group(a.size, steps=78_000 if paper else 1_500,
                          batch_size=8192 if paper else 32, lr=1e-3,
                          wd=(0.0 if masked else 1e-4) if paper else 1e-4),
        sampling=sampling_group(
            temperature=1.0 if masked else 0.9 if shuffled else 0.95,
            # published: 0.4 (causal), 0.9 (512px large causal); MaskGIT 0.1 at 256px (the
            # GIVT README), 0.0 at 512px (the config's masked_generation_config)
            cfg_weight=(((0.1 if a.res == 256 else 0.0) if masked else 0.9 if shuffled
                         else 0.4) if paper else 0.4),
            # MaskGIT choice temperature t_C (published: 35; 140 at 512px)
            choice_temperature=(140.0 if masked and a.res == 512 else 35.0) if paper else 4.0,
            cfg_max_samples=1000 if paper else 128,  # fewer DB-CFG proposals in tiny/base
        ),
    )
    if shuffled:
        c.givt.adaptor.num_channels_bottleneck = 8 * givt["out_dim"]
        c.givt.adaptor.pixel_shuffle_patch_size = (1, 2)
    c.givt.train.optim.warmup_fraction = 0.1
    c.givt.train.optim.grad_clip = 1.0
    if paper:  # big_vision's config.wd: kernels only, times the schedule, not the lr
        c.givt.train.optim.wd_mode = "schedule_scaled"
        c.givt.train.optim.wd_pattern = "/kernel$"
    # Paper: parameters and optimiser state sharded over the devices, as published ("FSDP
    # training by default"); the VAE's recipe (not in big_vision) stays replicated.
    c.givt.train.fsdp = paper
    # Stage 1: recon_mse, FID_recon and FID_random_latents; stage 2: FID, IS and class
    # accuracy of samples with and without guidance. num_examples caps the real images of
    # the split (the FID reference); batch_size is images per model call.
    # digits | fid_inception:PATH (the network published FIDs use: pytorch-fid's weights) |
    # keras_inception:PATH (Keras' InceptionV3: its FIDs are not comparable to published ones)
    extractor = "fid_inception:" if paper else "digits"
    bs = 50 if paper else 500
    c.evals = dict(
        # held-out losses: stage 1's (L2 reconstruction + beta KL), stage 2's NLL per token
        # and per dimension (the published configs' "val" evaluators)
        vae_loss=evaluator("loss", "oracle", batch_size=bs),
        givt_loss=evaluator("loss", "teacher_forced", batch_size=bs),
        oracle=evaluator("generation", "oracle", batch_size=bs, extractor=extractor),
        sampled=evaluator("generation", "sampled", batch_size=bs, extractor=extractor,
                          samples_per_class=50,
                          max_classes=0,       # 0 = all classes
                          grid_per_class=10),  # samples per class in the PNG grids
    )
    if vq:
        discrete_tokens(c, a)
    return c


def discrete_tokens(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
    """tokens=vq in place: the VQ tokenizer as stage 1 (the CNN VAE's backbone, image losses,
    EMA and schedule; the KL's beta replaced by the codebook's losses) and the same GIVT
    over its ids (``givt.kind="discrete"``)."""
    paper = a.size == "paper"
    vq = vq_model(a.size, a.res, a.quantizer)
    c.vae.kind = "vqgan"
    c.vae.model = vq
    del c.vae["beta"]
    c.vae.w_commitment = 0.25  # VQ-VAE / VQGAN / MaskGIT: beta of the commitment loss
    c.vae.w_entropy = 0.1  # MaskGIT's tokenizer: entropy_loss_ratio (0 = off)
    c.vae.entropy_temperature = 0.01
    c.givt.kind = "discrete"
    c.givt.model = discrete_model(c.givt.model.to_dict(), vq["dict_size"])
    if paper:  # the published samplers of the VQ models (MaskGIT; VQGAN's transformer)
        masked = a.style == "masked"
        # MaskGIT trains with label smoothing 0.1; VQGAN's transformer with none
        c.givt.label_smoothing = 0.1 if masked else 0.0
        c.givt.sampling.update(temperature=1.0, cfg_weight=0.0,
                               num_steps=8 if masked else 16,
                               choice_temperature=4.5 if masked else 35.0)
    elif a.style == "masked":
        # digits: chosen by `python -m tasks.imagenet sweep` on the tiny run (docs/RESULTS.md):
        # MaskGIT's t_C 4.5 and 8 steps draw near-copies per class (FID 35.1 on 200
        # samples); t_C 60 and 16 steps 25.2; guidance 0.4 costs diversity (32.7 at t_C 200)
        c.givt.sampling.update(num_steps=16, choice_temperature=60.0, cfg_weight=0.0)
