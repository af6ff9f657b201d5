"""Where a process's resident memory is, read from /proc/<pid>/smaps.

Each mapping's Rss is attributed to a row:
- a file's pages to the package that ships it (``numpy``, ``av``, ``cryptography``...,
  from its path under site-packages, the ``<package>.libs`` folders included), or to the
  file's name for system libraries (``libc``, ``libpython3.11``, ``libcrypto``...);
- anonymous memory to what it is, told apart by its shape: ``[heap]`` (glibc
  malloc's main arena: Python's objects over 512 bytes, C libraries' mallocs),
  ``[stack]``, thread stacks (an anonymous mapping just above its guard page),
  malloc thread arenas (64 MiB-aligned reservations), and the rest (pymalloc's
  1 MiB arenas for Python's small objects, mallocs over 128 KiB, libraries' own
  mmaps such as OpenBLAS's buffers).

The "anon" column is the private part (Python objects, heaps, relocated pointers
in libraries' data); file pages vary with the page cache from run to run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
_SITE = re.compile(r"/site-packages/([^/]+)")
_ARENA_ALIGN = 64 * 2**20  # glibc's HEAP_MAX_SIZE on 64-bit
_OTHER = "other (pymalloc arenas, big mallocs, library buffers)"


@dataclass
class _Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss: int = 0  # KiB
    anon: int = 0


def _read(pid: int) -> list[_Mapping]:
    mappings: list[_Mapping] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _MAPPING.match(line)
            if m:
                start, end, perms, path = m.groups()
                mappings.append(_Mapping(int(start, 16), int(end, 16), perms, path.strip()))
            elif line.startswith("Rss:"):
                mappings[-1].rss = int(line.split()[1])
            elif line.startswith("Anonymous:"):
                mappings[-1].anon = int(line.split()[1])
    return mappings


def _file_row(path: str) -> str:
    site = _SITE.search(path)
    if site:
        package = site.group(1)
        for suffix in (".libs", ".dylibs"):
            package = package.removesuffix(suffix)
        return package.split("-")[0].split(".")[0]  # numpy.libs, av-16.0.dist-info...
    name = path.rsplit("/", 1)[-1]
    return re.sub(r"(\.so.*|\.cpython.*)$", "", name)


def attribute(pid: int) -> Counter[str]:
    """Rss (KiB) per row; anonymous rows start with ``anon:``, file rows with ``file:``."""
    rows: Counter[str] = Counter()
    mappings = _read(pid)
    for i, m in enumerate(mappings):
        if m.path.startswith("/"):
            rows["file:" + _file_row(m.path)] += m.rss - m.anon
            if m.anon:  # copy-on-write pages: relocations, the library's globals
                rows["anon:libraries' data (relocated, globals)"] += m.anon
            continue
        if m.path in ("[heap]", "[stack]"):
            label = "malloc main arena [heap]" if m.path == "[heap]" else "main thread [stack]"
        elif m.path:
            label = m.path  # [vdso], [vvar]...
        elif i and mappings[i - 1].perms == "---p" and mappings[i - 1].end == m.start:
            # Below a thread's stack is its guard page; below a malloc arena's
            # unused part is nothing (the arena grows upwards into its reservation).
            label = (
                "thread stacks" if mappings[i - 1].end - mappings[i - 1].start == 4096 else _OTHER
            )
        elif (
            m.start % _ARENA_ALIGN == 0
            and i + 1 < len(mappings)
            and (mappings[i + 1].perms == "---p" and mappings[i + 1].start == m.end)
        ):
            label = "malloc thread arenas"
        else:
            label = _OTHER
        rows["anon:" + label] += m.rss
    return rows


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def print_table(columns: Mapping[str, Counter[str]], *, top: int = 14) -> None:
    """Rows (MiB) side by side; file rows beyond the ``top`` biggest are summed."""
    names = list(columns)
    anon = sorted(
        {k for c in columns.values() for k, v in c.items() if k.startswith("anon:") and v},
        key=lambda k: -max(c[k] for c in columns.values()),
    )
    files = sorted(
        {k for c in columns.values() for k in c if k.startswith("file:")},
        key=lambda k: -max(c[k] for c in columns.values()),
    )
    width = max(len(k) for k in anon + files[:top] + ["x" * 30]) - 3
    print(f"{'':<{width}} " + " ".join(f"{n:>10}" for n in names))

    def row(label: str, values: Iterable[int]) -> None:
        print(f"{label:<{width}} " + " ".join(f"{v / 1024:>10.2f}" for v in values))

    row("anonymous, total", (sum(v for k, v in c.items() if k in anon) for c in columns.values()))
    for k in anon:
        row("  " + k[5:], (c[k] for c in columns.values()))
    row(
        "file-backed, total", (sum(v for k, v in c.items() if k in files) for c in columns.values())
    )
    for k in files[:top]:
        row("  " + k[5:], (c[k] for c in columns.values()))
    row(
        f"  {len(files) - top} others",
        (sum(c[k] for k in files[top:]) for c in columns.values()),
    )
    row("total", (sum(c.values()) for c in columns.values()))
