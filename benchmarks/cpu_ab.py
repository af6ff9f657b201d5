"""Gateway CPU per call-second: this checkout against another git revision, side by side.

Did a change make the per-call path dearer? The other revision (default: main) is
exported with ``git archive`` to a temporary directory (its C extension built
there, if it has one) and run as the gateway
process (its package imported first); this checkout runs as the other. Load
tests (sandbox callers speaking ../shared/audio to the echo bot, as in
cpu_per_call.py) alternate between the two, so drift on a shared machine hits
both alike; the figure is the gateway process's own CPU time per call-second.

    python benchmarks/cpu_ab.py [--base main] [--head REV] [--calls 10] [--duration 30]

``--head REV`` compares two revisions (both exported) instead of this checkout.
``--phases shared`` has every simulated caller send at the same instants (the load of
the figures measured before the option; default: each at a phase of its own).
``--head-env KEY=VALUE`` (repeatable) sets a gateway setting on the measured side only:
with ``--base HEAD`` it compares one setting against its default on the same code, e.g.
``--base HEAD --head-env GATEWAY_OPUS_COMPLEXITY=3``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from echo_load import add_phases_option, run_echo_calls

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def export(rev: str, into: Path) -> str:
    """Unpack ``rev``'s tree into ``into``; returns its short commit id."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    if (into / "setup.py").exists():  # the compiled media path: without it, Python's
        subprocess.run(
            [sys.executable, "-c", BUILD_EXT], cwd=into, check=True, stdout=subprocess.DEVNULL
        )
    return commit


# setup.py's extensions, built in place (its setup() would read pyproject.toml, which
# needs a newer setuptools than the venv's own; pip builds in an isolated one).
BUILD_EXT = (
    "import runpy; from setuptools import Distribution; "
    "d = Distribution({'ext_modules': runpy.run_path('setup.py')['EXTENSIONS']}); "
    "d.get_command_obj('build_ext').inplace = True; d.run_command('build_ext')"
)


def server_from(tree: str) -> tuple[str, ...]:
    """``gateway serve`` with the package imported from ``tree`` (ahead of the cwd)."""
    code = (
        f"import sys; sys.path.insert(0, {tree!r}); from gateway.cli import main; "
        "sys.exit(main(['serve']))"
    )
    return (sys.executable, "-c", code)


async def cpu_ms(
    calls: int,
    duration: float,
    tree: str | None,
    env: dict[str, str] | None = None,
    phases: str = "independent",
) -> tuple[float, float]:
    """The gateway's CPU per call-second (ms) and its event loop's wake-ups per second."""
    report = await run_echo_calls(
        calls,
        duration,
        server_command=server_from(tree) if tree else None,
        gateway_env=env,
        phases=phases,
    )
    if report["ended_cleanly"] != calls:
        # A saturated machine: the figure is still the gateway's CPU per call-second.
        print(f"  (only {report['ended_cleanly']}/{calls} calls ended cleanly)", flush=True)
    g = report["gateway"]
    return float(g["cpu_ms_per_call_second"]), float(g["wakeups_per_second"] or "nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare with")
    parser.add_argument("--head", help="git revision to measure (default: this checkout)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--head-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the measured side's gateway only (repeatable)",
    )
    add_phases_option(parser)
    args = parser.parse_args()
    head_env = dict(item.split("=", 1) for item in args.head_env) or None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_head:
        base_commit = export(args.base, Path(tmp))
        head_tree = None
        head = "this checkout"
        if args.head:
            head = f"{args.head} ({export(args.head, Path(tmp_head))})"
            head_tree = tmp_head
        if head_env:
            head += " with " + " ".join(args.head_env)
        print(
            f"gateway CPU per call-second, echo bot, {args.calls} calls of "
            f"{args.duration:.0f} s, callers at {args.phases} phases, "
            f"base {args.base} ({base_commit}) vs {head}"
        )
        print("(wake/s: the gateway's event-loop wake-ups a second, its main thread's sleeps)")
        print(
            f"{'round':>5} | {'base ms':>8} {'wake/s':>6} | {'this ms':>8} {'wake/s':>6} | "
            "this/base ms, wake/s"
        )
        base, this = [], []
        for r in range(args.rounds):
            base.append(await cpu_ms(args.calls, args.duration, tmp, phases=args.phases))
            this.append(await cpu_ms(args.calls, args.duration, head_tree, head_env, args.phases))
            print(row(f"{r + 1:>5}", base[-1], this[-1]))
        print(row("  med", medians(base), medians(this)))


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def row(label: str, base: tuple[float, float], this: tuple[float, float]) -> str:
    """One line of the table: CPU ms and wake-ups a second, each side, and the ratios."""
    return (
        f"{label} | {base[0]:>8.2f} {base[1]:>6.0f} | {this[0]:>8.2f} {this[1]:>6.0f} | "
        f"{this[0] / base[0]:.3f}, {this[1] / base[1]:.3f}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
