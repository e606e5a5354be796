"""redis_cache.torch against torch's built-in Redis remote cache, on the same entries.

    /path/to/torch-venv/bin/python -m bench.bench_torch_remote [--quick] [--out bench/results]

10. Needs torch (``pip install -e '.[torch]'``; ``run_all`` runs it with
``--torch-python`` like benchmark 2, and reports it skipped without torch); starts a
private redis-server on a free port (``tests.support.servers``) and a fault proxy in
front of it. It compiles with torch.compile for about a minute first.

Entries: the FX graph and AOTAutograd entries torch itself writes when compiling two
small functions on CPU (captured from its ``put`` calls), plus GPU-like entries of
4 MiB (and 16 MiB without ``--quick``): JSON with an incompressible base64 payload,
the shape of an FX entry that bundles Triton binaries.

Baseline: ``torch._inductor.remote_cache.RedisRemoteCacheBackend`` (what
``TORCHINDUCTOR_REDIS_URL`` selects). Candidate: the backend ``redis_cache.torch``
installs. Both get torch's bytes and keys; timings are interleaved per repeat
(``bench.common.compare_each``), ratios candidate/baseline per repeat, median with
p10..p90. Also: bytes stored in Redis, memory kept after repeated gets, a planted
pickle, and a server that resets connections, hangs, or is slow.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import gc
import itertools
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import Options, Row, command_line, compare_each, report, row_from_pair, save

_TMP = Path(tempfile.mkdtemp(prefix="bench-torch-remote-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)  # also when skipped
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_TMP / "inductor")  # empty: torch compiles
SECRET = b"bench-torch-remote-secret-01"
HANG_CAP = 20.0  # seconds a hung server may hold a get before we call it blocked


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- entries


def capture_torch_entries(quick: bool) -> list[tuple[str, bytes]]:
    """The (key, bytes) pairs torch's remote caches write while compiling on CPU."""
    import torch  # noqa: PLC0415
    import torch._functorch.config as functorch_config  # noqa: PLC0415
    import torch._inductor.config as inductor_config  # noqa: PLC0415
    import torch._inductor.remote_cache as rc  # noqa: PLC0415

    captured: list[tuple[str, bytes]] = []

    class Recorder:
        def get(self, key: str) -> None:
            return None

        def put(self, key: str, data: bytes) -> None:
            captured.append((key, bytes(data)))

    recorder = Recorder()
    classes = (rc.RemoteFxGraphCache, rc.RemoteAOTAutogradCache)
    for cls in classes:
        cls.backend_override_cls = lambda: recorder
    inductor_config.fx_graph_remote_cache = True
    functorch_config.enable_remote_autograd_cache = True

    def tiny(x: Any) -> Any:
        return (x.sin() * 2 + x.cos()).sum()

    def mlp(x: Any, w1: Any, w2: Any) -> Any:
        return (torch.relu(x @ w1) @ w2).softmax(-1).sum()

    try:
        x = torch.randn(8, requires_grad=True)
        torch.compile(tiny)(x).backward()
        if not quick:
            args = [
                torch.randn(16, 32, requires_grad=True),
                torch.randn(32, 64),
                torch.randn(64, 8),
            ]
            torch.compile(mlp)(*args).backward()
    finally:
        for cls in classes:
            del cls.backend_override_cls
        inductor_config.fx_graph_remote_cache = None
        functorch_config.enable_remote_autograd_cache = None
    return captured


def gpu_like_entry(size: int) -> bytes:
    payload = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return json.dumps({"data": payload, "time_taken_ms": 9000}).encode()


# --------------------------------------------------------------------------- backends


def torch_backend(url: str) -> Any:
    import torch._inductor.remote_cache as rc  # noqa: PLC0415

    os.environ["TORCHINDUCTOR_REDIS_URL"] = url
    return rc.RedisRemoteCacheBackend("fx-graph-v1")


def our_backend(url: str, namespace: str, machine: str, **overrides: Any) -> Any:
    from redis_cache.blobs import BlobStore  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.torch import ENTRIES, TorchBackend  # noqa: PLC0415

    settings = Settings(
        url=url,
        namespace=namespace,
        secret=SECRET,
        dir=_TMP / machine,
        stats_interval=0,
        **overrides,
    )
    return TorchBackend(BlobStore(ENTRIES, settings, host="torch"))


