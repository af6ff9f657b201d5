"""The Prometheus text exposition of a registry: prometheus-client's ``generate_latest``,
byte for byte, at a fraction of its CPU.

``generate_latest`` formats every sample from scratch on every scrape: it sorts and
escapes the sample's labels (each label name checked against the legacy name
pattern with a regular expression), escapes the metric name the same way, and
formats the value, about 220 times a scrape for the gateway's registry. The
names and label sets of a gateway's series hardly change between scrapes, so
:class:`Exposition` formats each series' ``name{labels} `` prefix (and each
family's ``# HELP`` / ``# TYPE`` lines) once, with prometheus-client's own
functions, and keeps it; a scrape then only formats the values. And the
collection before it builds two sample tuples and a label dict per sample of
prometheus-client's own metric objects (a histogram's every bucket, with its
bound formatted again): for a :class:`~prometheus_client.Counter` or
:class:`~prometheus_client.Histogram`
(those exact classes, in a plain :class:`~prometheus_client.CollectorRegistry`,
outside multiprocess mode) the values are read from the metric's children as
its ``collect()`` reads them, and written straight after their kept prefixes;
every other collector is collected as ``generate_latest`` collects it. What it writes
is what ``generate_latest(registry)`` writes for the same collection (the
default escaping, ``underscores``; ``tests/test_metrics_exposition.py`` compares
the two), including OpenMetrics' ``_created`` / ``_gsum`` / ``_gcount`` samples
moved into gauges of their own after their family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client import metrics as client_metrics
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Exposition"]

# OpenMetrics-only samples that the Prometheus text puts in gauges after their family.
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
# A cache larger than this is dropped and rebuilt (label sets are meant to be bounded;
# this only keeps a registry with unbounded label values from growing it forever).
_MAX_CACHED = 20_000


def _help(name: str, documentation: str) -> str:
    return "# HELP {} {}\n".format(
        openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES),
        documentation.replace("\\", r"\\").replace("\n", r"\n"),
    )


def _type(name: str, mtype: str) -> str:
    return f"# TYPE {openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES)} {mtype}\n"


class _Family:
    """A metric family's header lines and its OpenMetrics-only sample names."""

    __slots__ = ("header", "om_headers", "om_names")

    def __init__(self, name: str, mtype: str, documentation: str) -> None:
        shown_name, shown_type = name, mtype
        # Munging from OpenMetrics into Prometheus format, as generate_latest does.
        if mtype == "counter":
            shown_name = name + "_total"
        elif mtype == "info":
            shown_name = name + "_info"
            shown_type = "gauge"
        elif mtype == "stateset":
            shown_type = "gauge"
        elif mtype == "gaugehistogram":
            shown_type = "histogram"
        elif mtype == "unknown":
            shown_type = "untyped"
        self.header = _help(shown_name, documentation) + _type(shown_name, shown_type)
        self.om_names = {name + suffix: suffix for suffix in _OM_SUFFIXES}
        self.om_headers = {
            suffix: _help(name + suffix, documentation) + _type(name + suffix, "gauge")
            for suffix in _OM_SUFFIXES
        }


def _escape_value(value: str) -> str:
    return openmetrics._escape(value, openmetrics.ALLOWUTF8, False)  # type: ignore[arg-type]


def _go_float(value: float) -> str:
    return floatToGoString(value)  # type: ignore[no-untyped-call,no-any-return]


def _number(value: float) -> str:
    """``floatToGoString(value)``: repr() for every finite value under 1e6 in magnitude."""
    value = float(value)
    return repr(value) if -1e6 < value < 1e6 else _go_float(value)


def _prefix(name: str, labels: dict[str, str]) -> str:
    """``name{labels} `` as generate_latest's ``sample_line`` writes it (underscores escaping)."""
    escaping = openmetrics.UNDERSCORES
    text = openmetrics.escape_metric_name(name, escaping)
    if labels:
        pairs = ",".join(
            f'{openmetrics.escape_label_name(k, escaping)}="{_escape_value(v)}"'
            for k, v in sorted(labels.items())
        )
        text += "{" + pairs + "}"
    return text + " "


class _Series:
    """The kept prefixes of one child (label set) of a Counter or Histogram, and its
    lines of the last scrape with the values they were written from."""

    __slots__ = ("buckets", "count", "created", "created_line", "lines", "main", "sum", "values")

    def __init__(self, metric: Any, labelvalues: tuple[str, ...]) -> None:
        name = metric._name
        labels = dict(zip(metric._labelnames, labelvalues, strict=True))
        self.buckets: list[str] = []
        self.main = self.count = self.sum = ""
        if type(metric) is Histogram:
            child: Any = metric if not labelvalues else metric._metrics[labelvalues]
            self.buckets = [
                _prefix(name + "_bucket", {**labels, "le": _go_float(bound)})
                for bound in child._upper_bounds
            ]
            self.count = _prefix(name + "_count", labels)
            self.sum = _prefix(name + "_sum", labels)
        else:
            self.main = _prefix(name + "_total", labels)
        self.created = _prefix(name + "_created", labels)
        self.values: Any = None
        self.lines: list[str] = []
        self.created_line: tuple[float, str] | None = None

    def created_text(self, created: float) -> str:
        """The ``_created`` line (a child's creation time changes only when it is reset)."""
        kept = self.created_line
        if kept is None or kept[0] != created:
            kept = self.created_line = (created, self.created + _number(created) + "\n")
        return kept[1]


