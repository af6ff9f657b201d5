"""The ``gateway`` command: ``serve``, ``cluster``, ``sandbox`` (the demo), ``call``,
``loadtest``, ``bots``.

:func:`main` reads the command line (:mod:`.parser`), sets up logging and runs the
command: the serving ones are in :mod:`.commands`, the others where they live
(the sandbox's demo, the API client, the bot plugins).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import ConfigError, GatewayError
from ..logs import configure_logging
from . import commands
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    # Before numpy is imported: its OpenBLAS would start a thread per core, idle
    # for good (the gateway's products are a few hundred samples, which OpenBLAS
    # computes on the calling thread anyway). The operator's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    level = "DEBUG" if args.verbose else os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper()
    try:
        configure_logging(level, os.environ.get("GATEWAY_LOG_FORMAT", "text"))
    except ConfigError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        for noisy in ("aioice", "aiortc", "aiohttp.access", "httpx", "aiosqlite"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            if args.workers < 1:
                raise ConfigError("--workers must be at least 1")
            if args.workers > 1:
                return asyncio.run(commands.serve_workers(args, redis_url=None))
            return asyncio.run(commands.serve(args))
        if args.command == "cluster":
            return asyncio.run(commands.cluster(args))
        if args.command == "sandbox":
            from ..sandbox.demo import run_demo, serve_phone

            if args.serve:
                return asyncio.run(serve_phone(bot=args.bot, port=args.port))
            return asyncio.run(
                run_demo(bot=args.bot, audio=args.audio, record=args.record, digits=args.digits)
            )
        if args.command == "call":
            from ..client import place_call

            return asyncio.run(place_call(args))
        if args.command == "loadtest":
            return asyncio.run(commands.loadtest(args))
        if args.command == "bots":
            from ..pipeline.plugins import available_bots

            for name in available_bots():
                print(name)
            return 0
    except GatewayError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