_tags = itertools.count()


def timed_puts(backend: Any, entries: list[tuple[str, bytes]]) -> float:
    """ns per put of every entry under new keys (redis_cache never overwrites)."""
    tag = next(_tags)
    started = time.perf_counter_ns()
    for key, data in entries:
        backend.put(f"{key}#{tag}", data)
    return (time.perf_counter_ns() - started) / len(entries)


def timed_gets(backend: Any, entries: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter_ns()
    for key, data in entries:
        got = backend.get(key)
        if got != data:
            raise AssertionError(f"{key}: wrong or missing value")
    return (time.perf_counter_ns() - started) / len(entries)


# --------------------------------------------------------------------------- measurements


def timing_rows(url: str, groups: dict[str, list[tuple[str, bytes]]], opts: Options) -> list[Row]:
    """put, get from Redis on a new machine, get from disk in a new process; torch as baseline."""
    theirs = torch_backend(url)
    rows = []
    for compression in ("auto", "zstd"):
        namespace = f"bench-timing-{compression}"
        ours = our_backend(url, namespace, f"writer-{compression}", compression=compression)
        for entries in groups.values():
            for key, data in entries:
                theirs.put(key, data)
                ours.put(key, data)
        ours.store.close()  # flush this machine's disk copies
        machines = itertools.count()
        label = "redis_cache" if compression == "auto" else "redis_cache, zstd"
        for case, entries in groups.items():
            repeat = opts.n(9, 3) if len(entries[0][1]) < 2**21 else opts.n(5, 2)

            def fresh(machine: str, c: str = compression, ns: str = namespace) -> Any:
                backend = our_backend(url, ns, machine, compression=c)
                backend.get("warm-up: connect")  # a miss; the connection is made untimed
                return backend

            def new_machine_get(
                e: list[tuple[str, bytes]] = entries, c: str = compression, m: Any = machines
            ) -> float:
                backend = fresh(f"reader-{c}-{next(m)}")
                try:
                    return timed_gets(backend, e)
                finally:
                    backend.store.close()

            def new_process_get(
                e: list[tuple[str, bytes]] = entries, c: str = compression
            ) -> float:
                backend = fresh(f"writer-{c}")  # the writer's disk, an empty memo
                try:
                    return timed_gets(backend, e)
                finally:
                    backend.store.close()

            for what, candidate in ((f"{label} put", lambda e=entries, b=ours: timed_puts(b, e)),):
                pair = compare_each(
                    ("torch put", lambda e=entries: timed_puts(theirs, e)),
                    (what, candidate),
                    repeat=repeat,
                )
                rows.append(row_from_pair("torch remote cache: put", f"{case}, {label}", pair))
            for what, candidate in (
                (f"{label} get, new machine (Redis)", new_machine_get),
                (f"{label} get, new process (disk)", new_process_get),
            ):
                pair = compare_each(
                    ("torch get (Redis)", lambda e=entries: timed_gets(theirs, e)),
                    (what, candidate),
                    repeat=repeat,
                )
                rows.append(row_from_pair("torch remote cache: get", f"{case}, {what}", pair))
        ours.store.close()
    return rows


def stored_bytes(
    url: str, server: Any, groups: dict[str, list[tuple[str, bytes]]]
) -> list[dict[str, Any]]:
    client = server.client()
    theirs = torch_backend(url)
    out = []
    for label, entries in groups.items():
        namespace = f"bench-bytes-{abs(hash(label)) % 10**6}"
        ours = our_backend(url, namespace, f"bytes-{namespace}")
        prefix = f"bytes:{namespace}:"
        for key, data in entries:
            theirs.put(prefix + key, data)
            ours.put(key, data)
        ours.store.close()
        their_names = [prefix + key for key, _ in entries]
        our_names = [
            n
            for n in client.scan_iter(f"redis_cache:*:{namespace}:*")
            if client.type(n) == b"string"
        ]
        out.append(
            {
                "entries": label,
                "raw_bytes": sum(len(d) for _, d in entries),
                "torch_strlen": sum(client.strlen(n) for n in their_names),
                "ours_strlen": sum(client.strlen(n) for n in our_names),
                "torch_memory_usage": sum(client.memory_usage(n) or 0 for n in their_names),
                "ours_memory_usage": sum(client.memory_usage(n) or 0 for n in our_names),
            }
        )
    return out


def kept_memory(url: str, entries: list[tuple[str, bytes]], rounds: int) -> dict[str, float]:
    """MiB still allocated after a put and ``rounds`` gets of every entry (results dropped)."""
    out = {}
    for name, make in (
        ("torch", lambda: torch_backend(url)),
        ("redis_cache", lambda: our_backend(url, "bench-memory", "memory")),
    ):
        backend = make()
        backend.get("warm-up: connect")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key, data in entries:
            backend.put(f"mem:{key}", data)
        for _ in range(rounds):
            for key, _data in entries:
                backend.get(f"mem:{key}")
        gc.collect()
        label = "redis_cache, right after (disk copies queued)" if name == "redis_cache" else name
        out[label] = (tracemalloc.get_traced_memory()[0] - before) / 2**20
        if name == "redis_cache":
            # Disk copies wait in the (bounded) backfill queue for an idle moment;
            # once written, what stays is what the process keeps for good.
            from redis_cache import runtime  # noqa: PLC0415

            runtime._flush_at_exit()
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - before) / 2**20
            out["redis_cache, once its disk copies are written"] = kept
        tracemalloc.stop()
        if name == "redis_cache":
            backend.store.close()
    return out


