"""``redis-cache``: the operator's command line.

Exit codes scripts can rely on: 0 success, 1 a check or operation failed,
2 usage or configuration error. Expected failures print one plain sentence,
never a traceback, and never a credential.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import config, exceptions
from .cli_support import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    Progress,
    Refused,
    byte_size,
    check_client_settings,
    count,
    disk_layer,
    guarded,
    human_bytes,
    is_configuration_error,
    print_json,
    remote_layer,
)

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .ops import NamespaceStats
    from .prune import DiskUsage, PruneReport


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # noqa: PLC0415 - keep `--help` fast

    try:
        demo.check_arguments(args.workers, args.kernels, args.seconds)
    except ValueError as exc:
        raise Refused(str(exc), EXIT_USAGE) from exc
    settings = config.load()
    if settings.has_remote:
        check_client_settings(settings)
    return demo.run(workers=args.workers, kernels=args.kernels, compile_seconds=args.seconds)


# --------------------------------------------------------------------------- commands


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor  # noqa: PLC0415

    report = doctor.run()
    if args.json:
        print_json(report.as_json())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


@guarded
def _stats(args: argparse.Namespace) -> int:
    """Sections, each with its text and JSON: the namespace in Redis, this machine's disk."""
    from . import ops, prune  # noqa: PLC0415

    settings = config.load()
    if args.zero or args.prometheus:
        return _stats_counters(args)
    remote: NamespaceStats | None = None
    local: DiskUsage | None = None
    if not args.local and settings.has_remote:
        layer = remote_layer("stats", writes=False)
        progress = Progress("counted")
        try:
            remote = ops.namespace_stats(layer, progress)
        finally:
            progress.done()
            layer.close()
    if args.local or not settings.has_remote:
        progress = Progress("counted")
        try:
            local = prune.disk_usage(disk_layer(), progress)
        finally:
            progress.done()
    if args.json:
        data: dict[str, Any] = remote.as_json() if remote is not None else {}
        if local is not None:
            data["local"] = local.as_json()
        print_json(data)
        return EXIT_OK
    sections = []
    if remote is not None:
        sections.append(render_stats(remote))
    if local is not None:
        sections.append(render_local(local, remote_configured=settings.has_remote))
    print("\n".join(sections))
    return EXIT_OK


def _stats_counters(args: argparse.Namespace) -> int:
    """``--zero`` forgets the published counters; ``--prometheus`` prints them as metrics."""
    from . import metrics, ops  # noqa: PLC0415

    layer = remote_layer("stats --zero" if args.zero else "stats --prometheus",
                         writes=args.zero)  # fmt: skip
    try:
        if args.zero:
            had = ops.zero_counters(layer)
            print("published counters zeroed" if had else "no published counters to zero")
            return EXIT_OK
        totals, per_callee = ops.read_counters(layer)
    finally:
        layer.close()
    owners = sorted(set(totals) | set(per_callee))
    print(metrics.exposition(
        s for owner in owners
        for s in metrics.samples(owner, totals.get(owner, {}), per_callee.get(owner, {}))
    ), end="")  # fmt: skip
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
        shown = " ".join(f"{k}={count(v)}" for k, v in sorted(counters.items()) if v)
        lines.append(f"counters {owner}: {shown or 'all zero'}")
    for owner, by_callee in sorted(result.callee_counters.items()):
        lines.append(f"  {owner:<7} {'hits':>9} {'misses':>8} {'hit %':>6} {'computed':>9} "
                     f"{'saved':>10}  callee")  # fmt: skip
        for callee, counters in sorted(by_callee.items()):
            lines.append("  " + _callee_line(callee, counters))
    return "\n".join(lines)


def _callee_line(callee: str, counters: dict[str, float]) -> str:
    from .ops import with_ratios  # noqa: PLC0415

    c = with_ratios(counters)
    hits = sum(int(c.get(k) or 0) for k in ("memo_hits", "disk_hits", "remote_hits"))
    ratio = "-" if c["hit_ratio"] is None else f"{100 * c['hit_ratio']:.1f}"
    saved = "-" if c["seconds_saved"] is None else f"{c['seconds_saved']:.1f}s"
    return (f"{'':<7} {hits:>9} {int(c.get('misses') or 0):>8} {ratio:>6} "
            f"{int(c.get('computations') or 0):>9} {saved:>10}  {callee}")  # fmt: skip


