"""The commands of the imagenet task beyond train and eval: ``sample`` (a labelled grid of
samples, optionally a MaskGIT decoding trajectory), ``complete`` (inpainting, outpainting
and prefix completion of real images), ``sweep`` (FID and class accuracy over
CFG weights x temperatures) and ``probe`` (linear probes of the GIVT's features), and the
matplotlib figures they write. Their arguments are declared in tasks/imagenet.py, which
wires them in (``python -m tasks.imagenet``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np

from evals import probe
from evals.features import extractor_record
from evals.generation_loop import (
    eval_classes,
    eval_images,
    make_extractor,
    reference_features,
    sample_and_score,
)
from uvim_givt.data.images import image_grid
from uvim_givt.errors import (
    UserError,
)
from uvim_givt.sampling import completion
from uvim_givt.sampling.predictor import Predictor, to_uint8
from uvim_givt.sampling.settings import SamplingSettings
from uvim_givt.training.runner import load_run


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers") from None


#: the command's decoding flags -> the sampling setting each one overrides
STYLE_FLAGS = {
    "masked": {"--steps": ("num_steps", "steps"), "--choice-temp": ("choice_temperature",
                                                                    "choice_temp"),
               "--schedule": ("schedule", "schedule")},
    "ar": {"--beam": ("beam_size", "beam"), "--fan": ("fan_size", "fan"),
           "--rand-top-k-temp": ("rand_top_k_temperature", "rand_top_k_temp")},
}


def sampling_from_args(cfg: ml_collections.ConfigDict, args: argparse.Namespace,
                       **values: Any) -> SamplingSettings:
    """The run's sampling settings with the command's flags over them (None = the
    config's), built and checked once; flags of the other GIVT style are ignored, with a
    note."""
    style = cfg.givt.model.style
    other = "ar" if style == "masked" else "masked"
    ignored = [flag for flag, (_, attr) in STYLE_FLAGS[other].items()
               if getattr(args, attr, None) is not None]
    if ignored:
        print(f"note: {', '.join(ignored)} do not apply to a {style!r} GIVT; ignored",
              file=sys.stderr)
    overrides = {key: getattr(args, attr, None) for key, attr in STYLE_FLAGS[style].values()}
    if overrides.get("rand_top_k_temperature") is not None:
        overrides["rand_top_k"] = True
    return SamplingSettings.from_config(cfg, {**overrides, **values})


def _evaluator(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    if name not in cfg.evals or cfg.evals[name].kind != "generation":
        raise UserError(f"--evaluator {name!r}: not a generation evaluator of this run "
                        f"(evals: {sorted(cfg.evals)})")
    return cfg.evals[name]


def run_sample(task: Any, args: argparse.Namespace) -> str:
    run = load_run(args.ckpt, task)
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes {args.classes!r}: expected comma-separated ints") from None
    if not classes or args.num < 1:
        raise UserError("give at least one class (--classes) and --num >= 1")
    if args.unconditional and args.cfg:
        raise UserError("--unconditional drops every label: it takes no --cfg guidance")
    gen = Predictor(run.cfg, run.vae_params, run.givt_params,
                    batch_size=_evaluator(run.cfg, args.evaluator).batch_size)
    names = task.class_names(run.cfg, run.cfg.data.source)
    if max(classes) >= len(names) or min(classes) < 0:
        raise UserError(f"--classes {args.classes!r}: labels are 0..{len(names) - 1}")
    labels = np.repeat(np.array(classes, np.int32), args.num)
    settings = sampling_from_args(run.cfg, args, temperature=args.temp,
                                  cfg_max_samples=args.cfg_proposals,
                                  cfg_weight=0.0 if args.unconditional else args.cfg,
                                  unconditional=args.unconditional or None)
    gen = gen.with_settings(settings)
    print(f"sampling {args.num} image(s) of class(es) {', '.join(map(str, classes))} from "
          f"{args.ckpt} ({run.cfg.givt.model.style} GIVT, step {run.givt_step})")
    z = gen.sample_latents(labels, seed=args.seed)
    images = gen.decode_images(z)
    out = args.out if args.out.lower().endswith(".png") else args.out + ".png"
    rows = ["no label" if args.unconditional else f"{c}: {names[c]}" for c in classes]
    write_labelled_grid(out, images, rows,
                        title=f"{run.cfg.givt.model.style} GIVT, {settings.describe()}")
    npy = os.path.splitext(out)[0] + ".npy"
    np.save(npy, z.reshape(len(classes), args.num, *z.shape[1:]))
    print(f"wrote {out} ({len(classes)} rows x {args.num}) and {npy} (latents "
          f"{[len(classes), args.num, *z.shape[1:]]})")
    if args.trajectory:
        strip = os.path.splitext(out)[0] + "_trajectory.png"
        write_trajectory(gen, strip, np.array(classes, np.int32), rows, args.seed)
        print(f"wrote {strip} (MaskGIT decoding, one column per step)")
    return out


def run_complete(task: Any, args: argparse.Namespace) -> str:
    """Completes the first ``--num`` images of a split: their VAE codes outside
    ``--region`` are kept and stage 2 generates the region given them and the image's
    class (``--samples`` completions each). A row per image: the original, what is given
    (the region greyed), the completions (the generated region outlined)."""
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    rows_grid, cols_grid = completion.code_grid(cfg)
    generated = completion.region_mask(rows_grid, cols_grid, args.region, args.fraction)
    source = args.data or cfg.data.source
    batches = list(eval_images(task, cfg, source, args.split, args.num, args.num))
    if not batches:
        raise UserError(f"split {args.split!r} of {source} has no examples")
    images, labels = batches[0]
    settings = sampling_from_args(cfg, args, temperature=args.temp, cfg_weight=args.cfg)
    gen = Predictor(cfg, run.vae_params, run.givt_params).with_settings(settings)
    style = cfg.givt.model.style
    print(f"completing the {args.region} {args.fraction:g} of {len(images)} {args.split} "
          f"image(s) from {args.ckpt} ({style} GIVT, step {run.givt_step}), "
          f"{args.samples} sample(s) each")
    codes = gen.encode(images)
    originals = to_uint8(images)
    given = gen.decode_images(np.asarray(codes))  # the kept codes' own reconstruction
    done = [gen.decode_images(np.asarray(gen.sample_codes(
        args.seed, k, labels=labels.astype(np.int32), given=codes, keep=~generated)))
        for k in range(args.samples)]
    cells = []
    for i in range(len(images)):
        cells += [originals[i], completion.mark_region(given[i], generated, rows_grid,
                                                       cols_grid, grey=True)]
        cells += [completion.mark_region(d[i], generated, rows_grid, cols_grid)
                  for d in done]
    names = task.class_names(cfg, source)
    out = args.out if args.out.lower().endswith(".png") else args.out + ".png"
    note = "" if style == "masked" or args.region == "bottom" else \
        " (causal: each generated code sees only the codes before it)"
    write_labelled_grid(out, np.stack(cells), [f"{c}: {names[c]}" for c in labels],
                        title=f"{style} GIVT, {args.region} {args.fraction:g} generated, "
                              f"{settings.describe()}{note}",
                        columns=["original", "given"] + [f"sample {k + 1}"
                                                         for k in range(args.samples)])
    print(f"wrote {out} ({len(images)} rows: original, given, {args.samples} completions)")
    return out


def write_labelled_grid(path: str, images: np.ndarray, rows: list[str], title: str = "",
                        columns: list[str] | None = None) -> str:
    """uint8 images [rows * cols, H, W, 3] (row-major) as one PNG with row labels (and
    optional column labels) beside the pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = image_grid(images, len(rows))
    h, w = images.shape[1:3]
    cols = len(images) // len(rows)
    scale = max(1.0, 64 / h)  # small images (32px digits) drawn at least 64 px per cell
    fig_w = (cols * w * scale + 160) / 100
    fig_h = (len(rows) * h * scale + (60 if columns else 40)) / 100
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * h for i in range(len(rows))], rows)
    if columns:
        ax.xaxis.tick_top()
        ax.set_xticks([(j + 0.5) * w for j in range(cols)], columns, fontsize=8)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:  # wrapped to the figure's width (about 5.5 px per character at 9 pt)
        import textwrap
        ax.set_title(textwrap.fill(title, max(30, int(fig_w * 100 / 5.5))), fontsize=9,
                     pad=18 if columns else 6)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path