def planted_pickle(url: str, server: Any) -> dict[str, bool]:
    """Does a pickle planted in Redis run when torch reads the FX entry it sits under?"""
    import torch._inductor.remote_cache as rc  # noqa: PLC0415
    from torch._inductor.codecache import FxGraphCache  # noqa: PLC0415

    import redis_cache.torch as integration  # noqa: PLC0415
    from redis_cache.codec import Codec  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415

    ran = {}
    content = lambda marker: json.dumps(  # noqa: E731
        {"data": base64.b64encode(pickle.dumps(Exploit(marker))).decode()}
    ).encode()
    client = server.client()
    # torch's own backend: whoever can write to Redis writes what torch unpickles.
    os.environ["TORCHINDUCTOR_REDIS_URL"] = url
    marker = _TMP / "pwned-torch"
    client.set("pt2:fx-graph-v1::planted-a:c1", content(marker))
    list(
        FxGraphCache.iterate_over_candidates(
            False, rc.RemoteFxGraphCache("fx-graph-v1"), "planted-a"
        )
    )
    ran["torch built-in"] = marker.exists()
    # redis_cache: the same entry, well formed but unsigned, where our backend reads it.
    settings = Settings(
        url=url, namespace="bench-planted", secret=SECRET, dir=_TMP / "planter", stats_interval=0
    )
    staging = our_backend(url, "bench-planted", "planter")
    staging.put("pt2:fx-graph-v1::planted-b:c1", b"placeholder")
    staging.store.close()
    (name,) = [n for n in client.scan_iter("redis_cache:*:bench-planted:*") if b"torch" in n]
    digest = name.decode().rsplit("{", 1)[1].rstrip("}").encode()
    marker = _TMP / "pwned-ours"
    client.set(name, Codec(None).encode(digest, content(marker)))
    integration.install(dataclasses.replace(settings, dir=_TMP / "victim"))
    try:
        list(
            FxGraphCache.iterate_over_candidates(
                False, FxGraphCache.get_remote_cache(), "planted-b"
            )
        )
    finally:
        integration.uninstall()
    ran["redis_cache"] = marker.exists()
    return ran


def timed_get(backend: Any, key: str) -> tuple[float, str]:
    """Seconds one get took, and what it gave the caller: hit, miss, or the exception raised."""
    started = time.perf_counter()
    try:
        outcome = "miss" if backend.get(key) is None else "hit"
    except Exception as exc:  # torch's backend lets some redis errors through
        outcome = f"raises {type(exc).__name__}"
    return time.perf_counter() - started, outcome


