"""What one ``/metrics`` scrape costs, by part: collection, and the text's formatting.

Builds the gateway's own registry (``gateway.metrics.Metrics``) with the label sets
a gateway that has taken calls has (both directions, both setup stages, every
Graph action, response and barge-in figures, a full loop-lag window) and times, in
process CPU per scrape (best of ``--rounds``), the registry's collection alone,
prometheus-client's ``generate_latest`` and its text formatting alone, and the
gateway's :class:`~gateway.metrics.exposition.Exposition` (what ``Metrics.render``
runs: the same bytes) and its text formatting alone. Hot caches, in a loop: inside a
busy gateway the same scrape costs several times more (``frame_costs.py`` times
``Metrics.render`` there).

    python benchmarks/metrics_scrape.py [--scrapes 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import Collector

from gateway.metrics.exposition import Exposition
from gateway.metrics.sample import busy_metrics


class _Fixed(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def best_us(function: Callable[[], object], scrapes: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(scrapes):
            function()
        best = min(best, (time.process_time() - start) / scrapes * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    metrics = busy_metrics()
    registry = metrics.registry
    fixed = _Fixed(list(registry.collect()))
    ours, ours_fixed = Exposition(registry), Exposition(fixed)
    assert ours_fixed.render() == generate_latest(fixed)
    page = metrics.render()
    samples = sum(1 for line in page.splitlines() if not line.startswith(b"#"))
    rows = [
        ("collection only (registry.collect)", lambda: list(registry.collect())),
        ("generate_latest (collection + text)", lambda: generate_latest(registry)),
        ("text only, generate_latest", lambda: generate_latest(fixed)),
        ("Exposition.render (collection + text)", ours.render),
        ("text only, Exposition.render", ours_fixed.render),
    ]
    print(f"one /metrics scrape of the gateway's registry: {samples} samples, {len(page)} bytes")
    print(f"process CPU per scrape, best of {args.rounds} x {args.scrapes}, hot caches")
    print(f"  {'':<44} {'us':>8}")
    for name, function in rows:
        print(f"  {name:<44} {best_us(function, args.scrapes, args.rounds):8.1f}")


if __name__ == "__main__":
    main()
