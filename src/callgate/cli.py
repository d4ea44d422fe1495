"""The ``callgate`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from callgate import __version__, config, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"callgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the SIP gateway and its HTTP/WebSocket API")
    serve.add_argument("--config", type=Path, help="TOML file (CALLGATE_* variables win)")
    cluster = sub.add_parser("cluster", help="run N nodes, Redis and Kamailio on this machine")
    cluster.add_argument("--nodes", type=int, default=os.cpu_count() or 1,
                         help="callgate processes (default: one per core)")
    cluster.add_argument("--config", type=Path, help="TOML file every node reads")
    cluster.add_argument("--redis-url", help="an existing Redis (default: start one)")
    args = parser.parse_args(argv)

    try:
        settings = config.load(args.config)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"callgate: bad configuration: {exc}", file=sys.stderr)
        return 2
    log.setup(settings.log_level, settings.log_format)
    if args.command == "cluster":
        from callgate.cluster.launch import run as run_cluster

        if args.nodes < 1:
            print("callgate cluster: --nodes must be at least 1", file=sys.stderr)
            return 2
        return run_cluster(settings, args.nodes, args.config, args.redis_url)

    from callgate.server import run  # after logging is set up: imports load numpy & co.

    try:
        _install_uvloop()
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 1
    return 0


def _install_uvloop() -> None:
    # Stock asyncio costs about 4x more per datagram (DESIGN.md); uvloop where available.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    raise SystemExit(main())
