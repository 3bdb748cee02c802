"""COCO panoptic with UViM + GIVT: stage-1 ViT VAE over (semantics, instances),
stage-2 encoder-decoder GIVT from the image.

    python -m tasks.panoptic train --config configs/panoptic.py:size=tiny
    size: tiny (embedded 64px, CPU minutes) | base | paper (512px, published models)
    tokens: continuous (GIVT-UViM, default) | vq (the original UViM's VQ-VAE, stage 1:
      python -m tasks.panoptic train --stage vae --config configs/panoptic.py:tokens=vq)
"""

import ml_collections

from configs.common import (
    COCO_TRAIN_EXAMPLES,
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

# tiny: each stage's steps (and stage 1's batch), the same for both token kinds so that
# evals.compare compares them at an equal budget; why these values: at c.vae and c.givt.
TINY_VAE = dict(tiny_steps=1000, tiny_batch=16)
TINY_GIVT = dict(tiny_steps=3400)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a, c = dense_config("panoptic", arg)
    paper = a.size == "paper"
    tiny = a.size == "tiny"
    # tiny: 16-dim codewords, beta 1e-4 and lr 5e-3 (see c.vae): stage-1 oracle PQ 80.5
    # against 75.6 with 8 / 2.5e-4 / 3e-3, and stage 2 still learns the codes (default run:
    # PQ 41.7, was 40.4). The limit was things in the samples: stage 2's image encoder,
    # learnt from scratch, could not tell the small shapes apart; the conv-stem encoder
    # (givt_encdec_model) closed most of it (docs/RESULTS.md, the weak point).
    # Label channels: semantics = category index + 1 (0 = void): 133 classes + void in the
    # paper, 10 + void embedded; instance ids 0..99 in the paper, tiny: up to 6 things.
    channels = {"semantics": (0, 134 if paper else 11), "instances": (1, 100 if paper else 8)}
    vae = vit_vae_model(a.size, codeword_dim=32 if paper else 16 if tiny else 8,
                        label_channels=channels)
    image_size = vae["input_size"][0]
    c.data = dict(
        source="embedded" if not paper else "tfds:coco/2017_panoptic",
        image_size=image_size,
        # Paper: the first 4,096 training images are held out (losses, held-out PQ).
        train_split="train[4096:]" if paper else "train",
        val_split="validation",
        data_dir="",  # TFDS data dir for embedded/tfds sources ("" = TFDS_DATA_DIR or default)
        flip=True,
        # Inception-style crops: big_vision's inception_box keeps 5-100% of the area.
        crop_area_min=0.05 if paper else 0.5,
        shuffle_buffer=50_000 if paper else 2_500,
        # Keep the loaded examples in memory after the first epoch: the embedded data's few
        # MB; COCO / NYU / ImageNet decoded would need hundreds of GB, so those stream.
        cache=a.size == "tiny",
        # Label coding. "published" (big_vision): every segment, stuff and crowd too, gets an
        # instance id; decoding votes one class per instance. "things": ids for non-crowd
        # things only, crowd void, per-pixel decoding; tiny keeps it as it measured better
        # on the embedded data (README Deviations): stage 2 PQ 41.2 against 36.4.
        panoptic_encoding="things" if tiny else "published",
        # Decoding: instances (segments for "things") covering at most this fraction of the
        # decoded map's pixels become void. Published: 0, keep all (their configs leave
        # the `min_fraction: 0.03 ** 2` option commented out). tiny: 0.03 ** 2 of 64 x 64,
        # i.e. segments of up to 3 pixels, its measured setting.
        min_area_fraction=0.03 ** 2 if tiny else 0.0,
        # Size of the embedded dataset (0 = its default: 2,000 train / 200 validation).
        embedded_num_train=0,
        embedded_num_validation=0,
        skip_bad=False,  # folder source: skip (and count) bad examples instead of failing
    )
    c.vae = dense_vae_group(
        vae,
        ignore_zero=(),
        beta=1e-4 if tiny else 2.5e-4,
        # Paper: vae_coco_panoptic.py, 500 epochs of train[4096:] at batch 1024.
        # tiny: 1,000 steps at batch 16: oracle PQ 78.5 in half the time of batch 32 (79.3;
        # 600 steps of batch 32: 76.0), the time given to stage 2, which needs it more.
        train=published_vae_train(500, COCO_TRAIN_EXAMPLES) if paper else
        dense_train(a.size, lr=5e-3 if tiny else 3e-3, **TINY_VAE),
    )
    # tiny: input noise 0.5 (samples PQ 44.5, things 11.6, against 43.7 / 10.6 at 1.0 with
    # 2,000 steps; docs/RESULTS.md, the weak point)
    recipe = givt_tiny_recipe(a.size, input_noise=0.5)
    # Paper: encoder learning rate x0.1, as published (the encoder starts from a pretrained
    # ViT there). tiny/base train the encoder from scratch at the full learning rate.
    c.givt = dense_givt_group(
        a.size, vae,
        # tiny: 3,400 steps, what the default run's 10 minutes on 2 cores hold with stage 1
        # at batch 16 and the conv-stem encoder: samples PQ 54.1 (things 27.7) against 51.7
        # (23.6) at 3,000 steps; stage 2 is bound by the examples it sees (docs/RESULTS.md).
        # Paper: givt_coco_panoptic.py, 200 epochs at batch 512, 4,000 warm-up steps.
        train=published_givt_train(200, COCO_TRAIN_EXAMPLES, warmup_steps=4000) if paper
        else dense_train(a.size, lr=recipe["lr"], **TINY_GIVT),
        input_noise=recipe["input_noise"],
        # beam search 4 x fan 8 as published (beam 2 in tiny/base); test-time flip does not
        # apply: panoptic instance ids do not mirror
        sampling=sampling_group(temperature=0.85 if paper else 0.5,
                                beam_size=4 if paper else 2, fan_size=8),
    )
    # Paper: as givt_coco_panoptic.py / vae_coco_panoptic.py: held-out losses on train[:4096]
    # (every 250 / 1,000 steps), PQ on validation, on the held-out images and on train[4096:
    # 8192] (every 5,000 / 10,000 steps). tiny/base: each once, after its stage (periodic
    # evaluations would push the default run past 10 minutes on 2 cores).
    if a.tokens == "vq":
        _original_uvim(c, a.size, channels)
        return c
    c.evals = dense_evaluators(
        "panoptic", a.size, heldout_split="train[:4096]" if paper else "validation",
        every=dict(vae_loss=250, givt_loss=1000, oracle=5000, sampled=10_000) if paper else
        None,
        extra_splits=dict(holdout="train[:4096]", train="train[4096:8192]") if paper else None,
        uncertainty=dict(channels=("semantics",)))  # class entropy and its calibration
    return c


def _original_uvim(c: ml_collections.ConfigDict, size: str, channels: dict) -> None:
    """tokens=vq: stage 1 is the original UViM's VQ-VAE (paper: vqvae_coco_panoptic.py,
    1,000 epochs of train[4096:] at batch 1024, lr 4e-4, wd 4e-5); its evaluators are the
    held-out loss on train[:4096] every 250 steps and PQ every 10,000 steps on validation,
    train[:4096] and train[4096:8192]. Stage 2 is the VTT (train_coco_panoptic_pretrained.py),
    greedy-decoded."""
    paper = size == "paper"
    vae = vqvae_model(size, channels)
    c.vae = dense_vqvae_group(
        vae, ignore_zero=(),
        train=published_vqvae_train(1000, COCO_TRAIN_EXAMPLES, lr=4e-4, wd=4e-5) if paper
        else dense_train(size, lr=5e-3 if size == "tiny" else 3e-3, **TINY_VAE))
    # Stage 2, the VTT: train_coco_panoptic_pretrained.py, 200 epochs at batch 512. tiny:
    # the GIVT preset's steps in both stages (an equal budget for evals.compare).
    c.givt = dense_vtt_group(
        size, vae,
        published_givt_train(200, COCO_TRAIN_EXAMPLES, warmup_steps=4000) if paper else
        dense_train(size, lr=1e-3, **TINY_GIVT))
    if paper:
        c.data.shuffle_buffer = 25_000  # the VQ-VAE's (the GIVTs': 50,000)
    # Paper: the VQ-VAE's held-out loss every 250 steps and PQ every 10,000; the VTT's
    # held-out loss every 1,000 steps on train[:4096] and PQ every 10,000 on validation, the
    # held-out and the train[4096:8192] images.
    c.evals = dense_evaluators(
        "panoptic", size, heldout_split="train[:4096]" if paper else "validation",
        every=dict(vae_loss=250, oracle=10_000, givt_loss=1000, sampled=10_000) if paper
        else None,
        extra_splits=dict(holdout="train[:4096]", train="train[4096:8192]") if paper else None,
        uncertainty=dict(channels=("semantics",)), discrete=True)
