"""``redis-cache``: the operator's command line.

Exit codes scripts can rely on: 0 success, 1 a check or operation failed,
2 usage or configuration error. Expected failures print one plain sentence,
never a traceback, and never a credential.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import config, exceptions

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .ops import NamespaceStats

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class Refused(Exception):
    """An operation refused before it changed anything; carries its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # noqa: PLC0415 - keep `--help` fast

    return demo.run(workers=args.workers, kernels=args.kernels, compile_seconds=args.seconds)


# --------------------------------------------------------------------------- plumbing


def _hidden() -> list[str]:
    """Secrets of the current settings, to scrub from anything a server said."""
    from .doctor import hidden_strings  # noqa: PLC0415

    try:
        return hidden_strings(config.load())
    except exceptions.CacheError:
        return []


def _error(message: str) -> None:
    from .doctor import scrub  # noqa: PLC0415

    print(f"redis-cache: {scrub(message, _hidden())}", file=sys.stderr)


def guarded(handler: Handler) -> Handler:
    """Expected failures become one scrubbed sentence and an exit code, never a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Refused as exc:
            _error(str(exc))
            return exc.code
        except exceptions.InvalidSettingError as exc:
            _error(f"configuration error: {exc}")
            return EXIT_USAGE
        except exceptions.CacheError as exc:
            _error(str(exc))
            return EXIT_FAILED
        except OSError as exc:
            _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            return EXIT_FAILED

    return run


def remote_layer(action: str, *, writes: bool) -> RedisLayer:
    """The namespace's Redis layer from the workers' settings; refuses what they forbid."""
    from .layers.redis import RedisLayer  # noqa: PLC0415

    settings = config.load()
    if not settings.has_remote:
        raise Refused(f"{action} needs the remote layer; REDIS_CACHE_URL is not set", EXIT_USAGE)
    if writes and settings.read_only:
        raise Refused(
            f"{action} writes to the remote layer, and REDIS_CACHE_READ_ONLY=1", EXIT_USAGE
        )
    return RedisLayer(settings)


class Progress:
    """A one-line ``\\r`` progress display on a terminal; silent otherwise."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr) -> None:
        self.verb = verb
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def __call__(self, count: int, size: int) -> None:
        if not self.enabled:
            return
        amount = f", {human_bytes(size)}" if size else ""
        self.stream.write(f"\r{self.verb} {count} entries{amount}   ")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- commands


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor  # noqa: PLC0415

    report = doctor.run()
    if args.json:
        _print_json(report.as_json())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


@guarded
def _stats(args: argparse.Namespace) -> int:
    from . import ops  # noqa: PLC0415

    layer = remote_layer("stats", writes=False)
    try:
        result = ops.namespace_stats(layer)
    finally:
        layer.close()
    if args.json:
        _print_json(result.as_json())
    else:
        print(render_stats(result))
    return EXIT_OK


def render_stats(result: NamespaceStats) -> str:
    total = result.total
    lines = [
        f"namespace {result.namespace!r} at {result.server}: "
        f"{total.entries} entries, {human_bytes(total.bytes)} ({total.bytes} bytes)"
    ]
    if result.callees:
        lines.append(f"  {'entries':>9} {'bytes':>14}  callee")
        for name, usage in sorted(result.callees.items(), key=lambda kv: -kv[1].bytes):
            lines.append(f"  {usage.entries:>9} {usage.bytes:>14}  {name}")
    if not result.counters:
        lines.append("counters: none published yet (REDIS_CACHE_STATS_INTERVAL)")
    for owner, counters in sorted(result.counters.items()):
        shown = " ".join(f"{k}={_count(v)}" for k, v in sorted(counters.items()) if v)
        lines.append(f"counters {owner}: {shown or 'all zero'}")
    return "\n".join(lines)


@guarded
def _dump(args: argparse.Namespace) -> int:
    from . import ops  # noqa: PLC0415

    layer = remote_layer("dump", writes=False)
    progress = Progress("dumped")
    try:
        count = ops.dump(layer, Path(args.file), progress)
    finally:
        progress.done()
        layer.close()
    print(f"dumped {count} entries to {args.file}")
    return EXIT_OK


