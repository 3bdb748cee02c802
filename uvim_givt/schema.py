"""What each config key may hold: its range or its choices, checked before a run starts.

``config.set_value`` already refuses a value of the wrong type; these rules refuse a value of
the right type that cannot work (``total_steps=-5``, ``posterior='sampel'``), before anything
is written. A rule is matched to a key by a regular expression over the dotted key
(``re.fullmatch``; the first that matches wins). The library's rules cover the keys the
library reads (``vae``, ``givt``, the ``train`` groups, the generic ``data`` keys); a task
adds the rules of its own keys (``Task.config_rules``), the evaluators theirs
(``Evaluators.config_rules``). Every key of every preset has a rule (a test holds this), so a
new key comes with its range.

Defaults stay in the configs; only ranges and choices live here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from uvim_givt.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
    """A key's allowed values; ``out_of_range`` is a value of the right type that the rule
    refuses (for tests), or None when every value of the type is allowed."""

    def check(self, key: str, value: Any) -> str | None:  # the problem, or None
        return None

    @property
    def out_of_range(self) -> Any:
        return None


@dataclasses.dataclass(frozen=True)
class Num(Rule):
    """A number in [lo, hi] (open ends with ``lo_open``/``hi_open``); None if ``optional``."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def check(self, key: str, value: Any) -> str | None:
        if value is None:
            return None if self.optional else f"{key}=None: a number is required"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key}={value!r}: a number is required"
        if not math.isfinite(value):
            return f"{key}={value!r}: must be finite"
        low = value > self.lo if self.lo_open else value >= self.lo
        high = value < self.hi if self.hi_open else value <= self.hi
        if low and high:
            return None
        lo = f"{'(' if self.lo_open else '['}{_num(self.lo)}"
        hi = f"{_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.hi == math.inf:
            return f"{key}={value!r}: must be {'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{key}={value!r}: must be in {lo}, {hi}"

    @property
    def out_of_range(self) -> Any:
        return self.lo - 1 if self.lo > -math.inf else self.hi + 1


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
    choices: tuple[Any, ...] = ()

    def check(self, key: str, value: Any) -> str | None:
        if value in self.choices:
            return None
        return f"{key}={value!r}: one of {self.choices}"

    @property
    def out_of_range(self) -> Any:
        return "bogus" if isinstance(self.choices[0], str) else -12345


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """Free text; ``pattern`` (a regex the whole value must match) when it has a form."""

    pattern: str = ""
    what: str = ""
    bad: str | None = None  # a value the pattern refuses

    def check(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{key}={value!r}: text is required"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"{key}={value!r}: expected {self.what or self.pattern}"
        return None

    @property
    def out_of_range(self) -> Any:
        return self.bad


@dataclasses.dataclass(frozen=True)
class Regex(Rule):
    """A regular expression (e.g. a parameter-name pattern)."""

    def check(self, key: str, value: Any) -> str | None:
        try:
            re.compile(value)
        except (re.error, TypeError) as e:
            return f"{key}={value!r}: not a regular expression ({e})"
        return None

    @property
    def out_of_range(self) -> Any:
        return "(unclosed"


@dataclasses.dataclass(frozen=True)
class Regexes(Rule):
    """A sequence of regular expressions (e.g. parameter-name patterns)."""

    def check(self, key: str, value: Any) -> str | None:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return f"{key}={value!r}: a sequence of regular expressions is required"
        for i, v in enumerate(value):
            problem = Regex().check(f"{key}[{i}]", v)
            if problem:
                return problem
        return None

    @property
    def out_of_range(self) -> Any:
        return ("(unclosed",)


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
    def check(self, key: str, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"{key}={value!r}: True or False"


@dataclasses.dataclass(frozen=True)
class Nums(Rule):
    """A sequence of numbers, each checked by ``each``; ``length`` fixes its length."""

    each: Num = Num()
    length: int | None = None
    increasing: bool = False
    or_empty: bool = False  # () also allowed (e.g. "no crop")

    def check(self, key: str, value: Any) -> str | None:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return f"{key}={value!r}: a sequence of numbers is required"
        if self.or_empty and len(value) == 0:
            return None
        if self.length is not None and len(value) != self.length:
            return (f"{key}={value!r}: {self.length} numbers are required"
                    + (" (or none)" if self.or_empty else ""))
        for i, v in enumerate(value):
            problem = self.each.check(f"{key}[{i}]", v)
            if problem:
                return problem
        if self.increasing and any(b <= a for a, b in zip(value, value[1:], strict=False)):
            return f"{key}={value!r}: must be increasing"
        return None

    @property
    def out_of_range(self) -> Any:
        if self.increasing:
            return (1.0, 0.0)
        return tuple([self.each.out_of_range] * (self.length or 1))


@dataclasses.dataclass(frozen=True)
class Pairs(Rule):
    """A list of (regex, multiplier >= 0) pairs, e.g. ``optim.lr_mults``."""

    def check(self, key: str, value: Any) -> str | None:
        for i, item in enumerate(value or ()):
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
                return f"{key}[{i}]={item!r}: a (regex, multiplier) pair is required"
            problem = Regex().check(f"{key}[{i}][0]", item[0]) or \
                Num(lo=0.0).check(f"{key}[{i}][1]", item[1])
            if problem:
                return problem
        return None

    @property
    def out_of_range(self) -> Any:
        return [("kernel", -1.0)]


@dataclasses.dataclass(frozen=True)
class Names(Rule):
    """A sequence of names out of ``choices`` (or any names if none are given)."""

    choices: tuple[str, ...] = ()

    def check(self, key: str, value: Any) -> str | None:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return f"{key}={value!r}: a sequence of names is required"
        for v in value:
            if not isinstance(v, str) or (self.choices and v not in self.choices):
                return f"{key}: {v!r} is not one of {self.choices or 'the names'}"
        return None

    @property
    def out_of_range(self) -> Any:
        return ("bogus",) if self.choices else None


def _num(x: float) -> str:
    return f"{x:g}"


POSITIVE_INT = Num(lo=1)
COUNT = Num(lo=0)  # 0 = "none" or "all", as each key's comment says
PROBABILITY = Num(0.0, 1.0)
FRACTION_BELOW_1 = Num(0.0, 1.0, hi_open=True)
POSITIVE = Num(lo=0.0, lo_open=True)
NON_NEGATIVE = Num(lo=0.0)
ANY_NUMBER = Num()
SIZE_2 = Nums(Num(lo=1), length=2)

Rules = Sequence[tuple[str, Rule]]

# The library's keys. ``*`` groups: vae.train / givt.train, evals.<name>.
LIBRARY_RULES: Rules = (
    # -- top level
    (r"task", Text(r"[a-z_][a-z0-9_]*", "a task name", bad="Panoptic!")),
    (r"size", Text(r"\w+", "a preset name", bad="")),
    (r"seed", COUNT),
    # -- data (the generic keys; a task adds its own)
    (r"data\.source", Text(r"embedded|(tfds|folder):.+", "embedded, tfds:NAME or folder:PATH",
                           bad="tfds")),
    (r"data\.(train|val)_split", Text(r".+", "a split name", bad="")),
    (r"data\.data_dir", Text()),
    (r"data\.image_size", POSITIVE_INT),
    (r"data\.(flip|skip_bad)", Flag()),
    (r"data\.shuffle_buffer", COUNT),
    (r"data\.crop_area_min", Num(0.0, 1.0, lo_open=True)),
    (r"data\.embedded_num_(train|validation)", COUNT),
    # -- training groups
    (r"(vae|givt)\.train\.(total_steps|batch_size|log_every|ckpt_every|keep_ckpts)",
     POSITIVE_INT),
    (r"(vae|givt)\.train\.(fsdp|progress|cached_codes)", Flag()),
    # micro-batches per step (training.trainer); batch_size must be a multiple (below)
    (r"(vae|givt)\.train\.grad_accum", POSITIVE_INT),
    (r"(vae|givt)\.train\.seed", COUNT),
    (r"(vae|givt)\.train\.optim\.optimizer", OneOf(("adam", "adafactor",
                                                    "big_vision_adafactor"))),
    (r"(vae|givt)\.train\.optim\.schedule", OneOf(("cosine", "linear", "constant"))),
    (r"(vae|givt)\.train\.optim\.wd_mode", OneOf(("lr_scaled", "schedule_scaled"))),
    (r"(vae|givt)\.train\.optim\.lr", POSITIVE),
    (r"(vae|givt)\.train\.optim\.(b1|b2)", FRACTION_BELOW_1),
    (r"(vae|givt)\.train\.optim\.eps", NON_NEGATIVE),
    (r"(vae|givt)\.train\.optim\.(wd|grad_clip)", NON_NEGATIVE),
    (r"(vae|givt)\.train\.optim\.warmup_fraction", FRACTION_BELOW_1),
    (r"(vae|givt)\.train\.optim\.warmup_steps", COUNT),
    (r"(vae|givt)\.train\.optim\.wd_pattern", Regex()),
    (r"(vae|givt)\.train\.optim\.lr_mults", Pairs()),
    (r"(vae|givt)\.train\.optim\.big_vision_adafactor\.(decay_rate|momentum|beta2_cap)",
     PROBABILITY),
    (r"(vae|givt)\.train\.optim\.big_vision_adafactor\.(eps|clipping_threshold)",
     NON_NEGATIVE),
    (r"(vae|givt)\.train\.optim\.big_vision_adafactor\.(decay_offset|min_dim_size_to_factor)",
     COUNT),
    (r"(vae|givt)\.train\.optim\.big_vision_adafactor\.momentum_dtype",
     OneOf(("bfloat16", "float32"))),
    # -- where a stage starts from (fine-tuning)
    (r"(vae|givt)\.init\.path", Text()),
    (r"(vae|givt)\.init\.dont_load", Regexes()),
    # -- stage 1
    # a stage-1 kind registered in uvim_givt/training/stages.py (unknown names are refused
    # there, before a run starts, with the registered ones)
    (r"vae\.kind", Text(r"[a-z][a-z0-9_]*", "a registered stage-1 kind (vit, cnn, ...)",
                        bad="ViT!")),
    (r"vae\.beta", NON_NEGATIVE),
    (r"vae\.ema_decay", FRACTION_BELOW_1),
    (r"vae\.ignore_zero", Names()),
    (r"vae\.model\.(input_size|patch_size)", SIZE_2),
    (r"vae\.model\.(width|depth|decoder_depth|mlp_dim|num_heads|code_len|codeword_dim"
     r"|filters|num_groups|num_res_blocks)", POSITIVE_INT),
    (r"vae\.model\.channel_multipliers", Nums(POSITIVE_INT)),
    (r"vae\.model\.logvar_clip", Nums(ANY_NUMBER, length=2, increasing=True)),
    (r"vae\.model\.dropout", FRACTION_BELOW_1),
    (r"vae\.model\.code_dropout", OneOf(("none", "seq", "random"))),
    (r"vae\.model\.(scan|unit_range_io)", Flag()),
    # the VQ-VAE (vae.kind "vqvae"): its dictionary and the image context
    (r"vae\.model\.dict_size", Num(lo=2)),
    (r"vae\.model\.dict_momentum", FRACTION_BELOW_1),
    (r"vae\.model\.min_count", NON_NEGATIVE),
    (r"vae\.model\.(with_encoder_ctx|with_decoder_ctx|bottleneck_resize)", Flag()),
    (r"vae\.w_commitment", NON_NEGATIVE),
    (r"vae\.freeze_dict", Flag()),
    # the VQ tokenizer over images (vae.kind "vqgan"): ViT-VQGAN's factorised lookup
    # (0 = off) and MaskGIT's codebook entropy loss
    (r"vae\.model\.factorized_dim", COUNT),
    (r"vae\.w_entropy", NON_NEGATIVE),
    (r"vae\.entropy_temperature", POSITIVE),
    # (first channel index, number of classes >= 2)
    (r"vae\.model\.label_channels\.\w+", Nums(COUNT, length=2)),
    # (first channel index, number of real values)
    (r"vae\.model\.value_channels\.\w+", Nums(COUNT, length=2)),
    (r"vae\.(perceptual|adversarial)\.weight", NON_NEGATIVE),
    (r"vae\.perceptual\.weights", Text()),
    (r"vae\.adversarial\.(filters|num_layers)", POSITIVE_INT),
    # -- stage 2
    (r"givt\.posterior", OneOf(("sample", "mean"))),
    (r"givt\.input_noise", NON_NEGATIVE),
    (r"givt\.label_smoothing", FRACTION_BELOW_1),
    (r"givt\.init_encoder", Text(r"|none|.*\.npz|howto-i21k-[BL]/16",
                                 "empty, none, a .npz file or a published ViT's name "
                                 "(howto-i21k-L/16)", bad="weights.txt")),
    (r"givt\.kind", OneOf(("givt", "vtt", "discrete"))),
    (r"givt\.model\.style", OneOf(("ar", "masked"))),
    (r"givt\.model\.head_kind", OneOf(("per_channel", "diag", "full"))),
    (r"givt\.model\.mask_style", OneOf(("concat", "replace"))),
    (r"givt\.model\.num_labels", Num(lo=1, optional=True)),
    (r"givt\.model\.(emb_dim|num_heads|mlp_dim|num_decoder_layers|num_mixtures|out_dim"
     r"|seq_len)", POSITIVE_INT),
    (r"givt\.model\.num_layers", COUNT),  # 0: decoder-only
    (r"givt\.model\.(input_size|patches)", SIZE_2),
    # the VTT's (givt.kind "vtt") and the discrete GIVT's (givt.kind "discrete": the
    # dictionary's size); the VTT's emb_dim, num_heads, mlp_dim, num_layers, seq_len,
    # input_size and patches are covered by the GIVT rules above
    (r"givt\.model\.vocab_size", Num(lo=2)),
    (r"givt\.model\.dropout_rate", PROBABILITY),
    (r"givt\.model\.posemb_type", OneOf(("learn",))),
    (r"givt\.model\.zero_decoder_seq", Flag()),
    (r"givt\.model\.(stem|stem_strides)", Nums(POSITIVE_INT)),
    (r"givt\.model\.(enc_dropout_rate|dec_dropout_rate|drop_labels_probability)",
     FRACTION_BELOW_1),
    (r"givt\.model\.min_masking_rate_training", PROBABILITY),
    (r"givt\.model\.scale_tol", NON_NEGATIVE),
    (r"givt\.model\.(fix_square_plus|scan|encoder_skip)", Flag()),
    # compute dtype (params, losses, GMM head: float32) and attention implementation
    (r"(vae|givt)\.model\.dtype", OneOf(("float32", "bfloat16"))),
    (r"(vae|givt)\.model\.attention", OneOf(("fused", "reference"))),
    # what a scanned layer stack saves for the backward pass (models.common.REMAT_POLICIES;
    # written out so that checking a config loads no JAX)
    (r"(vae|givt)\.model\.remat_policy", OneOf((
        "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
        "everything_saveable"))),
    (r"givt\.sampling\.(temperature|temperature_probs|choice_temperature)", POSITIVE),
    (r"givt\.sampling\.(beam_size|fan_size|num_steps|num_samples)", POSITIVE_INT),
    (r"givt\.sampling\.cfg_weight", NON_NEGATIVE),
    (r"givt\.sampling\.(test_time_flip|rand_top_k|unconditional)", Flag()),
    (r"givt\.sampling\.rand_top_k_temperature", POSITIVE),
    (r"givt\.sampling\.cfg_max_samples", POSITIVE_INT),
    (r"data\.cache", Flag()),
    (r"givt\.(sampling\.schedule|model\.mask_schedule_train)",
     Text(r"cosine|linear|pow:(\d*[1-9]\d*(\.\d*)?|\d*\.\d*[1-9]\d*)",
          "cosine, linear or pow:K with K > 0", bad="pow:0")),
    # the invertible adaptor (models/adaptor.py); builders.build_adaptor checks that the
    # channels split and group-normalise and that the grid fits givt.model.seq_len
    (r"givt\.adaptor\.enabled", Flag()),
    (r"givt\.adaptor\.(num_blocks|num_channels_bottleneck)", POSITIVE_INT),
    (r"(givt\.adaptor|vae\.model)\.pixel_shuffle_patch_size", SIZE_2),
)


def rules_of(*owners: object) -> Rules:
    """The library's rules plus the ``config_rules`` of each owner (a task, the evaluator
    machinery; None and owners without rules add nothing)."""
    return (*LIBRARY_RULES, *(r for o in owners for r in getattr(o, "config_rules", ())))


def rule_for(key: str, rules: Rules) -> Rule | None:
    for pattern, rule in rules:
        if re.fullmatch(pattern, key):
            return rule
    return None


def leaves(cfg: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config."""
    for k, v in cfg.items():
        if isinstance(v, Mapping | ml_collections.ConfigDict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check(cfg: ml_collections.ConfigDict, rules: Rules, require_all: bool = False) -> None:
    """Raises one :class:`ConfigError` listing every key whose value its rule refuses (and,
    with ``require_all``, every key without a rule)."""
    problems, unruled = [], []
    for key, value in leaves(cfg):
        rule = rule_for(key, rules)
        if rule is None:
            unruled.append(key)
            continue
        problem = rule.check(key, value)
        if problem:
            problems.append(problem)
    if require_all and unruled:
        problems.append(f"keys without a rule (uvim_givt/schema.py): {', '.join(unruled)}")
    if problems:
        raise ConfigError("; ".join(problems))
