"""NYU Depth v2 with UViM + GIVT: stage-1 ViT VAE over binned depth, stage-2
encoder-decoder GIVT from the image.

    python -m tasks.depth train --config configs/depth.py:size=tiny
    size: tiny (embedded 60x80 frames at 64px, CPU minutes) | base | paper (512px, published)
    tokens: continuous (GIVT-UViM, default) | vq (the original UViM's VQ-VAE, stage 1:
      python -m tasks.depth train --stage vae --config configs/depth.py:tokens=vq)
"""

import ml_collections

from configs.common import (
    NYU_TRAIN_EXAMPLES,
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
TINY_GIVT = dict(tiny_steps=3000)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a, c = dense_config("depth", arg)
    paper = a.size == "paper"
    # tiny: 8-dim codewords (the same oracle RMSE as 16, 0.225 m, and codes the small
    # stage 2 predicts better: 0.89 against 0.93 m). base/paper: 16 as published.
    # One label channel: depth binned over [data.min_depth, data.max_depth] m; class 0 =
    # invalid (see tasks/depth.py). 256 bins as published; tiny uses 32 so the 2-core CPU
    # run fits in minutes (the VAE's one-hot input and per-pixel logits scale with it: 0.9
    # vs 5.4 steps/s measured); expectation decoding recovers depth between bin centres.
    channels = {"depth": (0, 32 if a.size == "tiny" else 256)}
    vae = vit_vae_model(a.size, codeword_dim=8 if a.size == "tiny" else 16,
                        label_channels=channels)
    image_size = vae["input_size"][0]
    c.data = dict(
        source="tfds:nyu_depth_v2" if paper else "embedded",
        # The embedded synthetic_depth frames (H, W; NYU's 3:4) and split sizes
        # (0 = its default: 2,000 train / 200 validation).
        embedded_frame_size={"tiny": (60, 80), "base": (120, 160), "paper": (480, 640)}[a.size],
        embedded_num_train=0,
        embedded_num_validation=0,
        data_dir="",  # TFDS data dir for embedded/tfds sources ("" = TFDS_DATA_DIR or default)
        image_size=image_size,
        train_split="train",
        val_split="validation",
        min_depth=0.001,
        max_depth=10.0,
        # Evaluation protocol (tasks/depth.py). Published (big_vision givt_nyu_depth.py /
        # vae_nyu_depth.py, nyu_eval_crop, evaluators nyu_depth), base and paper: the frame
        # is cut to the NYU crop before the prediction, the argmax bin's centre decoded,
        # the map resized to the crop with nearest neighbour, the crop's pixels with
        # min < gt < max scored. The crop (row0, row1, col0, col1) is in pixels of an
        # eval_crop_frame-sized frame, scaled to other sizes (60x80: rows 7:60, cols 5:75);
        # () = whole frames. tiny scores the same pixels but predicts the whole frame,
        # decodes the expectation and resizes bilinearly: on one default run, stage-2 RMSE
        # 0.624 m against 0.794 published (mean of 3 sampling seeds; crop before predicting
        # alone 0.727, since tiny trains on whole frames; argmax alone 0.671; nearest alone
        # 0.627), oracle 0.232 against 0.277. README "Deviations".
        eval_crop=(54, 480, 41, 601),  # big_vision's nyu_eval_crop (426 x 560)
        eval_crop_frame=(480, 640),
        eval_crop_before_predict=a.size != "tiny",  # False: whole frame, crop for scoring
        decode="expectation" if a.size == "tiny" else "argmax",  # bins -> metres
        eval_resize="bilinear" if a.size == "tiny" else "nearest",  # map -> crop / frame
        flip=True,
        # Training crops (inception-style, area fraction in [crop_area_min, 1], resized to
        # the input; 1 = no crop). A crop zooms the scene while its depths stay the same,
        # so it teaches a metric depth inconsistent with the camera. tiny: no crop (stage 2
        # alone on one VAE: RMSE 0.612 m at 1, 0.615 at 0.8, 0.771 at 0.5; dividing the
        # crop's depths by its zoom instead: 0.816). base/paper: inception crops, as published
        # (big_vision's inception_box keeps 5-100% of the area).
        crop_area_min={"tiny": 1.0, "base": 0.5, "paper": 0.05}[a.size],
        shuffle_buffer=50_000 if paper else 2_500,
        # Keep the loaded examples in memory after the first epoch: the embedded data's few
        # MB; COCO / NYU / ImageNet decoded would need hundreds of GB, so those stream.
        cache=a.size == "tiny",
        skip_bad=False,  # folder source: skip (and count) bad frames instead of failing
    )
    c.vae = dense_vae_group(
        vae,
        ignore_zero=("depth",),  # class 0 = invalid depth
        beta=2e-4,
        # tiny: lr 2e-3 reaches a lower loss than 1e-3 (oracle RMSE 0.21 against 0.25 m at
        # 1,500 steps); 1,000 steps at batch 16 keep the oracle at 0.25 m (batch 32: 0.23)
        # in about half the time, which stage 2 needs more.
        # Paper: vae_nyu_depth.py, 200 epochs at batch 1024.
        train=published_vae_train(200, NYU_TRAIN_EXAMPLES) if paper else
        dense_train(a.size, lr=2e-3 if a.size == "tiny" else 1e-3, **TINY_VAE),
    )
    recipe = givt_tiny_recipe(a.size)
    c.givt = dense_givt_group(
        a.size, vae,
        # Paper: givt_nyu_depth.py, 50 epochs at batch 512, 10% warm-up.
        # tiny: 3,000 steps, what the default run's 10 minutes hold with stage 1 at batch
        # 16: with the conv-stem encoder, sampled RMSE 0.476 m (stage 2 alone), against
        # 0.554 at 2,600 steps and 0.621 at 1,500 with the earlier encoder (docs/RESULTS.md).
        train=published_givt_train(50, NYU_TRAIN_EXAMPLES, warmup_fraction=0.1) if paper
        else dense_train(a.size, lr=recipe["lr"], **TINY_GIVT),
        # tiny: input noise 1 (with encoder_skip and 8-dim codes, stage 2 alone: RMSE 0.83 m
        # at 1.0, 0.86 at 0.5, 0.89 at 2.0; without the skip 2 was best; with stage 1 at
        # batch 16 and the earlier stem, 0.554 m at 1.0, 0.571 at 0.5).
        input_noise=recipe["input_noise"],
        # tiny: 4 samples at temperature 1, their bin distributions averaged (an estimate
        # of the posterior-mean depth, what RMSE rewards); on one default run, stage-2 RMSE
        # 0.762 m against 0.788 with one sample at 0.5 (8 or 16 samples: 0.750, but 8 cost
        # 15 s of a run that must stay under 10 minutes).
        # tiny: 4 code samples per image, odd draws on the mirrored frame (on one
        # checkpoint, 4 draws 0.774 -> 0.771 m, 8 draws 0.762 -> 0.755); else one, as published
        sampling=sampling_group(temperature={"tiny": 1.0, "base": 0.5, "paper": 0.9}[a.size],
                                beam_size=2, fan_size=8,
                                num_samples=4 if a.size == "tiny" else 1,
                                test_time_flip=a.size == "tiny"),
    )
    # Stage-1 oracle, stage-2 samples, and the training-set mean depth as a baseline.
    # Paper: as givt_nyu_depth.py / vae_nyu_depth.py: held-out losses on validation every
    # 250 steps, depth metrics every 2,000. tiny/base: each once, after its stage.
    if a.tokens == "vq":
        _original_uvim(c, a.size, channels)
        return c
    c.evals = dense_evaluators(
        "depth", a.size, baseline=True,
        every=dict(vae_loss=250, givt_loss=250, oracle=2000, sampled=2000) if paper else
        None,
        # depth bins' calibration, the depth spread (colours 0..1 m) and interval coverage
        uncertainty=dict(channels=("depth",), value_key="depth", std_scale=1.0))
    return c


def _original_uvim(c: ml_collections.ConfigDict, size: str, channels: dict) -> None:
    """tokens=vq: stage 1 is the original UViM's VQ-VAE (paper: vqvae_nyu_depth.py, 200
    epochs at batch 1024, lr 1e-3, wd 1e-5); its evaluators are the held-out loss every 250
    steps and the depth metrics every 2,000 on validation (and the mean-depth baseline).
    Stage 2 is the VTT (train_nyu_depth_pretrained.py), greedy-decoded."""
    paper = size == "paper"
    vae = vqvae_model(size, channels)
    c.vae = dense_vqvae_group(
        vae, ignore_zero=("depth",),
        train=published_vqvae_train(200, NYU_TRAIN_EXAMPLES, lr=1e-3, wd=1e-5) if paper
        else dense_train(size, lr=2e-3 if size == "tiny" else 1e-3, **TINY_VAE))
    # Stage 2, the VTT: train_nyu_depth_pretrained.py as its get_config() returns it (its
    # default arg is singlehost=True: batch 32, 20 epochs; 4,000 warm-up steps).
    c.givt = dense_vtt_group(
        size, vae,
        published_givt_train(20, NYU_TRAIN_EXAMPLES, warmup_steps=4000, batch_size=32)
        if paper else dense_train(size, lr=1e-3, **TINY_GIVT))
    if paper:
        c.data.shuffle_buffer = 25_000  # the VQ-VAE's (the GIVTs': 50,000)
    # Paper: held-out losses every 250 (VQ-VAE) / 1,000 (VTT) steps, depth metrics every
    # 2,000 on validation.
    c.evals = dense_evaluators(
        "depth", size, baseline=True,
        every=dict(vae_loss=250, oracle=2000, givt_loss=1000, sampled=2000) if paper
        else None, uncertainty=dict(channels=("depth",), value_key="depth", std_scale=1.0),
        discrete=True)
