"""A lean writer of the Prometheus text (0.0.4) and OpenMetrics (1.0.0) formats for the /metrics endpoint.

prometheus_client spends about 12 µs on every line it writes; with 1,000 policies and about 50 lines each, a
scrape took half a second. Dockvault's event series (counters and histograms) keep their lines written, and
rewrite them only when they change (`EventFamily`); plain gauges are written here without the per-line validation.
Every other family goes through prometheus_client's own writer, so the output is the same as `generate_latest`
(tests/unit/test_exposition.py compares them byte for byte).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(pairs))
    return "{" + text + "}" if text else ""


def _help(name: str, documentation: str, kind: str, *, openmetrics: bool) -> str:
    documentation = documentation.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        documentation = documentation.replace('"', r"\"")
    return f"# HELP {name} {documentation}\n# TYPE {name} {kind}\n"


class _Series:
    """One label set of an event family: a counter's value, or a histogram's bucket counts and sum."""

    __slots__ = ("labels", "created", "value", "counts", "sum", "_lines")

    def __init__(self, labels: dict[str, str], buckets: int) -> None:
        self.labels = labels
        self.created = time.time()
        self.value = 0.0
        self.counts = [0.0] * buckets
        self.sum = 0.0
        self._lines: tuple[str, str, str] | None = None

    def changed(self) -> None:
        self._lines = None

    def lines(self, family: EventFamily) -> tuple[str, str, str]:
        """(the value lines, the _created line) in the text format, and all of them in OpenMetrics."""
        if self._lines is None:
            name, pairs = family.name, list(self.labels.items())
            labels = _labels(pairs)
            if family.buckets is None:
                main = f"{name}_total{labels} {floatToGoString(self.value)}\n"
            else:
                cumulative, rows = 0.0, []
                for bound, count in zip(family.buckets, self.counts):
                    cumulative += count
                    rows.append(f"{name}_bucket{_labels([*pairs, ('le', floatToGoString(bound))])} "
                                f"{floatToGoString(cumulative)}\n")
                rows.append(f"{name}_count{labels} {floatToGoString(cumulative)}\n")
                rows.append(f"{name}_sum{labels} {floatToGoString(self.sum)}\n")
                main = "".join(rows)
            created = f"{name}_created{labels} {floatToGoString(self.created)}\n"
            self._lines = (main, created, main + created)
        return self._lines


class EventFamily:
    """A counter (`buckets` None) or histogram family changed by events; thread-safe, lines written once per change."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float] | None = None) -> None:
        self.name = name.removesuffix("_total") if buckets is None else name
        self.documentation = documentation
        self.label_names = tuple(labels)
        self.buckets = None if buckets is None else (*map(float, buckets), float("inf"))
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()

    def touch(self, *values: str) -> None:
        """Make the series exist at 0."""
        self.inc(*values, amount=0.0)

    def inc(self, *values: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up, not by {amount}")
        with self._lock:
            series = self._get(values)
            if amount:
                series.value += amount
                series.changed()

    def observe(self, *values: str, amount: float) -> None:
        assert self.buckets is not None, self.name
        with self._lock:
            series = self._get(values)
            series.counts[next(i for i, bound in enumerate(self.buckets) if amount <= bound)] += 1
            series.sum += amount
            series.changed()

    def _get(self, values: tuple[str, ...]) -> _Series:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
            labels = dict(zip(self.label_names, map(str, values)))
            series = self._series[values] = _Series(labels, 0 if self.buckets is None else len(self.buckets))
        return series

    def collect(self) -> Metric:
        """A snapshot that writes its lines itself (`exposition`) and builds prometheus_client samples only if asked."""
        with self._lock:
            snapshot = [(s.lines(self), (s.labels, s.created, s.value, tuple(s.counts), s.sum))
                        for s in self._series.values()]
        return _EventSnapshot(self, snapshot)


class _EventSnapshot(Metric):
    def __init__(self, family: EventFamily, series: list[tuple[tuple[str, str, str], tuple]]) -> None:
        super().__init__(family.name, family.documentation, "counter" if family.buckets is None else "histogram")
        self._family = family
        self._snapshot = series
        self._built: list | None = None

    # prometheus_client's own writers and registry.get_sample_value read `samples`; built on first use only.
    @property
    def samples(self) -> list:
        if self._built is None:
            family = Metric(self.name, self.documentation, self.type)
            for _, (labels, created, value, counts, total) in self._snapshot:
                if self._family.buckets is None:
                    family.add_sample(self.name + "_total", labels, value)
                else:
                    cumulative = 0.0
                    for bound, count in zip(self._family.buckets, counts):
                        cumulative += count
                        family.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)}, cumulative)
                    family.add_sample(self.name + "_count", labels, cumulative)
                    family.add_sample(self.name + "_sum", labels, total)
                family.add_sample(self.name + "_created", labels, created)
            self._built = family.samples
        return self._built

    @samples.setter
    def samples(self, value: list) -> None:
        self._built = value or None

    def exposition(self, *, openmetrics: bool) -> str:
        if openmetrics:
            return (_help(self.name, self.documentation, self.type, openmetrics=True)
                    + "".join(lines[2] for lines, _ in self._snapshot))
        head_name = self.name + "_total" if self.type == "counter" else self.name
        text = _help(head_name, self.documentation, self.type, openmetrics=False)
        text += "".join(lines[0] for lines, _ in self._snapshot)
        if self._snapshot:
            text += _help(self.name + "_created", self.documentation, "gauge", openmetrics=False)
            text += "".join(lines[1] for lines, _ in self._snapshot)
        return text


class _One:
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


def _gauge(metric: Metric, *, openmetrics: bool) -> str:
    return _help(metric.name, metric.documentation, "gauge", openmetrics=openmetrics) + "".join(
        f"{s.name}{_labels(s.labels.items())} {floatToGoString(s.value)}\n" for s in metric.samples)


def render(collector, *, openmetrics: bool) -> bytes:
    """The registry's (any object with collect()) exposition, the same bytes as prometheus_client would write."""
    parts = []
    for metric in collector.collect():
        if isinstance(metric, _EventSnapshot):
            parts.append(metric.exposition(openmetrics=openmetrics))
        elif metric.type == "gauge" and not metric.unit and all(
                s.timestamp is None and s.exemplar is None for s in metric.samples):
            parts.append(_gauge(metric, openmetrics=openmetrics))
        elif openmetrics:
            parts.append(openmetrics_latest(_One(metric)).decode().removesuffix("# EOF\n"))
        else:
            parts.append(text_latest(_One(metric)).decode())
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts).encode()
