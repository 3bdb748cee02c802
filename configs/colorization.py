"""Colorization with UViM: stage 1 a label VAE over the colours (one 3-value channel), stage 2
a transformer from the grayscale image.

    python -m tasks.colorization train --config configs/colorization.py:size=tiny
    size: tiny (embedded 60x80 colour frames at 64px, CPU minutes) | base | paper (512px)
    tokens: continuous (GIVT-UViM, default) | vq (the original UViM: VQ-VAE + VTT;
      size=paper,tokens=vq is vqvae_imagenet2012_colorization.py and
      train_imagenet2012_colorization_pretrained.py)

No GIVT colorization was published: tokens=continuous at paper size takes the GIVT-UViM NYU
depth recipe's models and optimisers (16-dim codes) with the VQ-VAE's data and epochs (README
"Deviations").
"""

import ml_collections

from configs.common import (
    dense_config,
    dense_evaluators,
    dense_givt_group,
    dense_train,
    dense_vae_group,
    dense_vqvae_group,
    dense_vtt_group,
    givt_tiny_recipe,
    published_givt_train,
    published_vae_train,
    published_vqvae_train,
    sampling_group,
    vit_vae_model,
    vqvae_model,
)

# train[4096:] of ImageNet 2012 (1,281,167 images; the first 4,096 are held out)
IMAGENET_TRAIN_EXAMPLES = 1_281_167 - 4_096
VALUES = {"color": (0, 3)}  # RGB in [-1, 1], the label VAE's one value channel
# tiny: each stage's steps, the same for both token kinds (evals.compare's equal budget).
TINY_VAE = dict(tiny_steps=800)
TINY_GIVT = dict(tiny_steps=1000)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a, c = dense_config("colorization", arg)
    paper = a.size == "paper"
    c.data = dict(
        source="tfds:imagenet2012" if paper else "embedded",
        # The embedded frames (synthetic_depth's colour images; H, W) and split sizes
        # (0 = its default: 2,000 train / 200 validation).
        embedded_frame_size={"tiny": (60, 80), "base": (120, 160), "paper": (480, 640)}[a.size],
        embedded_num_train=0,
        embedded_num_validation=0,
        data_dir="",  # TFDS data dir for embedded/tfds sources ("" = TFDS_DATA_DIR or default)
        image_size={"tiny": 64, "base": 128, "paper": 512}[a.size],
        # Published: train[4096:] for training, train[:4096] held out for the losses, the
        # colorization metric on validation.
        train_split="train[4096:]" if paper else "train",
        val_split="validation",
        flip=True,
        # decode_jpeg_and_inception_crop (big_vision's inception crop keeps 5-100% of the
        # area); tiny: whole frames.
        crop_area_min=0.05 if paper else 1.0,
        shuffle_buffer=25_000 if paper else 2_500,
        cache=a.size == "tiny",
        skip_bad=False,
    )
    if a.tokens == "vq":
        _original_uvim(c, a.size)
        return c
    vae = vit_vae_model(a.size, codeword_dim=8 if a.size == "tiny" else 16, label_channels={})
    vae["value_channels"] = VALUES
    c.vae = dense_vae_group(
        vae, ignore_zero=(),
        # The squared error of [-1, 1] colours is ~100x smaller than a cross-entropy, so the
        # KL weight is too (a depth-sized beta collapses the posterior).
        beta=2e-6,
        train=published_vae_train(20, IMAGENET_TRAIN_EXAMPLES) if paper else
        dense_train(a.size, lr=2e-3 if a.size == "tiny" else 1e-3, **TINY_VAE))
    recipe = givt_tiny_recipe(a.size)
    c.givt = dense_givt_group(
        a.size, vae,
        train=published_givt_train(50, IMAGENET_TRAIN_EXAMPLES, warmup_steps=4000) if paper
        else dense_train(a.size, lr=recipe["lr"], **TINY_GIVT),
        input_noise=recipe["input_noise"],
        sampling=sampling_group(temperature={"tiny": 1.0, "base": 0.5, "paper": 0.9}[a.size],
                                beam_size=2, fan_size=8))
    c.evals = _evaluators(a.size, discrete=False)
    return c


def _original_uvim(c: ml_collections.ConfigDict, size: str) -> None:
    """tokens=vq: vqvae_imagenet2012_colorization.py as its get_config() returns it (its
    default arg is singlehost=True: batch 128, 20 epochs; lr 4e-4, wd 4e-5) and
    train_imagenet2012_colorization_pretrained.py (batch 512, 50 epochs)."""
    paper = size == "paper"
    vae = vqvae_model(size, {})
    vae["value_channels"] = VALUES
    c.vae = dense_vqvae_group(
        vae, ignore_zero=(),
        train=published_vqvae_train(20, IMAGENET_TRAIN_EXAMPLES, lr=4e-4, wd=4e-5,
                                    batch_size=128) if paper
        else dense_train(size, lr=2e-3 if size == "tiny" else 1e-3, **TINY_VAE))
    c.givt = dense_vtt_group(
        size, vae,
        published_givt_train(50, IMAGENET_TRAIN_EXAMPLES, warmup_steps=4000) if paper
        else dense_train(size, lr=1e-3, **TINY_GIVT))
    c.evals = _evaluators(size, discrete=True)


def _evaluators(size: str, discrete: bool) -> dict:
    """Held-out losses on train[:4096] (published; tiny/base: validation) and PSNR (FID with
    an extractor) on validation: paper every 250 / 1,000 (stage 1 / 2) and 2,500 steps, as
    published; the per-pixel uncertainty maps are the dense tasks' with class or depth
    outputs, not declared here."""
    paper = size == "paper"
    evals = dense_evaluators(
        "colorization", size, heldout_split="train[:4096]" if paper else "validation",
        every=dict(vae_loss=250, givt_loss=1000, oracle=2500, sampled=2500) if paper
        else None, discrete=discrete)
    evals.pop("uncertainty", None)
    # FID, the published metric (ColTran's protocol), when a feature extractor is named:
    # --set evals.sampled.extractor=fid_inception:PATH (no weights are downloaded).
    for name in ("oracle", "sampled", "teacher_forced"):
        evals[name]["extractor"] = ""
    return evals
