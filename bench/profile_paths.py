"""Where the time of a hot path goes: cProfile tables of the paths the benchmarks time.

    python -m bench.profile_paths [memo|get|disk|remote|miss|dcache]...  (default: all)
    /path/to/torch-venv/bin/python -m bench.profile_paths memo   # with torch importable

Not part of ``run_all``: a tool for explaining a missed target. Each path is set up as
its benchmark sets it up, through the public API only (so it keeps working while the
library's internals change), run ``--calls`` times under cProfile, and the top of the
table by own time is printed, with the wall time per call measured without the
profiler beside it (cProfile inflates Python-heavy parts: read the table for
proportions, not for absolute figures).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import forget, payload
from bench.kernels import kernel, stored

PATHS = ("memo", "get", "disk", "remote", "miss", "dcache")
MATMUL = (("matmul", 4), {})
_ids = itertools.count()


def profile(title: str, make: Callable[[], Callable[[], object]], calls: int, top: int) -> None:
    """Time ``calls`` calls of a fresh ``make()``, then profile as many of another."""
    call = make()
    started = time.perf_counter_ns()
    for _ in range(calls):
        call()
    per_call = (time.perf_counter_ns() - started) / calls / 1000
    call = make()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    print(f"\n### {title}: {per_call:.2f} µs per call unprofiled; cProfile of {calls} calls")
    print(text[text.find("   ncalls") :].rstrip().replace(str(Path.home()), "~"))


@contextlib.contextmanager
def caches(with_server: bool) -> Iterator[tuple[Callable[..., Any], str | None]]:
    """A factory of caches on temp dirs (and a private redis-server when asked)."""
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import DeterministicCache, FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    made: list[Any] = []
    with contextlib.ExitStack() as stack:
        url = None
        if with_server:
            from tests.support.servers import RedisServer  # noqa: PLC0415

            url = stack.enter_context(RedisServer(config=["maxmemory-policy noeviction"])).url

        def make(deterministic: bool = False) -> Any:
            settings = Settings(
                dir=root / str(next(_ids)), url=url, namespace="profile", stats_interval=0
            )
            if deterministic:
                settings = Settings(
                    dir=settings.dir, url=url, namespace="profile", stats_interval=0,
                    deterministic=True, determinism="global",
                )  # fmt: skip
                cache: Any = DeterministicCache(settings)
            else:
                cache = FastCache(settings)
            made.append(cache)
            return cache

        try:
            yield make, url
        finally:
            for cache in made:
                cache.close()
            shutil.rmtree(root, ignore_errors=True)


def _distinct(cache: Any, size: int, calls: int) -> Callable[[], object]:
    """A call reading a new entry that only Redis holds, each time (``calls`` of them)."""
    runtime = cache._runtime()
    value = payload(size)
    params = [((next(_ids),), {}) for _ in range(calls)]
    for p in params:
        key = cache.entry_key(stored, p)
        runtime.redis.insert(key, runtime.codec.encode(key.key_id, value))
    it = iter(params)
    return lambda: cache.get(stored, next(it))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help=f"any of {', '.join(PATHS)}")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--size", type=int, default=100, help="value bytes (disk, remote)")
    args = parser.parse_args()
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    args.paths = args.paths or list(PATHS)
    remote = {"remote", "miss", "dcache"} & set(args.paths)
    calls = args.calls
    with caches(bool(remote)) as (make, _url):
        for path in args.paths:
            if path == "memo":
                recorded = make().record()(kernel)
                recorded("matmul", 4)
                profile("memo hit through record()", lambda r=recorded: lambda: r("matmul", 4),
                        calls * 50, args.top)  # fmt: skip
            elif path == "get":
                cache = make()
                cache.record()(kernel)("matmul", 4)
                profile("memo hit through get()", lambda c=cache: lambda: c.get(kernel, MATMUL),
                        calls * 10, args.top)  # fmt: skip
            elif path == "disk":
                cache = make()
                cache.insert(stored, (("disk",), {}), payload(args.size))
                cache.close()

                def disk_hit(c: Any = cache) -> Callable[[], object]:
                    def call() -> object:
                        forget(c)
                        return c.get(stored, (("disk",), {}))

                    return call

                profile(f"disk hit, {args.size} B (memo emptied)", disk_hit, calls, args.top)
            elif path == "remote":
                cache, n = make(), min(calls, 2000)
                profile(f"remote hit, {args.size} B, distinct keys, backfill on",
                        lambda c=cache, n=n: _distinct(c, args.size, n), n, args.top)  # fmt: skip
            elif path == "miss":
                recorded = make().record()(kernel)
                profile("fcache miss + insert", lambda r=recorded: lambda: r(next(_ids)),
                        min(calls, 2000), args.top)  # fmt: skip
            elif path == "dcache":
                recorded = make(deterministic=True).record()(kernel)
                profile("dcache global miss + record", lambda r=recorded: lambda: r(next(_ids)),
                        min(calls, 1000), args.top)  # fmt: skip


if __name__ == "__main__":
    main()