@guarded
def _load(args: argparse.Namespace) -> int:
    from . import ops  # noqa: PLC0415

    layer = remote_layer("load", writes=True)
    progress = Progress("loaded")
    try:
        result = ops.load(layer, Path(args.file), progress)
    finally:
        progress.done()
        layer.close()
    print(
        f"loaded {result.loaded}, skipped {result.existing} existing, "
        f"{result.oversize} oversize"
    )
    return EXIT_OK


@guarded
def _clear(args: argparse.Namespace) -> int:
    from . import ops  # noqa: PLC0415

    layer = remote_layer("clear", writes=True)
    try:
        if not args.yes:
            confirm(layer, args.callee)
        deleted = ops.clear(layer, args.callee)
    finally:
        layer.close()
    print(f"deleted {deleted} keys")
    return EXIT_OK


def confirm(layer: RedisLayer, callee: str | None, stdin: TextIO | None = None) -> None:
    """Ask on a terminal for the namespace name; refuse when nobody can answer."""
    stdin = stdin or sys.stdin
    namespace = layer.settings.namespace
    if not stdin.isatty():
        raise Refused("refusing to clear without --yes: stdin is not a terminal to confirm on")
    what = f"the keys of callee {callee!r}" if callee else "every key"
    print(
        f"This deletes {what} in namespace {namespace!r} at {layer.settings.server_name}.\n"
        "Type the namespace name to confirm: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if stdin.readline().strip() != namespace:
        raise Refused("not confirmed; nothing was deleted")


# --------------------------------------------------------------------------- parser


def _add_operator_commands(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check this machine's settings and the server the way workers use them",
        description="Load settings as workers do and check, one verdict each (ok, FAIL, warn, "
        "skip): settings, disk directory, reachability, TLS, role, eviction policy, "
        "persistence, replicas, ACL rights on the namespace, lease expiry and the value size "
        "limit. Exit 1 if any check FAILs.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=_doctor)

    stats = sub.add_parser(
        "stats",
        help="entries, bytes and workers' counters of the namespace",
        description="Count the namespace's entries and value bytes (SCAN; total and per "
        "callee) and show the hit/miss/insert/error counters workers publish every "
        "REDIS_CACHE_STATS_INTERVAL seconds.",
    )
    stats.add_argument("--json", action="store_true", help="print everything as JSON")
    stats.set_defaults(handler=_stats)

    dump = sub.add_parser(
        "dump",
        help="write the namespace's entries to a dump file",
        description="Stream every entry of the namespace into FILE (written atomically), in "
        "the format REDIS_CACHE_PREPOPULATE and `load` read. Entries stay in their signed or "
        "checksummed envelopes.",
    )
    dump.add_argument("file", metavar="FILE", help="dump file to write")
    dump.set_defaults(handler=_dump)

    load = sub.add_parser(
        "load",
        help="copy a dump file's entries into the namespace (first writer wins)",
        description="Verify FILE whole (a truncated, foreign or corrupt file loads nothing), "
        "then SET NX each entry: existing keys are kept and counted, entries larger than "
        "REDIS_CACHE_MAX_VALUE_BYTES are skipped and counted. Dumps are for deterministic "
        "entries: loaded entries get no TTL, whatever REDIS_CACHE_TTL says. Refused under "
        "REDIS_CACHE_READ_ONLY=1.",
    )
    load.add_argument("file", metavar="FILE", help="dump file to read")
    load.set_defaults(handler=_load)

    clear = sub.add_parser(
        "clear",
        help="delete the namespace's keys (or one callee's)",
        description="Delete every key of the namespace (entries, locks, fences, signals and "
        "published counters), or with --callee only that callee's, by SCAN and UNLINK; never "
        "FLUSHDB. Asks for the namespace name on a terminal; without a terminal it needs "
        "--yes. Refused under REDIS_CACHE_READ_ONLY=1. Best run while no worker holds a lock.",
    )
    clear.add_argument("--callee", metavar="NAME", help="only this callee (module.qualname)")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(handler=_clear)


def _count(value: float) -> str:
    """Counters as plain numbers: 1234567, not 1.23457e+06; seconds with three decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis-cache",
        description="Share expensive function results across processes and machines.",
        epilog="Settings come from REDIS_CACHE_* variables, as in workers. Exit codes: 0 ok, "
        "1 a check or operation failed, 2 usage or configuration error.",
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
    _add_operator_commands(sub)
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
