"""``redis-cache``: the operator's command line.

Exit codes scripts can rely on: 0 success, 1 a check or operation failed,
2 usage or configuration error. Expected failures print one plain sentence,
never a traceback, and never a credential.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import exceptions

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # noqa: PLC0415 - keep `--help` fast

    return demo.run(workers=args.workers, kernels=args.kernels, compile_seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis-cache",
        description="Share expensive function results across processes and machines.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a small compile farm and show which layer serves each call",
        description="Worker processes call a slow 'compile' through icache; shows memo, "
        "disk and (with REDIS_CACHE_URL) redis hits and the time saved.",
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--kernels", type=int, default=6, help="distinct kernels (default 6)")
    demo.add_argument(
        "--seconds", type=float, default=0.3, help="cost of one compile (default 0.3)"
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except exceptions.InvalidSettingError as exc:
        print(f"redis-cache: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except exceptions.CacheError as exc:
        print(f"redis-cache: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
