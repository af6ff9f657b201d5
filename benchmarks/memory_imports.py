"""What a gateway's resident memory at rest is made of: RSS added by each library.

Imports, in a fresh interpreter, the libraries `gateway serve` loads (in this
order: each row also counts what it pulls in and the rows above did not), then
the gateway's own modules with the echo bot, and prints the RSS after each
step, split into private memory (RssAnon: Python objects, heaps) and pages of
mapped files (RssFile: the libraries' code, which varies with the page cache).
numpy is not a step: the gateway's PCM path does not use it (gateway/media/pcm.py);
the last line says whether anything imported it anyway.

    python benchmarks/memory_imports.py
"""

from __future__ import annotations

import json
import subprocess
import sys

GATEWAY = ["gateway.cli", "gateway.app", "gateway.pipeline.plugins", "bots.echo"]
STEPS = [
    ("av (PyAV, FFmpeg)", ["av"]),
    ("aiortc (+aioice, cryptography, pyOpenSSL, pylibsrtp)", ["aiortc"]),
    ("aiohttp (server and client)", ["aiohttp", "aiohttp.web"]),
    ("httpx", ["httpx"]),
    ("prometheus_client", ["prometheus_client"]),
    ("aiosqlite, sqlite3", ["aiosqlite"]),
    ("webrtcvad's extension (_webrtcvad)", ["_webrtcvad"]),
    ("gateway (app, calls, media, pipeline, echo bot)", GATEWAY),
]

PROBE = """
import importlib, json, sys
def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (l.partition(":") for l in f)
                if k in ("VmRSS", "RssAnon", "RssFile")}
import gateway  # first, as `gateway serve` does: it keeps httpx's CLI out
rows = [("python", status())]
for label, modules in json.loads(sys.argv[1]):
    for name in modules:
        importlib.import_module(name)
    rows.append((label, status()))
print(json.dumps({"rows": rows, "numpy": "numpy" in sys.modules}))
"""


def main() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(STEPS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    rows = result["rows"]
    print("resident memory at import (MiB), cumulative; one fresh interpreter")
    print(f"{'step':<54} {'RSS':>6} {'+':>6} {'anon':>6} {'file':>6}")
    previous = 0
    for label, s in rows:
        rss = s["VmRSS"]
        added = f"{(rss - previous) / 1024:+.1f}" if previous else ""
        print(
            f"{label:<54} {rss / 1024:>6.1f} {added:>6} "
            f"{s['RssAnon'] / 1024:>6.1f} {s['RssFile'] / 1024:>6.1f}"
        )
        previous = rss
    print(f"numpy imported: {'yes' if result['numpy'] else 'no'}")


if __name__ == "__main__":
    main()