def render_local(usage: DiskUsage, *, remote_configured: bool = True) -> str:
    total = usage.total
    bound = human_bytes(usage.max_bytes) if usage.max_bytes else "unbounded"
    lines = [
        f"disk layer {usage.root}: {total.entries} entries, {human_bytes(total.bytes)} "
        f"({total.bytes} bytes), {human_bytes(total.disk_bytes)} on disk; "
        f"bound for fcache entries: {bound}"
    ]
    if not remote_configured:
        lines[0] += " (no remote layer: REDIS_CACHE_URL is not set)"
    for space, u in sorted(usage.spaces.items()):
        lines.append(f"  {space}: {u.entries} entries, {human_bytes(u.disk_bytes)} on disk")
    if usage.callees:
        lines.append(f"  {'entries':>9} {'bytes':>14}  callee")
        for name, u in sorted(usage.callees.items(), key=lambda kv: -kv[1].bytes):
            lines.append(f"  {u.entries:>9} {u.bytes:>14}  {name}")
    if usage.leftovers:
        lines.append(
            f"  {usage.leftovers} leftover files of interrupted writes (prune removes them)"
        )
    return "\n".join(lines)


@guarded
def _dump(args: argparse.Namespace) -> int:
    from . import dumpfile, ops, transfer  # noqa: PLC0415

    layer = remote_layer("dump", writes=False)
    progress = Progress("dumped")
    try:
        if progress.enabled:
            progress.total = ops.count_value_keys(layer, args.interface)
        records = transfer.records(layer, progress, args.interface)
        if args.file == "-":
            count = dumpfile.write_stream(sys.stdout.buffer, records)
        else:
            count = dumpfile.write(Path(args.file), records)
    finally:
        progress.done()
        layer.close()
    where = "stdout" if args.file == "-" else args.file
    # With the dump on stdout, the summary must not mix into it.
    print(f"dumped {count} entries to {where}", file=sys.stderr if args.file == "-" else sys.stdout)
    return EXIT_OK