def faults(server: Any, entries: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """A reader on a new machine, whose every get must go to Redis, while the server fails."""
    from tests.support.proxy import FaultProxy  # noqa: PLC0415

    _, data = entries[0]
    out: list[dict[str, Any]] = []
    scenario = itertools.count()
    with FaultProxy(*server.address) as proxy:

        def reader_and_keys(name: str, count: int) -> tuple[Any, list[str]]:
            """A fresh reader of ``count`` keys that only Redis holds; connected, healthy."""
            n = next(scenario)
            keys = [f"pt2:fx-graph-v1::fault-{n}-{i}:c1" for i in range(count)]
            if name == "torch built-in":
                writer = reader = torch_backend(proxy.url)
            else:
                writer = our_backend(proxy.url, "bench-faults", f"fault-writer-{n}")
                reader = our_backend(proxy.url, "bench-faults", f"fault-reader-{n}")
            for key in keys:
                writer.put(key, data)
            reader.get("warm-up: connect")
            return reader, keys

        def gets(reader: Any, keys: list[str]) -> dict[str, Any]:
            first, first_outcome = timed_get(reader, keys[0])
            more = [timed_get(reader, key) for key in keys[1:]]
            return {
                "first_get_s": first,
                "first_get": first_outcome,
                "next_gets_median_s": statistics.median(t for t, _ in more),
                "next_gets": sorted({o for _, o in more}),
            }

        for name in ("torch built-in", "redis_cache"):
            reader, keys = reader_and_keys(name, 56)
            proxy.drop()
            measured = gets(reader, keys[:51])
            proxy.pass_through()
            time.sleep(2.0)  # longer than redis_cache's first breaker cooldown (1 s)
            after = [timed_get(reader, key)[1] for key in keys[51:]]
            out.append(
                {
                    "backend": name,
                    "fault": "connections reset (server down), then back",
                    **measured,
                    "gets_after_recovery": after,
                }
            )
        for name in ("torch built-in", "redis_cache"):
            reader, keys = reader_and_keys(name, 11)
            proxy.blackhole()
            result: dict[str, Any] = {}

            def hung(r: Any = reader, k: list[str] = keys, out: dict[str, Any] = result) -> None:
                out.update(gets(r, k))

            thread = threading.Thread(target=hung, daemon=True)
            started = time.perf_counter()
            thread.start()
            thread.join(HANG_CAP)
            blocked = time.perf_counter() - started if thread.is_alive() else None
            proxy.drop()  # releases a blocked client
            thread.join(30)
            proxy.pass_through()
            if blocked is not None:
                result = {"first_get_s": f"> {blocked:.0f} (blocked until the proxy reset it)"}
            out.append({"backend": name, "fault": "server accepts, never answers", **result})
        for name in ("torch built-in", "redis_cache"):
            reader, keys = reader_and_keys(name, 21)
            proxy.latency(0.02)
            measured = gets(reader, keys)
            proxy.pass_through()
            out.append({"backend": name, "fault": "+20 ms each way (slow)", **measured})
    return out


# --------------------------------------------------------------------------- run


def run(opts: Options) -> dict[str, Any]:
    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        reason = f"torch is not importable ({exc})"
        print(f"skipped: {reason}")
        save("torch_remote", {"skipped": reason, "python": sys.executable}, opts.out)
        return {"skipped": reason}
    from tests.support.servers import RedisServer  # noqa: PLC0415

    try:
        started = time.monotonic()
        real = capture_torch_entries(opts.quick)
        print(
            f"captured {len(real)} torch entries ({sum(len(d) for _, d in real)} bytes) "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        groups = {f"torch CPU entries (n={len(real)})": real}
        sizes = [4] if opts.quick else [4, 16]
        for mib in sizes:
            groups[f"GPU-like {mib} MiB"] = [
                (f"pt2:fx-graph-v1::gpu-{mib}:c1", gpu_like_entry(mib * 2**20))
            ]
        with RedisServer() as server:
            url = server.url
            rows = report(
                "redis_cache.torch vs torch's Redis backend", timing_rows(url, groups, opts)
            )
            sizes_out = stored_bytes(url, server, groups)
            memory = kept_memory(url, real + groups["GPU-like 4 MiB"], opts.n(20, 5))
            security = planted_pickle(url, server)
            failure = faults(server, real)
        data = {
            "torch": torch.__version__,
            "python": sys.executable,
            "rows": [row.to_json() for row in rows],
            "stored_bytes": sizes_out,
            "kept_memory_mib": memory,
            "planted_pickle_ran": security,
            "faults": failure,
        }
        print(json.dumps({k: v for k, v in data.items() if k != "rows"}, indent=2, default=str))
        save("torch_remote", data, opts.out)
        return data
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    command_line(run, __doc__)
