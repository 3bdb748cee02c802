"""An eval record's fields as the leaderboard reads them, and what a task's metrics mean.

The leaderboard knows no task: the order of a task's metrics, the one its rows are
ranked by, its direction, units and published values come from the records' own
``metric_meta`` (filled by the evaluators from the task's declared metadata)::

    "metric_meta": {"family": "panoptic", "order": ["PQ", "SQ", ...], "primary": "PQ",
                    "higher_is_better": true, "units": {"PQ": "%"},
                    "references": [{"model": "...", "data": "...", "metric": "PQ",
                                    "value": 40.2, "prediction": "sampled"}]}

Per task and evaluator kind the newest record that has it counts (:func:`task_meta`).
Records without it (older runs) still show: metrics alphabetically, no ranking, no
published values. Counters (:func:`is_counter`) are never metrics, whatever the task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

# Counts and bookkeeping that evaluators and the trainer log beside their metrics: shown
# as counts (the "data" column), never as metrics. Besides these names, any name whose
# last part starts with "num_" or ends in "_count" is a counter (see is_counter).
COUNTER_NAMES = frozenset({
    "num_images", "num_examples", "num_samples", "num_reference", "num_classes", "step",
    "steps", "time", "epoch", "steps_per_s", "examples_per_s", "sampling_seconds",
    "train_time_s", "num_images_without_valid_pixels",
})
LOSS_KIND = "loss"  # the kind of held-out loss records (stage-1 loss, stage-2 NLL and loss)


def is_counter(name: str) -> bool:
    """A count or bookkeeping value (``num_images``, ``eval/oracle/num_images``, ``time``)."""
    last = name.rsplit("/", 1)[-1]
    return (name in COUNTER_NAMES or last in COUNTER_NAMES or last.startswith("num_")
            or last.endswith("_count"))


def is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def metric_items(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numeric metrics, counters left out."""
    return {k: float(v) for k, v in (record.get("metrics") or {}).items()
            if is_finite_number(v) and not is_counter(k)}


def evaluator_of(record: dict[str, Any]) -> str:
    """The evaluator that wrote a record (older records name it ``tag``)."""
    return str(record.get("evaluator") or record.get("tag") or "")


def kind_of(record: dict[str, Any]) -> str:
    """The evaluator kind: ``kind``, else the metadata's family, else "loss" for an
    evaluator named ``*_loss`` (older records), else ""."""
    kind = record.get("kind")
    if not kind and isinstance(record.get("metric_meta"), dict):
        kind = record["metric_meta"].get("family")
    if not kind and evaluator_of(record).endswith("_loss"):
        kind = LOSS_KIND
    return str(kind or "")


def is_loss_record(record: dict[str, Any]) -> bool:
    return kind_of(record) == LOSS_KIND


def num_examples(record: dict[str, Any]) -> int | None:
    """How many images the record scored (``num_examples``, else ``metrics.num_images``)."""
    n = record.get("num_examples")
    if n is None:
        n = (record.get("metrics") or {}).get("num_images")
    return int(n) if is_finite_number(n) and n > 0 else None


# ----------------------------------------------------------------------------- metric_meta


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published value, drawn as a line and tabled as a marked row."""

    model: str
    data: str
    metric: str
    value: float
    prediction: str = ""


@dataclasses.dataclass(frozen=True)
class MetricMeta:
    """One record's ``metric_meta``; fields of the wrong type are ignored."""

    family: str = ""
    order: tuple[str, ...] = ()
    primary: str | None = None
    higher_is_better: bool = True
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    references: tuple[Reference, ...] = ()

    @classmethod
    def of(cls, record: dict[str, Any]) -> MetricMeta | None:
        """The record's metadata, None when it has none (an older record)."""
        meta = record.get("metric_meta")
        if not isinstance(meta, dict):
            return None
        order = meta.get("order")
        units = meta.get("units")
        refs = []
        for r in meta.get("references") or ():
            if (isinstance(r, dict) and isinstance(r.get("metric"), str)
                    and is_finite_number(r.get("value"))):
                refs.append(Reference(str(r.get("model", "")), str(r.get("data", "")),
                                      r["metric"], float(r["value"]),
                                      str(r.get("prediction") or "")))
        primary = meta.get("primary")
        return cls(
            family=str(meta.get("family") or ""),
            order=tuple(m for m in order if isinstance(m, str)) if isinstance(order, list)
            else (),
            primary=primary if isinstance(primary, str) and primary else None,
            higher_is_better=meta.get("higher_is_better") is not False,
            units={k: str(v) for k, v in units.items() if isinstance(k, str) and v}
            if isinstance(units, dict) else {},
            references=tuple(refs),
        )


@dataclasses.dataclass(frozen=True)
class TaskMeta:
    """What the records of one task say about its metrics: the newest ``metric_meta`` of
    each evaluator kind. The headline is the newest of the kinds that are not held-out
    losses: its primary metric ranks the rows and is the headline of the plots."""

    by_kind: dict[str, MetricMeta] = dataclasses.field(default_factory=dict)
    headline: MetricMeta | None = None

    def _all(self) -> list[MetricMeta]:
        """The headline first, then the other kinds by name."""
        rest = [m for _, m in sorted(self.by_kind.items()) if m is not self.headline]
        return ([self.headline] if self.headline else []) + rest

    @property
    def primary(self) -> str | None:
        return self.headline.primary if self.headline else None

    @property
    def higher_is_better(self) -> bool:
        return self.headline.higher_is_better if self.headline else True

    @property
    def references(self) -> list[Reference]:
        return [r for m in self._all() for r in m.references]

    def ordered(self, names: Iterable[str]) -> list[str]:
        """Known metrics first in the declared order (the headline's, then the other
        kinds'), then any other metric alphabetically."""
        names = set(names)
        known = [m for meta in self._all() for m in meta.order if m in names]
        known = list(dict.fromkeys(known))
        return known + sorted(names - set(known))

    def label(self, metric: str) -> str:
        """An axis label: the metric, its unit, and its direction when it is a kind's
        primary metric ("PQ (%), higher is better")."""
        metas = self._all()
        unit = next((m.units[metric] for m in metas if metric in m.units), "")
        text = metric + (f" ({unit})" if unit else "")
        for m in metas:
            if m.primary == metric:
                return text + (", higher is better" if m.higher_is_better
                               else ", lower is better")
        return text


def _newness(record: dict[str, Any]) -> tuple[str, float]:
    step = record.get("step")
    return (str(record.get("time") or ""), float(step) if is_finite_number(step) else -1.0)


def task_meta(records: Iterable[dict[str, Any]]) -> TaskMeta:
    """The metadata of a task from all its records (of every run): per evaluator kind
    the newest record (by time, then step) that carries ``metric_meta``."""
    newest: dict[str, tuple[tuple[str, float], MetricMeta]] = {}
    for r in records:
        meta = MetricMeta.of(r)
        if meta is None:
            continue
        kind, when = kind_of(r), _newness(r)
        if kind not in newest or when >= newest[kind][0]:
            newest[kind] = (when, meta)
    headlines = [v for k, v in newest.items() if k != LOSS_KIND]
    headline = max(headlines, key=lambda v: v[0])[1] if headlines else None
    return TaskMeta({k: m for k, (_, m) in newest.items()}, headline)