@contextlib.contextmanager
def _input(file: str) -> Iterator[Path]:
    """A path to read; stdin is spooled to a temporary file (a dump is verified whole first)."""
    if file != "-":
        yield Path(file)
        return
    with tempfile.TemporaryDirectory(prefix="redis-cache-load-") as tmp:
        spooled = Path(tmp) / "stdin"
        with open(spooled, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield spooled


@guarded
def _load(args: argparse.Namespace) -> int:
    from . import transfer  # noqa: PLC0415

    layer = remote_layer("load", writes=True)
    progress = Progress("loaded")

    def on_total(total: int) -> None:
        progress.total = total

    try:
        with _input(args.file) as path:
            result = transfer.load(layer, path, progress, on_total)
    finally:
        progress.done()
        layer.close()
    print(
        f"loaded {result.loaded}, skipped {result.existing} existing, "
        f"{result.oversize} oversize, {result.expired} expired"
    )
    return EXIT_OK


@guarded
def _clear(args: argparse.Namespace) -> int:
    from . import ops  # noqa: PLC0415

    layer = remote_layer("clear", writes=True)
    progress = Progress("deleted", noun="keys")
    try:
        if not args.yes:
            confirm(layer, args.callee)
        if progress.enabled:
            progress.total = ops.count_doomed(layer, args.callee)
        deleted = ops.clear(layer, args.callee, progress)
    finally:
        progress.done()
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


@guarded
def _prune(args: argparse.Namespace) -> int:
    from . import prune  # noqa: PLC0415

    layer = disk_layer(args.max_bytes)
    if layer.max_bytes <= 0:
        raise Refused(
            "prune needs a bound: REDIS_CACHE_DISK_MAX_BYTES is 0 (unbounded); give --max-bytes",
            EXIT_USAGE,
        )
    report = prune.prune(
        layer, layer.max_bytes, dry_run=args.dry_run, wait=config.load().lock_timeout
    )
    if report is None:
        raise Refused(f"another process kept pruning {layer.root}; nothing was done")
    if args.json:
        print_json(report.as_json())
    else:
        print(render_prune(report))
    return EXIT_OK


def render_prune(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [
        f"disk layer {report.root}: {report.entries} fcache entries, "
        f"{human_bytes(report.bytes)} on disk; bound {human_bytes(report.max_bytes)}",
        f"{verb} {report.removed} least recently used entries ({human_bytes(report.removed_bytes)})"
        f"; {human_bytes(report.bytes_after)} left",
    ]
    if report.kept_in_use:
        lines.append(f"kept {report.kept_in_use} entries used while pruning")
    if report.leftovers:
        lines.append(f"{verb} {report.leftovers} leftover files of interrupted writes")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parser


def _add_operator_commands(sub: Any) -> None:
    """The operator's commands, one small function each (their help is the manual)."""
    for add in (_add_doctor, _add_stats, _add_dump, _add_load, _add_clear, _add_prune):
        add(sub)


def _add_doctor(sub: Any) -> None:
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


def _add_stats(sub: Any) -> None:
    stats = sub.add_parser(
        "stats",
        help="entries, bytes and workers' counters of the namespace",
        description="Count the namespace's entries and value bytes (SCAN; total and per "
        "callee) and show the hit/miss/insert/error counters workers publish every "
        "REDIS_CACHE_STATS_INTERVAL seconds. With --local, or without REDIS_CACHE_URL, "
        "count this machine's disk layer instead (entries and bytes per interface and "
        "callee, from the directory tree alone).",
    )
    stats.add_argument("--json", action="store_true", help="print everything as JSON")
    stats.add_argument(
        "--local", action="store_true", help="this machine's disk layer, not the namespace"
    )
    shown = stats.add_mutually_exclusive_group()
    shown.add_argument(
        "--zero", action="store_true", help="forget the counters workers published (not entries)"
    )
    shown.add_argument(
        "--prometheus",
        action="store_true",
        help="print the published counters in the Prometheus text format",
    )
    stats.set_defaults(handler=_stats)


def _add_dump(sub: Any) -> None:
    dump = sub.add_parser(
        "dump",
        help="write the namespace's entries to a dump file",
        description="Stream every entry of the namespace into FILE (written atomically), in "
        "the format REDIS_CACHE_PREPOPULATE and `load` read, with each entry's expiry. "
        "Entries stay in their signed or checksummed envelopes. FILE - writes to stdout.",
    )
    dump.add_argument("file", metavar="FILE", help="dump file to write, or - for stdout")
    dump.add_argument(
        "--interface",
        choices=("fcache", "dcache"),
        help="only this interface's entries (default: both)",
    )
    dump.set_defaults(handler=_dump)


def _add_load(sub: Any) -> None:
    load = sub.add_parser(
        "load",
        help="copy a dump file's entries into the namespace (first writer wins)",
        description="Verify FILE whole (a truncated, foreign or corrupt file loads nothing), "
        "then SET NX each entry: existing keys are kept and counted, entries larger than "
        "REDIS_CACHE_MAX_VALUE_BYTES are skipped and counted. An entry keeps the expiry it "
        "had when dumped (one that has passed is skipped and counted); entries dumped "
        "without a TTL get none, whatever REDIS_CACHE_TTL says. FILE - reads stdin. "
        "Refused under REDIS_CACHE_READ_ONLY=1.",
    )
    load.add_argument("file", metavar="FILE", help="dump file to read, or - for stdin")
    load.set_defaults(handler=_load)


def _add_clear(sub: Any) -> None:
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


def _add_prune(sub: Any) -> None:
    prune = sub.add_parser(
        "prune",
        help="bring this machine's disk layer within its bound (least recently used first)",
        description="Remove the least recently used fcache entries of this machine's disk "
        "layer (REDIS_CACHE_DIR, namespace REDIS_CACHE_NAMESPACE) until they occupy at most "
        "90%% of the bound, and leftovers of interrupted writes. Safe while workers run. "
        "dcache entries are never removed. The bound is REDIS_CACHE_DISK_MAX_BYTES unless "
        "--max-bytes is given.",
    )
    prune.add_argument(
        "--max-bytes", type=byte_size, metavar="SIZE", help="the bound, e.g. 500M or 20G"
    )
    prune.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(handler=_prune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis-cache",
        description="Share expensive function results across processes and machines.",
        epilog="Settings come from REDIS_CACHE_* variables, as in workers. Exit codes: 0 ok, "
        "1 a check or operation failed, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--url",
        metavar="URL",
        help="REDIS_CACHE_URL for this run (a password here shows in the process list: "
        "prefer the variable for credentials)",
    )
    parser.add_argument("--namespace", metavar="NAME", help="REDIS_CACHE_NAMESPACE for this run")
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
    demo.set_defaults(handler=guarded(_demo))
    _add_operator_commands(sub)
    return parser


def version_line() -> str:
    from importlib import metadata  # noqa: PLC0415

    try:
        ours = metadata.version("redis_cache")
    except metadata.PackageNotFoundError:  # run from a source tree
        ours = "unknown"
    try:
        client = metadata.version("redis")
    except metadata.PackageNotFoundError:
        client = "missing"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"redis-cache {ours} (python {python}, redis-py {client})"


def apply_overrides(args: argparse.Namespace) -> None:
    """``--url``/``--namespace`` win over the environment, for this run and its children."""
    for value, variable in (
        (args.url, "REDIS_CACHE_URL"),
        (args.namespace, "REDIS_CACHE_NAMESPACE"),
    ):
        if value is not None:
            os.environ[variable] = value
    config.reset()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_overrides(args)
    handler: Handler = args.handler
    try:
        return handler(args)
    except exceptions.CacheError as exc:
        if is_configuration_error(exc):
            print(f"redis-cache: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"redis-cache: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `redis-cache stats | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
