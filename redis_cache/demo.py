"""``redis-cache demo``: a small compile farm showing which layer serves each call.

Workers are separate processes (spawned, as a farm's would be) calling a slow,
pure "compile" through ``icache``. Without ``REDIS_CACHE_URL`` they share the
disk layer of one machine; with it, the redis layer too.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import tempfile
import time
from dataclasses import dataclass

from . import config

_compile_seconds = 0.3  # set in each worker process
DEMO_NAMESPACE = "redis-cache-demo"


def compile_kernel(op: str, m: int, n: int) -> dict[str, object]:
    """Stands in for an expensive, pure compilation (sleeps, then returns a 'binary')."""
    time.sleep(_compile_seconds)
    binary = hashlib.sha256(f"{op}:{m}x{n}".encode()).digest() * 8
    return {"op": op, "shape": (m, n), "binary": binary, "registers": (m * n) % 255}


@dataclass(frozen=True)
class CallReport:
    worker: int
    kernel: str
    served_by: str
    seconds: float


def _served_by(before: dict[str, float], after: dict[str, float]) -> str:
    for counter, label in (
        ("memo_hits", "memo"),
        ("disk_hits", "disk"),
        ("remote_hits", "redis"),
        ("computations", "compiled"),
    ):
        if after[counter] > before[counter]:
            return label
    return "waited"  # another process compiled it while we held back (single flight)


def _worker(
    index: int,
    kernels: list[tuple[str, int, int]],
    compile_seconds: float,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    global _compile_seconds
    _compile_seconds = compile_seconds
    import redis_cache  # noqa: PLC0415 - imported in the child, as a farm worker would

    cache = redis_cache.icache
    compile_cached = cache.record()(compile_kernel)
    # Connect (and, for dcache, check the server) before timing anything.
    cache.get(compile_kernel, (("warm-up", 0, 0), {}))
    order = kernels * 2
    random.Random(index).shuffle(order)
    for op, m, n in order:
        before = cache.stats().as_dict()
        started = time.perf_counter()
        compile_cached(op, m, n)
        elapsed = time.perf_counter() - started
        out.put(
            CallReport(
                index, f"{op}({m}x{n})", _served_by(before, cache.stats().as_dict()), elapsed
            )
        )
    cache.close()
    out.put(None)


def run(workers: int = 4, kernels: int = 6, compile_seconds: float = 0.3) -> int:
    settings = config.current()
    if not os.environ.get("REDIS_CACHE_DIR"):
        # A fresh directory per run, so the demo starts cold and shows every layer.
        os.environ["REDIS_CACHE_DIR"] = tempfile.mkdtemp(prefix="redis-cache-demo-")
    if settings.has_remote and not os.environ.get("REDIS_CACHE_NAMESPACE"):
        # Never mix demo entries into a real namespace; fcache ones expire.
        os.environ["REDIS_CACHE_NAMESPACE"] = DEMO_NAMESPACE
        os.environ.setdefault("REDIS_CACHE_TTL", "3600")
    disk_root = os.environ["REDIS_CACHE_DIR"]
    mode = "dcache (deterministic)" if config.deterministic_at_import() else "fcache"
    remote = settings.server_name if settings.has_remote else "none (memo + disk only)"
    print(
        f"redis-cache demo: {workers} workers, {kernels} kernels, {compile_seconds:g}s per compile"
    )
    print(f"  interface: icache = {mode}; remote layer: {remote}")
    print(f"  disk layer: {disk_root}")
    if settings.has_remote:
        print(f"  namespace: {os.environ['REDIS_CACHE_NAMESPACE']}")
        print("  each worker simulates its own machine: own disk, shared redis")
    ops = ["matmul", "conv2d", "softmax", "layernorm", "attention", "gelu", "reduce", "scan"]
    specs = [(ops[i % len(ops)], 64 << (i % 4), 32 << (i % 3)) for i in range(kernels)]

    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    started = time.perf_counter()
    procs = [
        ctx.Process(target=_worker, args=(i, specs, compile_seconds, out)) for i in range(workers)
    ]
    for index, p in enumerate(procs):
        if settings.has_remote:
            os.environ["REDIS_CACHE_DIR"] = os.path.join(disk_root, f"machine-{index}")
        p.start()  # a spawned child takes the environment as it is now
    os.environ["REDIS_CACHE_DIR"] = disk_root
    reports: list[CallReport] = []
    finished = 0
    while finished < workers:
        item = out.get(timeout=120)
        if item is None:
            finished += 1
            continue
        reports.append(item)
        print(
            f"  worker {item.worker}: {item.kernel:<22} {item.served_by:<9} "
            f"{item.seconds * 1000:8.1f} ms"
        )
    for p in procs:
        p.join()
    wall = time.perf_counter() - started

    counts: dict[str, int] = {}
    for r in reports:
        counts[r.served_by] = counts.get(r.served_by, 0) + 1
    compiled = counts.get("compiled", 0)
    naive = len(reports) * compile_seconds
    spent = sum(r.seconds for r in reports)
    print("summary:")
    print(
        f"  calls: {len(reports)}; served by "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    print(f"  compilations: {compiled} (without a cache: {len(reports)})")
    print(
        f"  time in calls: {spent:.1f}s; without a cache: {naive:.1f}s; saved {naive - spent:.1f}s"
    )
    print(f"  wall time: {wall:.1f}s")
    return 0 if all(p.exitcode == 0 for p in procs) else 1
