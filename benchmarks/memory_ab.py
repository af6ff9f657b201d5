"""Peak resident memory with N echo calls up, this checkout against a base revision, side by side.

The base is exported and built as ``cpu_ab.py`` does; the two gateways are run in
turn, ``--rounds`` times each (base, this, base, this...), each a fresh process
under the same load as ``memory.py`` (simulated callers with recordings from
../shared/audio, the echo bot, VAD on). For each run: RSS at rest and at the peak
(from the gateway's /metrics), and the peak's split into private memory (RssAnon)
and mapped-file pages (RssFile, from /proc/<pid>/status when VmRSS was highest).
Compare **anon**: file pages vary by a few MiB with what the page cache holds.

    python benchmarks/memory_ab.py --base main [--calls 10] [--duration 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
from pathlib import Path

from cpu_ab import ROOT, export, server_from
from echo_load import add_phases_option, use_phases
from memory import measure


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    add_phases_option(parser)
    args = parser.parse_args()
    use_phases(args.phases)
    with tempfile.TemporaryDirectory(prefix="memory-ab-") as tmp:
        base = export(args.base, Path(tmp))
        servers = {f"base {base}": server_from(tmp), "this checkout": server_from(str(ROOT))}
        print(f"resident memory (MiB), echo, {args.calls} calls of {args.duration:.0f} s")
        print(
            f"{'server':<16} {'round':>5} {'at rest':>8} {'peak':>7} {'anon':>6} {'file':>6} "
            f"{'calls':>6}"
        )
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for round_ in range(1, args.rounds + 1):
            for name, server in servers.items():
                r = await measure(args.calls, args.duration, False, server=server)
                runs[name].append(r)
                print(
                    f"{name:<16} {round_:>5} {r['start']:>8.1f} {r['peak']:>7.1f} "
                    f"{r['anon']:>6.1f} {r['file']:>6.1f} {int(r['calls']):>6}",
                    flush=True,
                )
    print("\nmedians")
    medians = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("start", "peak", "anon", "file")}
        for name, rs in runs.items()
    }
    for name, m in medians.items():
        print(
            f"{name:<16} {'':>5} {m['start']:>8.1f} {m['peak']:>7.1f} {m['anon']:>6.1f} "
            f"{m['file']:>6.1f}"
        )
    (b, t) = medians.values()
    print(
        f"{'change':<16} {'':>5} {t['start'] - b['start']:>+8.1f} {t['peak'] - b['peak']:>+7.1f} "
        f"{t['anon'] - b['anon']:>+6.1f} {t['file'] - b['file']:>+6.1f}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