def write_trajectory(gen: Predictor, path: str, classes: np.ndarray, rows: list[str],
                     seed: int) -> str:
    """MaskGIT decoding of one sample per class, with the predictor's settings, as a strip:
    column s decodes the sequence after step s (still-masked codes at zero, the prior's
    mean)."""
    if gen.cfg.givt.model.style != "masked":
        raise UserError("--trajectory shows MaskGIT decoding steps: this run's GIVT is "
                        f"{gen.cfg.givt.model.style!r} (causal)")
    s = gen.settings
    _, trace = gen.sample_codes(seed, labels=np.asarray(classes, np.int32),
                                return_trace=True)
    steps = np.asarray(trace["inputs"])  # [S, B, L, D]
    num_steps, batch = steps.shape[:2]
    # Row-major strip: each class's row holds its sequence after every step.
    seqs = np.swapaxes(steps, 0, 1).reshape(batch * num_steps, *steps.shape[2:])
    images = gen.decode_images(np.asarray(gen.unadapt(seqs)))
    masked = np.asarray(trace["num_masked"])[:, 0]
    columns = [f"{i + 1}\n{int(m)} masked" for i, m in enumerate(masked)]
    return write_labelled_grid(path, images, rows, columns=columns,
                               title=f"MaskGIT decoding, {num_steps} steps, "
                                     f"{s.schedule} schedule")


