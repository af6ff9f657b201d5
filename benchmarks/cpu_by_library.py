"""Where the gateway's CPU goes, by library: ``perf record`` on the gateway process under load.

The echo load of cpu_per_call.py (simulated callers speaking recordings, 10 calls
by default); once the calls are up, ``perf record -p`` samples the gateway
process for ``--sample`` seconds. Each library's share of the samples (Python's
interpreter, libopus, the kernel, libsrtp...) times the run's CPU per
call-second gives its milliseconds per call-second. With ``--base REV`` the
other revision (exported as cpu_ab.py does, its C extension built) is measured
first, in the same invocation, and the two columns print side by side.

    python benchmarks/cpu_by_library.py [--base REV] [--calls 10] [--duration 25]

Needs Linux ``perf`` (Debian: linux-perf) and the right to attach to a child
process (root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_ab import export, server_from
from echo_load import add_phases_option, run_echo_calls, use_phases

_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")
_NAMES = [  # a library's file name (start) -> what to call it
    ("libpython", "Python interpreter"),
    ("libopus", "libopus"),
    ("[kernel", "kernel"),
    ("_binding", "libsrtp + OpenSSL (pylibsrtp)"),
    ("_multiarray", "numpy"),
    ("libc.", "libc"),
    ("_webrtcvad", "webrtcvad"),
    ("_rtp.", "gateway/media/_rtp (C)"),
    ("_cffi_backend", "cffi"),
    ("_ctypes", "ctypes"),
    ("libffi", "ctypes"),
]


def _gateway_child(parent: int) -> int | None:
    """The ``gateway serve`` process the load tester started, if it is up."""
    children = subprocess.run(
        ["pgrep", "-P", str(parent)], capture_output=True, text=True
    ).stdout.split()
    for pid in children:
        try:
            if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except OSError:
            continue
    return None


def _shares(data: Path) -> dict[str, float]:
    """perf's share of samples per library, under the names above."""
    table = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "--no-children"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shares: dict[str, float] = {}
    for line in table.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        share, dso = float(match.group(1)), match.group(2)
        name = next((label for start, label in _NAMES if dso.startswith(start)), "other")
        shares[name] = shares.get(name, 0.0) + share
    return shares


async def measure(
    calls: int, duration: float, sample: float, tree: str | None, out: Path
) -> tuple[float, dict[str, float]]:
    """(CPU ms per call-second, {library: share of perf's samples}) of one load run."""

    async def record() -> None:
        while (pid := await asyncio.to_thread(_gateway_child, os.getpid())) is None:
            await asyncio.sleep(0.5)
        await asyncio.sleep(min(8.0, duration / 3))  # the calls are up and talking
        perf = await asyncio.create_subprocess_exec(
            "perf", "record", "-F", "999", "-o", str(out), "-p", str(pid), "--",
            "sleep", str(sample),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await perf.wait()

    recorder = asyncio.create_task(record())
    report = await run_echo_calls(
        calls, duration, server_command=server_from(tree) if tree else None
    )
    await recorder
    shares = await asyncio.to_thread(_shares, out)
    return float(report["gateway"]["cpu_ms_per_call_second"]), shares


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to measure first, side by side")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--sample", type=float, default=12.0, help="seconds perf records")
    add_phases_option(parser)
    args = parser.parse_args()
    use_phases(args.phases)
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: apt-get install linux-perf)")
    if args.sample >= args.duration - 5:
        sys.exit("--sample must leave the calls time to start: < --duration - 5")
    columns: list[tuple[str, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            (Path(tmp) / "tree").mkdir()
            commit = export(args.base, Path(tmp) / "tree")
            ms, shares = await measure(
                args.calls, args.duration, args.sample, str(Path(tmp) / "tree"), Path(tmp) / "b"
            )
            columns.append((f"base {commit}", ms, shares))
        ms, shares = await measure(args.calls, args.duration, args.sample, None, Path(tmp) / "t")
        columns.append(("this checkout", ms, shares))
    print(
        f"gateway CPU by library, echo bot, {args.calls} calls, perf over {args.sample:.0f} s: "
        "ms per call-second (share of samples)"
    )
    print(f"{'library':<32}" + "".join(f" | {title:>22}" for title, _, _ in columns))
    print(f"{'total':<32}" + "".join(f" | {ms:>14.1f} (100 %)" for _, ms, _ in columns))
    names = sorted({n for _, _, s in columns for n in s}, key=lambda n: -columns[-1][2].get(n, 0))
    for name in names:
        cells = "".join(
            f" | {ms * s.get(name, 0.0) / 100:>13.2f} ({s.get(name, 0.0):>4.1f} %)"
            for _, ms, s in columns
        )
        print(f"{name:<32}{cells}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
