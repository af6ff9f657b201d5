"""Third-party modules the gateway's libraries import but a call rarely runs, loaded on first use.

Installed by ``gateway/__init__.py``, so before any library is imported:

- **dnspython** (``dns``): aioice imports it for mDNS, which resolves a peer's
  ``.local`` ICE candidates (browsers hiding their addresses); Meta's side offers
  public addresses, so a gateway never resolves one. Imported eagerly it holds
  about 3 MiB of Python objects (``dns.zone``, ``dns.message`` and every record
  type, and ``importlib.metadata`` with ``zipfile``, ``email``, ``csv``). Each
  ``dns`` module is made with the standard library's
  :class:`importlib.util.LazyLoader`: it is in ``sys.modules`` at once, and
  runs when one of its attributes is first read (aioice's module-level
  ``dns.rdataclass`` is read at import: that small module runs, the rest wait).
  Nothing in aioice or aiortc is patched: if a later aioice reads more of
  ``dns`` at import time, those modules simply run then.
- **httpx's command-line client** (``httpx._main``): httpx imports it (click and
  pygments, about 2 MiB) whenever click is installed (faster-whisper's
  huggingface_hub brings it), and without ``rich`` that import fails anyway,
  leaving httpx's stub ``main``. A None entry gives httpx the stub without the detour.
- **the system's MIME tables** (``/etc/mime.types``): aiohttp's ``web_fileresponse``
  makes a ``mimetypes.MimeTypes()`` at import, and that constructor first loads
  the system's tables into ``mimetypes``' module-level database (0.4 MiB), which
  aiohttp never reads: its instance holds Python's built-in table either way.
  Marking ``mimetypes`` initialised skips that load; its module-level functions
  (``guess_type`` and friends) still load the tables at their first call, as
  they check for the database itself.

LazyLoader is for pure-Python modules (it needs the module object its loader
makes by default); extension modules are loaded as usual. Python 3.11's
LazyLoader is not safe when two threads first touch one module at once; the
``dns`` modules are touched from the event loop only.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

# Top-level packages whose modules run on first attribute access.
DEFERRED: frozenset[str] = frozenset({"dns"})

_PURE_PYTHON = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)


class DeferredFinder:
    """Finds modules of :data:`DEFERRED` packages as usual, to be run on first use.

    A meta path finder (not derived from ``importlib.abc.MetaPathFinder``, whose
    module imports ``importlib.resources``, ``tempfile`` and more: 1.6 MiB).
    """

    def __init__(self, packages: frozenset[str]) -> None:
        self.packages = packages

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        # The path finder directly, not the rest of sys.meta_path: another finder
        # that also asks every finder (an import profiler) would recurse forever.
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None:
            return None  # not on sys.path (frozen, another finder): imported as usual
        if isinstance(spec.loader, _PURE_PYTHON):
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def install() -> None:
    """Defer :data:`DEFERRED` packages and httpx's CLI (idempotent; see the module's doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if "aiohttp" not in sys.modules:
        import mimetypes

        if getattr(mimetypes, "_db", None) is None:  # nothing has loaded the tables yet
            mimetypes.inited = True
    if any(isinstance(finder, DeferredFinder) for finder in sys.meta_path):
        return
    if DEFERRED & {name.partition(".")[0] for name in sys.modules}:
        return  # already imported eagerly (an embedding application): nothing to gain
    sys.meta_path.insert(0, DeferredFinder(DEFERRED))