def run_sweep(task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--evaluator`` (default ``sampled``) over CFG weights x temperatures."""
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    weights, temps = _floats(args.cfg, "--cfg"), _floats(args.temps, "--temps")
    if not weights or not temps:
        raise UserError("give at least one --cfg weight and one --temps value")
    ev = _evaluator(cfg, args.evaluator)
    per_class = args.num_per_class or int(ev.samples_per_class)
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=ev.batch_size)
    extractor = make_extractor(str(ev.extractor))
    source = args.data or cfg.data.source
    split = args.split or ev.split
    ref = reference_features(task, cfg, extractor, source, split, int(ev.batch_size),
                             args.max_eval or int(ev.num_examples) or None)
    classes = eval_classes(cfg, ev)
    labels = np.repeat(classes, per_class).astype(np.int32)
    rows = []
    print(f"{'temp':>6s} {'cfg w':>6s} {'FID':>8s} {'class acc':>9s}")
    for t in temps:
        for w in weights:
            settings = sampling_from_args(cfg, args, temperature=t, cfg_weight=w)
            m, _ = sample_and_score(gen.with_settings(settings), extractor, ref, labels,
                                    args.seed)
            rows.append({"temperature": t, "cfg_weight": w, **m})
            print(f"{t:6.3g} {w:6.3g} {m['FID']:8.3f} {m.get('class_accuracy', float('nan')):9.3f}",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": run.givt_step, "split": split,
              "data": source, "style": cfg.givt.model.style, "samples_per_class": per_class,
              "num_classes": len(classes), "num_reference": len(ref),
              **extractor_record(extractor, str(ev.extractor)), "results": rows}
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_sweep(rows, os.path.join(args.out, "sweep.png"),
               title=f"{cfg.givt.model.style} GIVT, step {run.givt_step}: {len(classes)} classes "
                     f"x {per_class} samples, FID against {len(ref)} {split} images")
    print(f"wrote {os.path.join(args.out, 'sweep.json')} and "
          f"{os.path.join(args.out, 'sweep.png')}")
    return result


def plot_sweep(rows: list[dict[str, float]], path: str, title: str = "") -> str:
    """One figure: FID and class accuracy against the CFG weight (a line per temperature,
    top row) and against the temperature (a line per CFG weight, bottom row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    metrics = (("FID", 1.0, "FID (lower is better)"),
               ("class_accuracy", 100.0, "class accuracy % (higher is better)"))
    for row, (x_key, line_key, x_label, line_name) in enumerate((
            ("cfg_weight", "temperature", "guidance weight w (DB-CFG)", "t"),
            ("temperature", "cfg_weight", "temperature t", "w"))):
        for line in sorted({r[line_key] for r in rows}):
            mine = sorted((r for r in rows if r[line_key] == line), key=lambda r: r[x_key])
            xs = [r[x_key] for r in mine]
            for col, (metric, scale, _) in enumerate(metrics):
                axes[row, col].plot(xs, [scale * r.get(metric, float("nan")) for r in mine],
                                    "o-", label=f"{line_name}={line:g}")
        for col, (_, _, label) in enumerate(metrics):
            axes[row, col].set(xlabel=x_label, ylabel=label)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=8)
    fig.suptitle(title or "sampling sweep: FID and class accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_probe(task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Linear probes on frozen features (evals.probe): the GIVT's decoder blocks (all, or
    ``--layer``), raw pixels and the VAE's posterior means; fitted on the training split,
    scored on the held-out one."""
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    depth = int(cfg.givt.model.num_decoder_layers)
    layers = probe.check_layers(args.layer or range(1, depth + 1), depth)
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=args.batch_size)
    source = args.data or cfg.data.source
    print(f"linear probes of {args.ckpt} ({cfg.givt.model.style} GIVT, step {run.givt_step}): "
          f"blocks {', '.join(map(str, layers))}, pixels and VAE means; fit on "
          f"{cfg.data.train_split}, score on {cfg.data.val_split}", flush=True)
    feats = {split: probe.split_features(task, gen, source, split, args.batch_size, cap, layers)
             for split, cap in ((cfg.data.train_split, args.max_train),
                                (cfg.data.val_split, args.max_eval))}
    acc = probe.probe_all(feats[cfg.data.train_split], feats[cfg.data.val_split], c=args.c,
                          seed=args.seed)
    print(f"{'features':>10s} {'top-1':>7s}")
    for name, value in acc.items():
        print(f"{name:>10s} {100 * value:6.1f}%")
    out = args.out or os.path.join(args.ckpt, "probe")
    os.makedirs(out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": run.givt_step, "data": source,
              "style": cfg.givt.model.style, "train_split": cfg.data.train_split,
              "eval_split": cfg.data.val_split,
              "num_train": len(feats[cfg.data.train_split].labels),
              "num_eval": len(feats[cfg.data.val_split].labels), "c": args.c,
              "top1": acc}
    with open(os.path.join(out, "probe.json"), "w") as f:
        json.dump(result, f, indent=1)
    png = probe.plot_probe(acc, os.path.join(out, "probe.png"),
                           title=f"linear probe, {cfg.givt.model.style} GIVT "
                                 f"(step {run.givt_step}), {result['num_eval']} held-out images")
    print(f"wrote {os.path.join(out, 'probe.json')} and {png}")
    return result
