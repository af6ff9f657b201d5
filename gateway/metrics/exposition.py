"""The Prometheus text page, byte for byte ``generate_latest``'s, with its fixed text made once.

prometheus-client's ``generate_latest`` rebuilds every line from scratch at every
scrape: it validates and escapes each metric name, sorts and escapes each sample's
labels, and formats the HELP and TYPE lines, though in a gateway only the values
change between scrapes (the label sets are bounded: directions, stages, reasons,
buckets). :class:`TextExposition` keeps each series' ``name{labels} `` text and each
family's header lines from the scrape that first saw them and formats only the
values. The series text is prometheus-client's own escaping, so the page is the
same; ``tests/test_metrics_exposition.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from prometheus_client.samples import Sample

# OpenMetrics-only samples that the text format moves into a gauge after their family.
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
# A bound on the cached series (the gateway's are a few hundred); past it, start over.
MAX_SERIES = 10_000

_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


# prometheus-client's own number format (Go's: 1e+06, +Inf, NaN); untyped there.
_number = cast("Callable[[float], str]", floatToGoString)


def _name(name: str) -> str:
    return str(openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES))


def _label_value(value: str) -> str:
    # Label values may be any UTF-8: only backslash, newline and quote are escaped.
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(documentation: str) -> str:
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


class TextExposition:
    """Renders a registry as ``generate_latest(registry)`` does (the text format 0.0.4)."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        # (family name, type, documentation) -> its HELP and TYPE lines.
        self._headers: dict[tuple[str, str, str], str] = {}
        # (family name, OpenMetrics suffix, documentation) -> that gauge's header lines.
        self._om_headers: dict[tuple[str, str, str], str] = {}
        # (sample name, its labels as given) -> "name{labels} ".
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def render(self) -> bytes:
        """The page: one collection of the registry, formatted."""
        if len(self._series) > MAX_SERIES:
            self._series.clear()
        output: list[str] = []
        for metric in self.registry.collect():
            try:
                output.append(self._header(metric.name, metric.type, metric.documentation))
                om_names = {metric.name + suffix: suffix for suffix in _OM_SUFFIXES}
                om_samples: dict[str, list[str]] = {}
                for sample in metric.samples:
                    suffix = om_names.get(sample.name)
                    if suffix is None:
                        output.append(self._line(sample))
                    else:
                        om_samples.setdefault(suffix, []).append(self._line(sample))
            except Exception as exception:  # as generate_latest reports it
                exception.args = (exception.args or ("",)) + (metric,)
                raise
            for suffix, lines in sorted(om_samples.items()):
                output.append(self._om_header(metric.name, suffix, metric.documentation))
                output.extend(lines)
        return "".join(output).encode("utf-8")

    def _header(self, name: str, kind: str, documentation: str) -> str:
        key = (name, kind, documentation)
        header = self._headers.get(key)
        if header is None:
            exposed = name + "_total" if kind == "counter" else name
            if kind == "info":
                exposed = name + "_info"
            exposed = _name(exposed)
            header = self._headers[key] = (
                f"# HELP {exposed} {_help(documentation)}\n"
                f"# TYPE {exposed} {_TYPES.get(kind, kind)}\n"
            )
        return header

    def _om_header(self, name: str, suffix: str, documentation: str) -> str:
        key = (name, suffix, documentation)
        header = self._om_headers.get(key)
        if header is None:
            exposed = _name(name + suffix)
            header = self._om_headers[key] = (
                f"# HELP {exposed} {_help(documentation)}\n# TYPE {exposed} gauge\n"
            )
        return header

    def _line(self, sample: Sample) -> str:
        key = (sample.name, tuple(sample.labels.items()))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _series_text(sample)
        if sample.timestamp is None:
            return f"{series}{_number(sample.value)}\n"
        # Milliseconds, as generate_latest writes them.
        return f"{series}{_number(sample.value)} {int(float(sample.timestamp) * 1000):d}\n"


def _series_text(sample: Sample) -> str:
    """``name{labels} `` with generate_latest's escaping (labels sorted by name)."""
    name = _name(sample.name)
    if not sample.labels:
        return f"{name} "
    pairs = []
    for key, value in sorted(sample.labels.items()):
        label = openmetrics.escape_label_name(key, openmetrics.UNDERSCORES)
        pairs.append(f'{label}="{_label_value(value)}"')
    labels = ",".join(pairs)
    return f"{name}{{{labels}}} "