class Exposition:
    """Renders a registry as ``generate_latest`` does, keeping what does not change."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        self._families: dict[tuple[str, str, str], _Family] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._series: dict[tuple[str, tuple[str, ...]], _Series] = {}
        self._headers: dict[tuple[str, str, str, str], _Family] = {}

    def render(self) -> bytes:
        """The text exposition (``text/plain; version=0.0.4``) of the registry now."""
        for cache in (self._families, self._prefixes, self._series, self._headers):
            if len(cache) > _MAX_CACHED:
                cache.clear()
        output: list[str] = []
        for source, direct in self._sources():
            if direct:
                self._write_direct(source, output)
            else:
                self._write_family(source, output)
        return "".join(output).encode("utf-8")

    def _sources(self) -> Iterable[tuple[Any, bool]]:
        """The registry's metric objects to read directly (True), and every other
        family (False), in the registry's order (``CollectorRegistry.collect``'s)."""
        registry: Any = self.registry
        # Not in multiprocess mode, where values live in files collect() merges.
        plain = values.ValueClass is values.MutexValue
        if type(registry) is not CollectorRegistry or not plain:
            for family in registry.collect():
                yield family, False
            return
        with registry._lock:
            collectors = list(registry._collector_to_names)
            target_info = registry._target_info and registry._target_info_metric()  # type: ignore[no-untyped-call]
        if target_info:
            yield target_info, False
        for collector in collectors:
            if type(collector) in _DIRECT:
                yield collector, True
            else:
                for family in collector.collect():
                    yield family, False

    def _write_family(self, metric: Any, output: list[str]) -> None:
        families = self._families
        prefixes = self._prefixes
        append = output.append
        om_lines: dict[str, list[str]] = {}
        try:
            key = (metric.name, metric.type, metric.documentation)
            family = families.get(key)
            if family is None:
                family = families[key] = _Family(*key)
            append(family.header)
            om_names = family.om_names
            for sample in metric.samples:
                labels: Any = sample.labels
                series = (sample.name, tuple(labels.items()))
                prefix = prefixes.get(series)
                if prefix is None:
                    prefix = prefixes[series] = _prefix(sample.name, labels)
                text = _number(sample.value)
                if sample.timestamp is None:
                    line = prefix + text + "\n"
                else:
                    line = f"{prefix}{text} {int(float(sample.timestamp) * 1000):d}\n"
                suffix = om_names.get(sample.name)
                if suffix is None:
                    append(line)
                else:
                    om_lines.setdefault(suffix, []).append(line)
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(om_lines.items()):
            append(family.om_headers[suffix])
            output.extend(lines)

    def _write_direct(self, metric: Any, output: list[str]) -> None:
        """What ``metric.collect()`` then ``_write_family`` would write, read from its children."""
        key = (metric._name, metric._type, metric._documentation, metric._unit)
        family = self._headers.get(key)
        if family is None:
            described = metric._get_metric()
            family = self._headers[key] = _Family(
                described.name, described.type, described.documentation
            )
        output.append(family.header)
        if metric._is_parent():
            with metric._lock:
                children = list(metric._metrics.items())
        else:
            children = [((), metric)]
        created = client_metrics._use_created
        created_lines: list[str] = []
        write = _DIRECT[type(metric)]
        cache = self._series
        for labelvalues, child in children:
            series_key = (metric._name, labelvalues)
            series = cache.get(series_key)
            if series is None:
                series = cache[series_key] = _Series(metric, labelvalues)
            write(child, series, output)
            if created:
                created_lines.append(series.created_text(child._created))
        if created_lines:
            output.append(family.om_headers["_created"])
            output.extend(created_lines)


# A counter's value and a histogram's buckets and sum start at 0.0 and only grow by
# adding (a counter refuses negative increments), so they are never -0.0: equal
# values are the same text, and a series whose values did not change since the last
# scrape (most of them: the setup and Graph figures move only when calls start) is
# written from its kept lines.


def _write_counter(child: Any, series: _Series, output: list[str]) -> None:
    value = child._value.get()
    if value != series.values:
        series.values = value
        series.lines = [series.main + _number(value) + "\n"]
    output.extend(series.lines)


def _write_histogram(child: Any, series: _Series, output: list[str]) -> None:
    # Histogram._child_samples: cumulative buckets, the count, the sum (non-negative bounds).
    values = [bucket.get() for bucket in child._buckets]
    values.append(child._sum.get())
    if values != series.values:
        series.values = values
        lines = series.lines = []
        acc = 0.0
        for prefix, count in zip(series.buckets, values, strict=False):
            acc += count
            lines.append(prefix + _number(acc) + "\n")
        lines.append(series.count + _number(acc) + "\n")
        if child._upper_bounds[0] >= 0:
            lines.append(series.sum + _number(values[-1]) + "\n")
    output.extend(series.lines)


# Gauges are collected: set_function() replaces a gauge's samples on the instance.
_DIRECT: dict[type, Callable[[Any, _Series, list[str]], None]] = {
    Counter: _write_counter,
    Histogram: _write_histogram,
}
