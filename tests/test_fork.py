"""Processes that fork after import (issue 9 item 10): no lock or thread crosses a fork.

A child forked while another thread of the parent held a lock inherits it held by
a thread that does not exist in the child: its first use hangs forever. Children
here are real ``os.fork()`` children; the parent polls ``waitpid`` with a bound,
kills a child that is still running, and asserts that every child exited 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import lease
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer, free_port

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

CHILD_TIMEOUT = 20.0  # a child that has not exited by then hangs


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


def wait_for_child(pid: int, timeout: float = CHILD_TIMEOUT) -> int | None:
    """The child's exit code, or None if it was still running after ``timeout`` (killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def fork_and_run(child: Callable[[], None], timeout: float = CHILD_TIMEOUT) -> int | None:
    """Run ``child`` in a forked child (exit 0 if it returns, 1 if it raises)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # the exit code is the report
            code = 1
        finally:
            os._exit(code)
    return wait_for_child(pid, timeout)


def settings(tmp: Path, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "connect_timeout": 0.5,
        "socket_timeout": 2.0,
        "breaker_cooldown": 0.0,
        "breaker_max_cooldown": 0.0,
        "lock_timeout": 5.0,
        "stats_interval": 0,
    }
    return make_settings(tmp, **{**options, **overrides})


class Farm:
    """The caches of one worker process: fcache (shared, local-only, and on a dead server)
    and dcache under global determinism."""

    def __init__(self, tmp: Path, server: RedisServer, namespace: str) -> None:
        common = {"url": server.url, "namespace": namespace}
        self.fcache = FastCache(settings(tmp / "f", **common))
        self.local = FastCache(settings(tmp / "l"))
        self.dead = FastCache(
            settings(tmp / "d", url=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
        )
        self.dcache = DeterministicCache(
            settings(tmp / "g", deterministic=True, determinism="global", **common)
        )
        for cache in (self.fcache, self.local, self.dcache):  # runtimes built, clients connected
            cache.record()(kernel)(-1)
        self.dead.get(kernel, ((-1,), {}))

    def use_every_lock(self, x: int) -> None:
        """One call through each lock the library owns (memo, breaker, renewer, ...)."""
        assert self.fcache.record()(kernel)(x) == kernel(x)  # memo, backfill queue, client
        assert self.local.record()(kernel)(x) == kernel(x)
        assert self.dead.get(kernel, ((x,), {})) is None  # the breaker
        assert self.dcache.record()(kernel)(x) == kernel(x)  # the lease renewer
        with self.fcache.lock(timeout=2.0):  # the interface's own lock
            pass

    def close(self) -> None:
        for cache in (self.fcache, self.local, self.dead, self.dcache):
            cache.close()


@pytest.fixture
def farm(tmp_path: Path, redis_server: RedisServer, namespace: str) -> Iterator[Farm]:
    farm = Farm(tmp_path, redis_server, namespace)
    yield farm
    farm.close()


def test_item10_children_forked_while_threads_use_the_library_never_hang(farm: Farm) -> None:
    """Threads keep taking the library's locks while the main thread forks, again and again.

    A tiny GIL switch interval makes a fork land inside another thread's critical
    section often (on f951cf4: 3 to 9 hung children in 100).
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(call: Callable[[int], Any], start: int) -> None:
        x = start
        while not stop.is_set():
            try:
                call(x)
            except BaseException as exc:
                errors.append(exc)
                return
            x += 1

    calls: list[Callable[[int], Any]] = [
        lambda x: farm.dead.get(kernel, ((x,), {})),  # breaker
        lambda x: farm.local.record()(kernel)(x),  # memo
        lambda x: farm.dcache.record()(kernel)(x),  # renewer, memo
    ]
    threads = [
        threading.Thread(target=hammer, args=(call, 10_000 * (1 + i)), daemon=True)
        for i, call in enumerate(calls * 3)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    for t in threads:
        t.start()
    try:
        for n in range(100):
            time.sleep(0.002)
            code = fork_and_run(lambda n=n: farm.use_every_lock(-100 - n), timeout=10)  # type: ignore[misc]
            assert code is not None, f"child {n}, forked while threads held locks, hung"
            assert code == 0, f"child {n} failed (exit {code})"
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors


# --------------------------------------------------------------------------- each lock


def runtime_of(cache: CacheInterface) -> Any:
    return cache._runtime()


LOCKS: dict[str, Callable[[Farm], Any]] = {
    "memo": lambda farm: runtime_of(farm.fcache).memo._lock,
    "breaker": lambda farm: runtime_of(farm.dead).policy.remote.breaker._lock,
    "renewer": lambda farm: lease.RENEWER._cond,
    "interface": lambda farm: farm.fcache._lock,
    "interface runtime": lambda farm: farm.fcache._runtime_lock,
    "client provider": lambda farm: runtime_of(farm.fcache).redis.provider._lock,
    "backfill": lambda farm: runtime_of(farm.fcache)._backfiller._lock,
    "backfill queue": lambda farm: runtime_of(farm.fcache)._backfiller._queue.mutex,
}


@contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10), "could not take the lock"
    try:
        yield
    finally:
        release.set()
        thread.join(10)


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_a_child_forked_while_a_thread_holds_a_library_lock_does_not_hang(
    farm: Farm, name: str
) -> None:
    # Some locks are taken only while something is built or started: let the child do it.
    if name == "client provider":
        runtime_of(farm.fcache).redis.close()
    if name == "interface runtime":
        farm.fcache.close()
    if name == "backfill":  # a runtime whose backfill thread has not started yet
        farm.fcache.close()
        assert farm.fcache.get(kernel, ((-5,), {})) is None
    lock = LOCKS[name](farm)
    with held_by_another_thread(lock):
        code = fork_and_run(lambda: farm.use_every_lock(-1000))
    assert code is not None, f"a child forked while the {name} lock was held hung"
    assert code == 0


def backfill_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "redis_cache-backfill")


def test_item10_close_and_rebuild_leaves_no_backfill_thread_behind(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    common = {"url": redis_server.url, "namespace": namespace}
    writer = FastCache(settings(tmp_path / "writer", **common))
    for i in range(30):
        assert writer.insert(kernel, ((i,), {}), kernel(i))
    writer.close()
    before = backfill_threads()
    reader = FastCache(settings(tmp_path / "reader", **common))
    for i in range(30):
        # A remote hit fills this machine's disk through the backfill thread.
        assert reader.get(kernel, ((i,), {})) == redis_cache.Hit(kernel(i))
        reader.close()  # flushed and stopped; the next call builds a new runtime
    assert reader.stats().remote_hits == 30
    assert backfill_threads() <= before, f"{backfill_threads() - before} backfill threads leaked"
    assert reader.get(kernel, ((29,), {})) == redis_cache.Hit(kernel(29))  # the backfill landed
    assert reader.stats().disk_hits == 1
    reader.close()
