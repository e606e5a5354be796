"""Tests of the distributed lease lock (redis_cache.lease).

The first half runs on fakeredis (with Lua through lupa); the second half needs
real redis-server processes from the ``redis_server`` / ``redis_cluster`` fixtures.
No assertion is on wall-clock time: waits are bounded, and latencies are printed.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.cluster

from redis_cache.exceptions import DistributedLockTimeoutError, LockTimeoutError
from redis_cache.lease import (
    RENEW_THREAD_NAME,
    CommitResult,
    EntryKeys,
    LeaseLock,
    LeaseStats,
)


def entry_keys(prefix: str) -> EntryKeys:
    tag = "{" + prefix + "}"
    return EntryKeys(
        value=f"test:lease:{tag}:val",
        lock=f"test:lease:{tag}:lock",
        fence=f"test:lease:{tag}:fence",
        signal=f"test:lease:{tag}:sig",
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def renew_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == RENEW_THREAD_NAME and t.is_alive())


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def keys(prefix: str) -> EntryKeys:
    return entry_keys(prefix)


@pytest.fixture
def fake() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


# -- fakeredis ---------------------------------------------------------------------------


def test_acquire_release(fake: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(fake, keys, lease=5, renew=False)
    assert lock.fence is None
    assert lock.try_acquire() is True
    assert lock.fence == 1
    assert fake.get(keys.lock) == f"{lock.token}:1".encode()
    assert lock.release() is True
    assert lock.fence is None
    assert not fake.exists(keys.lock)
    assert lock.release() is False  # already released
    assert lock.try_acquire() is True
    assert lock.fence == 2
    assert lock.release() is True


def test_second_acquirer_gets_pttl(fake: redis.Redis, keys: EntryKeys) -> None:
    a = LeaseLock(fake, keys, lease=5, renew=False)
    b = LeaseLock(fake, keys, lease=5, renew=False)
    assert a.try_acquire() is True
    left = b.try_acquire()
    assert left is not True
    assert 0 < left <= 5
    assert b.fence is None
    a.release()
    assert b.try_acquire() is True
    b.release()


def test_reacquire_while_held_is_a_bug(fake: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(fake, keys, lease=5, renew=False)
    assert lock.try_acquire() is True
    with pytest.raises(RuntimeError):
        lock.try_acquire()
    lock.release()


def test_release_by_non_owner_refused(fake: redis.Redis, keys: EntryKeys) -> None:
    a = LeaseLock(fake, keys, lease=0.2, renew=False)
    b = LeaseLock(fake, keys, lease=5, renew=False)
    assert b.release() is False  # never acquired
    assert a.try_acquire() is True
    assert b.release() is False
    assert fake.exists(keys.lock)
    # a's lease runs out, b takes over: a may no longer release b's lock
    assert b.acquire(timeout=5) is True
    assert a.release() is False
    assert fake.get(keys.lock) == f"{b.token}:{b.fence}".encode()
    assert b.release() is True


def test_fence_increments_once_per_acquisition(fake: redis.Redis, keys: EntryKeys) -> None:
    a = LeaseLock(fake, keys, lease=5, renew=False)
    b = LeaseLock(fake, keys, lease=5, renew=False)
    fences = []
    for _ in range(3):
        assert a.try_acquire() is True
        fences.append(a.fence)
        for _ in range(4):
            assert b.try_acquire() is not True  # failed attempts do not count
        assert int(fake.get(keys.fence) or 0) == fences[-1]
        a.release()
    assert fences == [1, 2, 3]
    assert fake.pttl(keys.fence) > 0  # the counter expires eventually (no key leak)


def test_commit_written_then_existed(fake: redis.Redis, keys: EntryKeys) -> None:
    stats = LeaseStats()
    a = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    b = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    assert a.try_acquire() is True
    assert a.commit(b"first") is CommitResult.WRITTEN
    assert a.fence is None
    assert not fake.exists(keys.lock)
    assert fake.llen(keys.signal) == 1  # waiters are woken
    assert b.try_acquire() is True
    assert b.commit(b"second") is CommitResult.EXISTED
    assert fake.get(keys.value) == b"first"
    assert not fake.exists(keys.lock)
    assert fake.pttl(keys.value) == -1
    assert stats.acquisitions == 2
    assert stats.fencing_rejections == 0


def test_commit_with_ttl(fake: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(fake, keys, lease=5, renew=False)
    assert lock.try_acquire() is True
    assert lock.commit(b"v", ttl_ms=60_000) is CommitResult.WRITTEN
    assert 0 < fake.pttl(keys.value) <= 60_000


def test_fenced_commit(fake: redis.Redis, keys: EntryKeys) -> None:
    stats = LeaseStats()
    a = LeaseLock(fake, keys, lease=0.2, renew=False, stats=stats)
    b = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    assert a.try_acquire() is True
    assert b.acquire(timeout=5) is True  # after a's lease ran out
    assert b.fence is not None and a.fence is not None and b.fence > a.fence
    assert a.commit(b"from a") is CommitResult.FENCED
    assert fake.get(keys.value) is None
    assert stats.fencing_rejections == 1
    assert b.commit(b"from b") is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"from b"


def test_commit_without_acquiring_respects_holder(fake: redis.Redis, keys: EntryKeys) -> None:
    holder = LeaseLock(fake, keys, lease=5, renew=False)
    outsider = LeaseLock(fake, keys, lease=5, renew=False)
    assert holder.try_acquire() is True
    assert outsider.commit(b"x") is CommitResult.FENCED
    assert holder.commit(b"h") is CommitResult.WRITTEN
    assert outsider.commit(b"x") is CommitResult.EXISTED
    assert fake.get(keys.value) == b"h"


def test_renewal_keeps_lock_alive(fake: redis.Redis, keys: EntryKeys) -> None:
    holder = LeaseLock(fake, keys, lease=0.3, renew=True)
    other = LeaseLock(fake, keys, lease=0.3, renew=False)
    assert holder.try_acquire() is True
    end = time.monotonic() + 1.2  # four leases
    attempts = 0
    while time.monotonic() < end:
        assert other.try_acquire() is not True
        attempts += 1
        time.sleep(0.05)
    assert attempts > 0
    assert not holder.lost
    assert holder.release() is True
    assert other.try_acquire() is True
    other.release()


def test_renewal_stops_on_release(fake: redis.Redis, keys: EntryKeys) -> None:
    before = renew_threads()
    lock = LeaseLock(fake, keys, lease=30, renew=True)
    assert lock.try_acquire() is True
    assert renew_threads() == before + 1
    lock.release()  # must not wait for a 10 s renewal interval
    assert renew_threads() == before
    assert lock.try_acquire() is True
    assert renew_threads() == before + 1
    assert lock.commit(b"v") is CommitResult.WRITTEN
    assert renew_threads() == before


def test_renewal_notices_lost_lock(fake: redis.Redis, keys: EntryKeys) -> None:
    stats = LeaseStats()
    lock = LeaseLock(fake, keys, lease=0.3, renew=True, stats=stats)
    assert lock.try_acquire() is True
    fake.set(keys.lock, "somebody-else:99", px=5000)  # e.g. an operator or a split brain
    assert wait_until(lambda: lock.lost, timeout=5)
    assert stats.renew_failures == 1
    assert lock.commit(b"v") is CommitResult.FENCED
    assert fake.get(keys.value) is None


def test_renewal_errors_for_a_lease_mark_lost(keys: EntryKeys) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    stats = LeaseStats()
    lock = LeaseLock(client, keys, lease=0.3, renew=True, stats=stats)
    assert lock.try_acquire() is True
    server.connected = False  # every command now raises ConnectionError
    try:
        assert wait_until(lambda: lock.lost, timeout=5)
        assert stats.renew_failures >= 1
    finally:
        server.connected = True
    assert wait_until(lambda: not client.exists(keys.lock), timeout=5)
    assert lock.release() is False


def test_dropped_lock_stops_renewing(fake: redis.Redis, keys: EntryKeys) -> None:
    # Load the scripts first: fakeredis keeps the first NoScriptError (and so the frames
    # of the LeaseLock that hit it) alive inside its fake socket.
    warm = LeaseLock(fake, keys, lease=0.3, renew=False)
    assert warm.try_acquire() is True
    assert warm.release() is True
    before = renew_threads()
    lock = LeaseLock(fake, keys, lease=0.3, renew=True)
    assert lock.try_acquire() is True
    assert renew_threads() == before + 1
    del lock
    gc.collect()
    assert wait_until(lambda: renew_threads() == before, timeout=5)
    assert wait_until(lambda: not fake.exists(keys.lock), timeout=5)


def test_acquire_timeout_message(fake: redis.Redis, keys: EntryKeys) -> None:
    holder = LeaseLock(fake, keys, lease=5, renew=False)
    waiter = LeaseLock(fake, keys, lease=5, renew=False)
    assert holder.try_acquire() is True
    with pytest.raises(DistributedLockTimeoutError) as info:
        waiter.acquire(timeout=0.2)
    assert isinstance(info.value, LockTimeoutError)
    assert keys.lock in str(info.value)
    assert "0.2" in str(info.value)
    with pytest.raises(DistributedLockTimeoutError):
        waiter.acquire(timeout=0)  # a single attempt
    holder.release()


def test_acquire_until_returns_false(fake: redis.Redis, keys: EntryKeys) -> None:
    stats = LeaseStats()
    holder = LeaseLock(fake, keys, lease=5, renew=False)
    waiter = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    assert holder.try_acquire() is True
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(
            waiter.acquire(timeout=10, until=lambda: bool(fake.exists(keys.value)))
        )
    )
    thread.start()
    # Commit once the waiter saw the lock held (had it come later, it would simply have
    # acquired the free lock: callers check the value again after acquiring).
    assert wait_until(lambda: stats.waits == 1)
    assert holder.commit(b"v") is CommitResult.WRITTEN
    thread.join(10)
    assert result == [False]
    assert waiter.fence is None


def test_takeover_counted_only_when_lease_ran_out(fake: redis.Redis, keys: EntryKeys) -> None:
    stats = LeaseStats()
    dying = LeaseLock(fake, keys, lease=0.2, renew=False)
    waiter = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    assert dying.try_acquire() is True
    assert waiter.acquire(timeout=5) is True
    assert stats.takeovers == 1
    assert stats.waits == 1
    assert stats.wait_seconds > 0

    # A clean hand-over is not a takeover.
    second = LeaseLock(fake, keys, lease=5, renew=False, stats=stats)
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(second.acquire(timeout=10)))
    thread.start()
    assert wait_until(lambda: stats.waits == 2)
    waiter.release()
    thread.join(10)
    assert got == [True]
    assert stats.takeovers == 1
    second.release()


def test_wait_for_signal(fake: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(fake, keys, lease=5, renew=False)
    assert lock.wait_for_signal(0) is False
    assert lock.wait_for_signal(0.05) is False
    assert lock.try_acquire() is True
    lock.release()
    # The token is rotated in place: every waiter sees it, it stays for the next one.
    assert all(lock.wait_for_signal(0.05) for _ in range(3))
    assert fake.llen(keys.signal) == 1
    assert lock.try_acquire() is True  # acquiring consumes it
    assert fake.llen(keys.signal) == 0
    lock.release()


def test_held_context_manager(fake: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(fake, keys, lease=5, renew=False)
    with lock.held(1) as acquired:
        assert acquired is True
        assert fake.exists(keys.lock)
    assert not fake.exists(keys.lock)
    with lock.held(1) as acquired:
        assert lock.commit(b"v") is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"v"
    with pytest.raises(KeyError), lock.held(1):
        raise KeyError("boom")
    assert not fake.exists(keys.lock)


def test_entry_keys_must_share_a_slot() -> None:
    with pytest.raises(ValueError):
        EntryKeys(value="{a}:val", lock="{b}:lock", fence="{a}:fence", signal="{a}:sig")
    with pytest.raises(ValueError):
        EntryKeys(value="{a}:x", lock="{a}:x", fence="{a}:fence", signal="{a}:sig")


def test_bad_arguments(fake: redis.Redis, keys: EntryKeys) -> None:
    with pytest.raises(ValueError):
        LeaseLock(fake, keys, lease=0)
    with pytest.raises(ValueError):
        LeaseLock(fake, keys, lease=1, max_block=0)
    lock = LeaseLock(fake, keys, lease=1, renew=False)
    with pytest.raises(ValueError):
        lock.acquire(-1)


def test_max_block_stays_below_socket_timeout(keys: EntryKeys) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), socket_timeout=1.0)
    assert LeaseLock(client, keys, lease=5).max_block <= 0.5


# -- real redis-server -------------------------------------------------------------------


def real_client(server: Any) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5.0)


@pytest.fixture
def rclient(redis_server: Any) -> Iterator[redis.Redis]:
    client = real_client(redis_server)
    yield client
    client.close()


@pytest.mark.real_redis
def test_real_threads_mutual_exclusion(redis_server: Any, keys: EntryKeys) -> None:
    stats = LeaseStats()
    guard = threading.Lock()
    state = {"inside": 0, "max_inside": 0}
    done: list[int] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        client = real_client(redis_server)
        try:
            for _ in range(3):
                lock = LeaseLock(client, keys, lease=5, stats=stats)
                if not lock.acquire(timeout=10):
                    raise AssertionError("acquire returned False without `until`")
                with guard:
                    state["inside"] += 1
                    state["max_inside"] = max(state["max_inside"], state["inside"])
                time.sleep(0.005)
                with guard:
                    state["inside"] -= 1
                if not lock.release():
                    raise AssertionError("release of a held lock refused")
            done.append(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(done) == list(range(8))
    assert state["max_inside"] == 1
    assert stats.acquisitions == 24
    assert stats.takeovers == 0
    print(f"\ncontention: {stats.waits} contended acquires, {stats.wait_seconds:.3f}s waited")


@pytest.mark.real_redis
def test_real_commit_wakes_all_waiters(
    redis_server: Any, rclient: redis.Redis, keys: EntryKeys, prefix: str
) -> None:
    holder = LeaseLock(rclient, keys, lease=5)
    assert holder.try_acquire() is True
    name = f"waiter-{uuid.uuid4().hex[:8]}"
    results: list[tuple[bool, float]] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        client = real_client(redis_server)
        client.client_setname(name)
        try:
            lock = LeaseLock(client, keys, lease=5)
            got = lock.acquire(timeout=20, until=lambda: bool(client.exists(keys.value)))
            results.append((got, time.monotonic()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    def blocked() -> int:
        return sum(
            1
            for c in rclient.client_list()
            if c.get("name") == name and c.get("cmd") == "brpoplpush"
        )

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: blocked() == 8, timeout=10)
    committed_at = time.monotonic()
    assert holder.commit(b"kernel") is CommitResult.WRITTEN
    for t in threads:
        t.join(30)
    assert not errors
    assert [got for got, _ in results] == [False] * 8
    assert rclient.get(keys.value) == b"kernel"
    latency = max(at for _, at in results) - committed_at
    print(f"\nwake-up of 8 blocked waiters: max latency {latency * 1000:.1f} ms")


@pytest.mark.real_redis
def test_real_lock_timeout(rclient: redis.Redis, keys: EntryKeys) -> None:
    holder = LeaseLock(rclient, keys, lease=5)
    waiter = LeaseLock(rclient, keys, lease=5)
    assert holder.try_acquire() is True
    try:
        with pytest.raises(DistributedLockTimeoutError) as info:
            waiter.acquire(timeout=0.5)
        assert keys.lock in str(info.value)
        assert "0.5" in str(info.value)
        assert info.value.lock == keys.lock
        assert info.value.timeout == 0.5
    finally:
        holder.release()


def _child_acquire_then_sigkill(url: str, keys: EntryKeys, out: Any) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    lock = LeaseLock(client, keys, lease=1.0)
    out.put(lock.fence if lock.try_acquire() is True else None)
    out.close()
    out.join_thread()  # Queue.put only hands the item to a feeder thread: flush it first
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.real_redis
@pytest.mark.slow
def test_real_sigkilled_holder_is_taken_over(
    redis_server: Any, rclient: redis.Redis, keys: EntryKeys
) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child_acquire_then_sigkill, args=(redis_server.url, keys, out))
    child.start()
    try:
        child_fence = out.get(timeout=60)
        child.join(60)
    finally:
        if child.is_alive():
            child.kill()
    assert child_fence is not None
    assert child.exitcode == -signal.SIGKILL
    stats = LeaseStats()
    waiter = LeaseLock(rclient, keys, lease=5, stats=stats)
    started = time.monotonic()
    assert waiter.acquire(timeout=10) is True
    print(f"\ntook over a SIGKILLed holder (lease 1 s) after {time.monotonic() - started:.3f}s")
    assert waiter.fence is not None and waiter.fence > child_fence
    assert stats.takeovers == 1
    waiter.release()


def _child_hold_then_commit(url: str, keys: EntryKeys, ready: Any, go: Any, out: Any) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    lock = LeaseLock(client, keys, lease=0.5, renew=True)
    ready.put(lock.fence if lock.try_acquire() is True else None)
    go.get(timeout=60)
    result = lock.commit(b"child")
    out.put((result.value, lock.lost))


@pytest.mark.real_redis
@pytest.mark.slow
@pytest.mark.parametrize("parent_commits", [True, False])
def test_real_sigstopped_holder_is_fenced(
    redis_server: Any, rclient: redis.Redis, keys: EntryKeys, parent_commits: bool
) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    child = ctx.Process(
        target=_child_hold_then_commit, args=(redis_server.url, keys, ready, go, out)
    )
    child.start()
    stopped = False
    try:
        child_fence = ready.get(timeout=60)
        assert child_fence is not None
        assert child.pid is not None
        os.kill(child.pid, signal.SIGSTOP)
        stopped = True
        parent = LeaseLock(rclient, keys, lease=5)
        assert parent.acquire(timeout=10) is True  # the child's renewal is frozen
        assert parent.fence is not None and parent.fence > child_fence
        if parent_commits:
            assert parent.commit(b"parent") is CommitResult.WRITTEN
        os.kill(child.pid, signal.SIGCONT)
        stopped = False
        go.put(1)
        result, lost = out.get(timeout=60)
        child.join(60)
    finally:
        if stopped and child.pid is not None:
            os.kill(child.pid, signal.SIGCONT)
        if child.is_alive():
            child.kill()
    print(f"\nresumed holder's commit: {result} (renewal noticed the loss: {lost})")
    assert result != CommitResult.WRITTEN.value
    if parent_commits:
        assert result == CommitResult.EXISTED.value
        assert rclient.get(keys.value) == b"parent"
    else:
        assert result == CommitResult.FENCED.value
        assert rclient.get(keys.value) is None
        assert parent.release() is True


@pytest.mark.real_redis
def test_real_forked_child_does_not_hold(rclient: redis.Redis, keys: EntryKeys) -> None:
    lock = LeaseLock(rclient, keys, lease=5)
    assert lock.try_acquire() is True
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        out.put((lock.fence, lock.release(), lock.commit(b"child").value))

    proc = ctx.Process(target=child)
    proc.start()
    try:
        reported = out.get(timeout=30)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert reported == (None, False, CommitResult.FENCED.value)
    assert lock.fence is not None
    assert rclient.get(keys.value) is None
    assert lock.commit(b"parent") is CommitResult.WRITTEN


@pytest.mark.real_redis
def test_real_cluster_scripts_run_on_the_slot_owner(redis_cluster: Any, prefix: str) -> None:
    cluster = redis.cluster.RedisCluster.from_url(redis_cluster.url, socket_timeout=5.0)
    try:
        owners = set()
        for i in range(6):
            keys = entry_keys(f"{prefix}-{i}")
            a = LeaseLock(cluster, keys, lease=5)
            b = LeaseLock(cluster, keys, lease=5)
            assert a.try_acquire() is True
            left = b.try_acquire()
            assert left is not True and 0 < left <= 5
            assert a.commit(b"v%d" % i) is CommitResult.WRITTEN
            assert b.wait_for_signal(1.0) is True
            assert b.acquire(timeout=5) is True
            assert b.commit(b"other") is CommitResult.EXISTED
            node = cluster.get_node_from_key(keys.value)  # type: ignore[no-untyped-call]
            owners.add(node.name)
            direct = redis.Redis(host=node.host, port=node.port)
            try:
                assert direct.get(keys.value) == b"v%d" % i
                assert int(direct.get(keys.fence) or 0) == 2
            finally:
                direct.close()
        print(f"\ncluster: entries landed on {len(owners)} node(s)")
    finally:
        cluster.close()
