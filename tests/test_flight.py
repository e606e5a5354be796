"""Single flights (redis_cache.flight): how a miss is computed and where its result lands.

``LeaseFlight`` and ``FailOpenFlight`` run against real redis-server processes
(and a ``FaultProxy`` for blips); ``FileFlight`` and ``NoFlight`` against real
disk layers. Waits are bounded; assertions are on counts and values.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_cache import exceptions, locks
from redis_cache.breaker import CircuitBreaker
from redis_cache.flight import (
    Computed,
    FailOpenFlight,
    FileFlight,
    Landed,
    NoFlight,
    Writes,
)
from redis_cache.layers import DiskLayer, EntryKey, Layer, Outcome
from redis_cache.layers.guards import FailOpen
from redis_cache.layers.redis import RedisLayer
from redis_cache.lease import Acquired, CommitResult, Lease, Renewer
from redis_cache.lease_flight import LeaseFlight
from redis_cache.retry import Retrier
from redis_cache.runtime import Runtime
from redis_cache.stats import StatsRecorder
from tests.support.helpers import make_settings
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer, free_port

CALLEE = "tests.test_flight.kernel"


def entry(space: Any = "dcache") -> EntryKey:
    return EntryKey(CALLEE, uuid.uuid4().hex * 2, space)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class Kernel:
    """A compute callable that counts its calls (optionally slow, or doing something first)."""

    def __init__(
        self,
        blob: bytes = b"result",
        *,
        delay: float = 0.0,
        before: Callable[[], Any] | None = None,
    ) -> None:
        self.blob = blob
        self.delay = delay
        self.before = before
        self.calls = 0
        self.started = threading.Event()

    def __call__(self) -> Computed:
        self.calls += 1
        self.started.set()
        if self.before is not None:
            self.before()
        time.sleep(self.delay)
        return Computed(self.blob.decode(), self.blob)


class Failing:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self) -> Computed:
        self.calls += 1
        raise self.exc


class Result:
    """What a call on a thread did (``bounded`` fails the test if it does not finish)."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


def bounded(call: Callable[[], Any], limit: float) -> Result:
    outcome = Result()

    def run() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:
            outcome.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"the call neither returned nor raised within {limit}s")
    return outcome


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, Result]:
    outcome = Result()

    def run() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:
            outcome.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def blocked_clients(server: RedisServer) -> int:
    return int(server.info("clients")["blocked_clients"])


# --------------------------------------------------------------------------- fixtures


def redis_layer(tmp: Path, url: str, namespace: str, **overrides: Any) -> RedisLayer:
    options: dict[str, Any] = {
        "url": url,
        "namespace": namespace,
        "connect_timeout": 0.5,
        "socket_timeout": 2.0,
        "lock_lease": 5.0,
        "stats_interval": 0,
    }
    return RedisLayer(make_settings(tmp, **{**options, **overrides}))


@pytest.fixture
def layer(tmp_path: Path, redis_server: RedisServer, namespace: str) -> Iterator[RedisLayer]:
    layer = redis_layer(tmp_path, redis_server.url, namespace)
    yield layer
    layer.close()


def lease_flight(
    layer: RedisLayer,
    stats: StatsRecorder | None = None,
    *,
    deadline: float = 5.0,
    lock_timeout: float = 10.0,
    replicas: int = 0,
) -> LeaseFlight:
    stats = stats if stats is not None else StatsRecorder()
    return LeaseFlight(
        layer,
        Retrier(deadline, stats=stats),
        stats,
        lock_timeout=lock_timeout,
        lease=layer.settings.lock_lease,
        replicas=replicas,
        replica_timeout_ms=layer.replica_timeout_ms,
    )


# Holds added here are never renewed (its clock stands still): a holder that died.
NOT_RENEWING = Renewer(clock=lambda: 0.0)


def holder(layer: RedisLayer, key: EntryKey, *, renewed: bool = True, lease: float = 5.0) -> Lease:
    """Another worker that takes the entry's lock (and keeps it, if ``renewed``)."""
    if renewed:
        taker = layer.lease(key)
    else:
        taker = Lease(
            layer.client(), layer.entry_keys(key), layer.script, NOT_RENEWING,
            lease=lease, max_block=0.5,
        )  # fmt: skip
    assert isinstance(taker.attempt(), Acquired)
    return taker


def stored(server: RedisServer, layer: RedisLayer, key: EntryKey) -> bytes | None:
    value: bytes | None = server.client().get(layer.value_key(key))
    return value


# --------------------------------------------------------------------------- LeaseFlight


@pytest.mark.real_redis
def test_lease_flight_computes_once_and_later_flights_read_the_entry(
    layer: RedisLayer, redis_server: RedisServer
) -> None:
    key, stats = entry(), StatsRecorder()
    kernel = Kernel(b"first")
    landed = lease_flight(layer, stats).run(key, kernel)
    assert (landed.blob, landed.outcome, landed.ours) == (b"first", Outcome.WRITTEN, True)
    assert stored(redis_server, layer, key) == b"first"
    assert (stats.inserts, stats.lock_acquisitions, stats.lock_waits) == (1, 1, 0)
    other = Kernel(b"second")
    again = lease_flight(layer).run(key, other)
    assert (again.blob, again.outcome, again.computed) == (b"first", Outcome.EXISTED, None)
    assert (kernel.calls, other.calls) == (1, 0)
    assert not redis_server.client().exists(layer.entry_keys(key).lock)


@pytest.mark.real_redis
def test_lease_flight_threads_stampeding_one_entry_compute_once(layer: RedisLayer) -> None:
    key, stats = entry(), StatsRecorder()
    flight = lease_flight(layer, stats)
    kernel = Kernel(b"once", delay=0.2)
    barrier = threading.Barrier(6)
    landed: list[Landed] = []

    def worker() -> None:
        barrier.wait()
        landed.append(flight.run(key, kernel))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert kernel.calls == 1
    assert [x.blob for x in landed] == [b"once"] * 6
    assert sum(x.outcome is Outcome.WRITTEN for x in landed) == 1
    assert stats.lock_waits == 5 and stats.takeovers == 0


@pytest.mark.real_redis
def test_lock_timeout_names_the_lock_and_what_it_waited_for(layer: RedisLayer) -> None:
    key, stats = entry(), StatsRecorder()
    computing = holder(layer, key)
    kernel = Kernel()
    try:
        with pytest.raises(exceptions.DistributedLockTimeoutError) as info:
            lease_flight(layer, stats, lock_timeout=0.3).run(key, kernel)
    finally:
        computing.release()
    error = info.value
    assert isinstance(error, exceptions.LockTimeoutError)
    assert error.lock == layer.entry_keys(key).lock and error.timeout == 0.3
    message = str(error)
    assert layer.entry_keys(key).lock in message
    assert f"for the worker computing {CALLEE}" in message
    assert "REDIS_CACHE_LOCK_TIMEOUT" in message
    assert kernel.calls == 0
    assert stats.lock_waits == 1 and stats.lock_acquisitions == 0


@pytest.mark.real_redis
def test_a_takeover_is_counted_only_when_a_lease_ran_out(
    layer: RedisLayer, redis_server: RedisServer
) -> None:
    # A holder that stopped renewing: its lease runs out and the waiter takes over.
    key, stats = entry(), StatsRecorder()
    holder(layer, key, renewed=False, lease=0.5)
    kernel = Kernel(b"taken over")
    landed = bounded(lambda: lease_flight(layer, stats).run(key, kernel), 30)
    assert landed.error is None and landed.value.blob == b"taken over"
    assert (stats.takeovers, stats.lock_waits, kernel.calls) == (1, 1, 1)

    # A holder that releases (its fn raised): the waiter computes, no takeover.
    key, stats = entry(), StatsRecorder()
    releasing = holder(layer, key)
    kernel = Kernel(b"after release")
    thread, outcome = in_thread(lambda: lease_flight(layer, stats).run(key, kernel))
    assert wait_until(lambda: blocked_clients(redis_server) >= 1), "the flight never waited"
    assert releasing.release() is True
    thread.join(30)
    assert outcome.error is None and outcome.value.blob == b"after release"
    assert (stats.takeovers, stats.lock_waits, kernel.calls) == (0, 1, 1)

    # A holder that commits: the waiter returns its entry without computing.
    key, stats = entry(), StatsRecorder()
    committing = holder(layer, key)
    kernel = Kernel(b"never computed")
    thread, outcome = in_thread(lambda: lease_flight(layer, stats).run(key, kernel))
    assert wait_until(lambda: blocked_clients(redis_server) >= 1), "the flight never waited"
    assert committing.commit(b"holder's") is CommitResult.WRITTEN
    thread.join(30)
    assert outcome.error is None
    assert (outcome.value.blob, outcome.value.outcome) == (b"holder's", Outcome.EXISTED)
    assert (stats.takeovers, stats.lock_waits, kernel.calls) == (0, 1, 0)


@pytest.mark.real_redis
@pytest.mark.slow
def test_waiting_outlasts_the_retry_deadline_and_rides_out_a_blip(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    """The deadline bounds each outage, not the wait for another machine's compile."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        layer = redis_layer(tmp_path, proxy.url, namespace, socket_timeout=0.5)
        direct = redis_layer(tmp_path, redis_server.url, namespace)
        key, stats = entry(), StatsRecorder()
        computing = holder(direct, key)
        kernel = Kernel()
        # A 0.3 s blip against a 3 s deadline: margin for a loaded CI machine, where a
        # 1 s deadline was once used up by slow reconnects before the blip ended.
        flight = lease_flight(layer, stats, deadline=3.0, lock_timeout=30)
        thread, outcome = in_thread(lambda: flight.run(key, kernel))
        time.sleep(3.5)  # waited longer than the retry deadline already
        proxy.drop()  # a blip: every connection reset, new ones refused
        time.sleep(0.3)
        proxy.pass_through()
        time.sleep(0.5)
        assert computing.commit(b"holder's") is CommitResult.WRITTEN
        thread.join(30)
        assert not thread.is_alive()
        layer.close()
        direct.close()
    assert outcome.error is None, repr(outcome.error)
    assert (outcome.value.blob, outcome.value.outcome) == (b"holder's", Outcome.EXISTED)
    assert kernel.calls == 0 and stats.remote_errors == 0


@pytest.mark.real_redis
def test_lock_timeout_bounds_the_wait_whatever_the_retry_deadline(layer: RedisLayer) -> None:
    key = entry()
    computing = holder(layer, key)
    try:
        outcome = bounded(
            lambda: lease_flight(layer, deadline=60, lock_timeout=0.5).run(key, Kernel()), 20
        )
    finally:
        computing.release()
    assert isinstance(outcome.error, exceptions.DistributedLockTimeoutError)


@pytest.mark.real_redis
def test_fn_raising_releases_the_lock_and_wakes_the_waiters(
    layer: RedisLayer, redis_server: RedisServer
) -> None:
    key = entry()
    failing = Failing(RuntimeError("compiler crashed"))
    with pytest.raises(RuntimeError, match="compiler crashed"):
        lease_flight(layer).run(key, failing)
    client = redis_server.client()
    keys = layer.entry_keys(key)
    assert not client.exists(keys.lock)
    assert client.llen(keys.signal) == 1
    assert client.get(keys.value) is None
    kernel = Kernel(b"second try")
    assert lease_flight(layer).run(key, kernel).blob == b"second try"
    assert failing.calls == 1 and kernel.calls == 1


@pytest.mark.real_redis
def test_insert_lands_first_writer_wins(layer: RedisLayer, redis_server: RedisServer) -> None:
    key, stats = entry(), StatsRecorder()
    flight = lease_flight(layer, stats)
    first = flight.insert(key, Computed("a", b"a"))
    assert (first.blob, first.outcome) == (b"a", Outcome.WRITTEN)
    second = flight.insert(key, Computed("b", b"b"))
    assert (second.blob, second.outcome) == (b"a", Outcome.EXISTED)
    assert second.computed == Computed("b", b"b")  # what this call wanted to store
    assert stored(redis_server, layer, key) == b"a"
    assert (stats.inserts, stats.insert_conflicts) == (1, 1)


@pytest.mark.real_redis
def test_results_over_the_value_limit_are_refused_and_release_the_lock(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    small = redis_layer(tmp_path, redis_server.url, namespace, max_value_bytes=10)
    key = entry()
    with pytest.raises(exceptions.ValueTooLargeError, match="REDIS_CACHE_MAX_VALUE_BYTES=10"):
        lease_flight(small).run(key, Kernel(b"x" * 11))
    with pytest.raises(exceptions.ValueTooLargeError):
        lease_flight(small).insert(key, Computed("x", b"x" * 11))
    with pytest.raises(exceptions.ValueTooLargeError, match="cannot be synchronized"):
        lease_flight(small).run(key, lambda: Computed("too large for any envelope", None))
    client = redis_server.client()
    assert not client.exists(small.entry_keys(key).lock)
    assert client.get(small.entry_keys(key).value) is None
    small.close()


@pytest.mark.real_redis
@pytest.mark.parametrize("other_commits", [True, False])
def test_a_fenced_or_beaten_commit_goes_round_and_returns_the_winner(
    layer: RedisLayer, redis_server: RedisServer, other_commits: bool
) -> None:
    """Our lease ran out while fn ran; another worker took the lock (and maybe committed)."""
    key, stats = entry(), StatsRecorder()
    keys = layer.entry_keys(key)
    client = redis_server.client()
    winner: list[Lease] = []

    def lose_the_lock() -> None:
        client.delete(keys.lock)  # as if our lease had run out
        winner.append(holder(layer, key))
        if other_commits:
            assert winner[0].commit(b"winner") is CommitResult.WRITTEN
        else:  # it commits a little later, while we wait for it
            threading.Timer(0.3, lambda: winner[0].commit(b"winner")).start()

    kernel = Kernel(b"ours", before=lose_the_lock)
    landed = bounded(lambda: lease_flight(layer, stats).run(key, kernel), 30)
    assert landed.error is None, repr(landed.error)
    assert (landed.value.blob, landed.value.outcome) == (b"winner", Outcome.EXISTED)
    assert landed.value.computed.blob == b"ours"
    assert kernel.calls == 1
    assert client.get(keys.value) == b"winner"
    if other_commits:
        assert (stats.insert_conflicts, stats.fencing_rejections) == (1, 0)
    else:
        assert (stats.insert_conflicts, stats.fencing_rejections) == (0, 1)
    assert stats.inserts == 0


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it."""
    with (
        RedisServer() as primary,
        RedisServer(config=[f"replicaof 127.0.0.1 {primary.port}"]) as replica,
    ):
        assert wait_until(lambda: replica.info("replication").get("master_link_status") == "up", 20)
        yield primary, replica


@pytest.mark.real_redis
@pytest.mark.slow
def test_replicated_publication_never_shows_an_unreplicated_result(
    tmp_path: Path, replicated: tuple[RedisServer, RedisServer], namespace: str
) -> None:
    primary, replica = replicated
    layer = redis_layer(tmp_path, primary.url, namespace, socket_timeout=0.5, lock_lease=2.0)
    key = entry()
    landed = lease_flight(layer, replicas=1).run(key, Kernel(b"replicated"))
    assert landed.outcome is Outcome.WRITTEN
    assert replica.client().get(layer.value_key(key)) == b"replicated"  # WAIT returned

    stalled, stats = entry(), StatsRecorder()
    replica.pause()  # SIGSTOP: WAIT falls short
    try:
        outcome = bounded(
            lambda: lease_flight(layer, stats, deadline=1.0, replicas=1).run(
                stalled, Kernel(b"staged only")
            ),
            30,
        )
    finally:
        replica.resume()
    assert isinstance(outcome.error, exceptions.RemoteError), repr(outcome.error)
    assert "replicas acknowledged" in str(outcome.error)
    keys = layer.entry_keys(stalled)
    assert primary.client().get(keys.value) is None  # never published unreplicated
    assert primary.client().get(keys.staged) == b"staged only"

    # The worker that gave up must not keep the lock: its lease runs out, and the
    # next holder publishes the staged result instead of computing another one.
    assert wait_until(lambda: replica.info("replication").get("master_link_status") == "up")
    kernel = Kernel(b"recomputed")
    later = bounded(
        lambda: lease_flight(layer, StatsRecorder(), lock_timeout=8, replicas=1).run(
            stalled, kernel
        ),
        30,
    )
    assert later.error is None, repr(later.error)
    assert (later.value.blob, kernel.calls) == (b"staged only", 0)
    assert replica.client().get(keys.value) == b"staged only"
    layer.close()


@pytest.mark.real_redis
@pytest.mark.slow
def test_a_flight_that_gives_up_holding_the_lock_stops_renewing_it(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    """COMMIT fails for the whole retry deadline; once Redis is back, others can take over."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        layer = redis_layer(tmp_path, proxy.url, namespace, socket_timeout=0.3, lock_lease=2.0)
        key = entry()
        kernel = Kernel(b"never committed", before=proxy.blackhole)
        outcome = bounded(lambda: lease_flight(layer, deadline=1.0).run(key, kernel), 30)
        assert isinstance(outcome.error, exceptions.RemoteError), repr(outcome.error)
        proxy.pass_through()  # the renewer of the gave-up flight reaches Redis again
        direct = redis_layer(tmp_path, redis_server.url, namespace, lock_lease=2.0)
        stats = StatsRecorder()
        retry = Kernel(b"taken over")
        later = bounded(lambda: lease_flight(direct, stats, lock_timeout=8).run(key, retry), 30)
        layer.close()
        direct.close()
    assert later.error is None, f"the abandoned lock was kept alive: {later.error!r}"
    assert later.value.blob == b"taken over" and stats.takeovers == 1


# --------------------------------------------------------------------------- FileFlight


@pytest.fixture
def disk(tmp_path: Path) -> DiskLayer:
    return DiskLayer(tmp_path / "disk", "ns")


def test_file_flight_computes_once_then_reads_the_entry(disk: DiskLayer) -> None:
    key, stats = entry(), StatsRecorder()
    kernel = Kernel(b"on disk")
    landed = FileFlight(disk, 5.0, stats).run(key, kernel)
    assert (landed.blob, landed.outcome, landed.ours) == (b"on disk", Outcome.WRITTEN, True)
    assert disk.get(key) == b"on disk"
    again = FileFlight(disk, 5.0, stats).run(key, kernel)
    assert (again.blob, again.outcome, again.computed) == (b"on disk", Outcome.EXISTED, None)
    assert kernel.calls == 1
    assert (stats.inserts, stats.lock_acquisitions) == (1, 2)


def test_file_flight_threads_stampeding_compute_once(disk: DiskLayer) -> None:
    key, stats = entry(), StatsRecorder()
    kernel = Kernel(b"once", delay=0.2)
    barrier = threading.Barrier(6)
    blobs: list[bytes | None] = []

    def worker() -> None:
        barrier.wait()
        blobs.append(FileFlight(disk, 10.0, stats).run(key, kernel).blob)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert kernel.calls == 1 and blobs == [b"once"] * 6
    assert stats.lock_waits >= 1


def test_file_flight_lock_timeout(disk: DiskLayer) -> None:
    key = entry()
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        flock = locks.file_lock(disk.lock_path(key))
        with locks.acquire_file_lock(flock, 5.0):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    kernel = Kernel()
    try:
        with pytest.raises(exceptions.FileLockTimeoutError):
            FileFlight(disk, 0.1, StatsRecorder()).run(key, kernel)
    finally:
        release.set()
        thread.join(10)
    assert kernel.calls == 0


def test_file_flight_releases_the_lock_when_fn_raises(disk: DiskLayer) -> None:
    key = entry()
    with pytest.raises(RuntimeError):
        FileFlight(disk, 0.1, StatsRecorder()).run(key, Failing(RuntimeError("boom")))
    assert FileFlight(disk, 0.1, StatsRecorder()).run(key, Kernel(b"ok")).blob == b"ok"
    assert disk.get(key) == b"ok"


def test_file_flight_insert_first_writer_wins(disk: DiskLayer) -> None:
    key, stats = entry(), StatsRecorder()
    flight = FileFlight(disk, 1.0, stats)
    assert flight.insert(key, Computed("a", b"a")).outcome is Outcome.WRITTEN
    second = flight.insert(key, Computed("b", b"b"))
    assert (second.blob, second.outcome) == (b"a", Outcome.EXISTED)
    assert (stats.inserts, stats.insert_conflicts) == (1, 1)
    with pytest.raises(exceptions.ValueTooLargeError):
        flight.insert(entry(), Computed("too large", None))


@pytest.mark.parametrize("occupant", ["dangling symlink", "directory"])
def test_file_flight_never_returns_its_own_result_over_an_unreadable_entry(
    disk: DiskLayer, tmp_path: Path, occupant: str
) -> None:
    key = entry()
    path = Path(disk.path(key))
    path.parent.mkdir(parents=True)
    if occupant == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "nowhere")
    kernel = Kernel(b"ours")
    with pytest.raises(exceptions.CacheError) as info:
        FileFlight(disk, 1.0, StatsRecorder()).run(key, kernel)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- NoFlight, Writes


class Backfills:
    """A synchronous backfill that records what it copied where."""

    def __init__(self) -> None:
        self.copied: list[tuple[str, bytes]] = []

    def __call__(self, layer: Layer[bytes], key: EntryKey, blob: bytes) -> None:
        self.copied.append((layer.name, blob))
        layer.insert(key, blob)


@pytest.mark.real_redis
def test_writes_the_first_available_layer_decides_later_ones_backfilled_after_written(
    tmp_path: Path, layer: RedisLayer, redis_server: RedisServer, namespace: str
) -> None:
    stats = StatsRecorder()
    disk = FailOpen(DiskLayer(tmp_path / "disk", "ns"), stats)
    remote = FailOpen(layer, stats, breaker=CircuitBreaker(60, 60))
    backfills = Backfills()
    writes = Writes((remote, disk), backfills, stats)

    key = entry("fcache")
    assert writes.store(key, b"ours") is Outcome.WRITTEN
    assert stored(redis_server, layer, key) == b"ours"
    assert backfills.copied == [("disk", b"ours")]
    assert disk.get(key) == b"ours"

    beaten = entry("fcache")  # another machine wrote it first: its entry comes by backfill
    assert layer.insert(beaten, b"theirs") is Outcome.WRITTEN
    assert writes.store(beaten, b"ours") is Outcome.EXISTED
    assert backfills.copied == [("disk", b"ours")]
    assert disk.get(beaten) is None
    assert (stats.inserts, stats.insert_conflicts) == (1, 1)

    down = FailOpen(
        redis_layer(tmp_path, f"redis://127.0.0.1:{free_port()}/0", namespace),
        stats,
        breaker=CircuitBreaker(60, 60),
    )
    local = entry("fcache")
    assert Writes((down, disk), backfills, stats).store(local, b"local") is Outcome.WRITTEN
    assert disk.get(local) == b"local"
    assert stats.remote_errors == 1 and stats.inserts == 2

    (tmp_path / "broken").write_bytes(b"a file where the disk layer's root should be")
    broken = FailOpen(DiskLayer(tmp_path / "broken", "ns"), stats)
    nowhere = entry("fcache")
    assert Writes((down, broken), backfills, stats).store(nowhere, b"x") is Outcome.UNAVAILABLE
    assert (stats.inserts, stats.insert_conflicts, stats.disk_errors) == (2, 1, 1)
    assert stats.remote_skipped == 1  # the open breaker spared the dead server


def test_no_flight_computes_every_time_and_keeps_oversize_results_local(
    tmp_path: Path,
) -> None:
    stats = StatsRecorder()
    disk = DiskLayer(tmp_path, "ns")
    flight = NoFlight(Writes((FailOpen(disk, stats),), Backfills(), stats))
    key = entry("fcache")
    kernel = Kernel(b"raced")
    assert flight.run(key, kernel).outcome is Outcome.WRITTEN
    assert flight.run(key, kernel).outcome is Outcome.EXISTED  # fcache tolerates the race
    assert kernel.calls == 2
    oversize = flight.run(entry("fcache"), lambda: Computed("huge", None))
    assert (oversize.blob, oversize.outcome) == (None, Outcome.UNAVAILABLE)
    assert oversize.computed == Computed("huge", None)


# --------------------------------------------------------------------------- FailOpenFlight


class FailOpenParts:
    """fcache's opt-in single flight, as ``policy.build`` wires it into a runtime."""

    def __init__(self, tmp: Path, url: str, namespace: str, **overrides: Any) -> None:
        options: dict[str, Any] = {
            "url": url,
            "namespace": namespace,
            "single_flight": True,
            "connect_timeout": 0.5,
            "socket_timeout": 0.5,
            "breaker_cooldown": 0.05,
            "breaker_max_cooldown": 0.05,
            "stats_interval": 0,
        }
        self.stats = StatsRecorder()
        self.runtime = Runtime(make_settings(tmp, **{**options, **overrides}), "fcache", self.stats)
        flight = self.runtime.policy.flight
        assert isinstance(flight, FailOpenFlight)
        self.flight = flight
        self.breaker = flight.breaker
        self.disk = self.runtime.disk

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def fail_open(tmp_path: Path, redis_server: RedisServer, namespace: str) -> Iterator[FailOpenParts]:
    parts = FailOpenParts(tmp_path, redis_server.url, namespace)
    yield parts
    parts.close()


@pytest.mark.real_redis
def test_fail_open_flight_single_flights_while_redis_is_healthy(fail_open: FailOpenParts) -> None:
    key = entry("fcache")
    kernel = Kernel(b"shared", delay=0.2)
    barrier = threading.Barrier(4)
    blobs: list[bytes | None] = []

    def worker() -> None:
        barrier.wait()
        blobs.append(fail_open.flight.run(key, kernel).blob)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert kernel.calls == 1 and blobs == [b"shared"] * 4
    assert fail_open.stats.lock_waits == 3


@pytest.mark.real_redis
def test_fail_open_flight_computes_locally_while_redis_is_down(
    tmp_path: Path, namespace: str
) -> None:
    parts = FailOpenParts(
        tmp_path, f"redis://127.0.0.1:{free_port()}/0", namespace, breaker_cooldown=60,
        breaker_max_cooldown=60,
    )  # fmt: skip
    kernel = Kernel(b"local")
    first = parts.flight.run(entry("fcache"), kernel)
    assert (first.blob, first.outcome) == (b"local", Outcome.WRITTEN)  # on disk
    assert parts.breaker.is_open
    assert parts.stats.remote_errors == 1  # one failure, counted once
    second = parts.flight.run(entry("fcache"), kernel)
    assert second.outcome is Outcome.WRITTEN
    assert kernel.calls == 2
    assert parts.stats.remote_errors == 1  # the open breaker spared the second call
    assert parts.stats.remote_skipped >= 1
    parts.close()


@pytest.mark.real_redis
@pytest.mark.parametrize(
    "own_error",
    [
        exceptions.LockTimeoutError("the function's own lock", 1.0),
        exceptions.DistributedLockTimeoutError("a lock of its own", 1.0),
        exceptions.RemoteUnavailableError("a server the function talks to"),
        exceptions.ValueTooLargeError("a limit of the function's own"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_fail_open_flight_lets_the_functions_own_errors_propagate(
    fail_open: FailOpenParts, own_error: BaseException
) -> None:
    failing = Failing(own_error)
    with pytest.raises(type(own_error)) as info:
        fail_open.flight.run(entry("fcache"), failing)
    assert info.value is own_error
    assert failing.calls == 1
    assert not fail_open.breaker.is_open


@pytest.mark.real_redis
def test_fail_open_flight_computes_locally_when_the_lock_is_held_too_long(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    parts = FailOpenParts(tmp_path, redis_server.url, namespace, lock_timeout=0.3)
    key = entry("fcache")
    layer = parts.runtime.redis
    assert layer is not None
    computing = holder(layer, key)
    kernel = Kernel(b"impatient")
    try:
        landed = parts.flight.run(key, kernel)
    finally:
        computing.release()
    assert landed.blob == b"impatient" and kernel.calls == 1
    assert not parts.breaker.is_open
    parts.close()


@pytest.mark.real_redis
def test_fail_open_flight_keeps_a_result_too_large_to_share(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    parts = FailOpenParts(tmp_path, redis_server.url, namespace, max_value_bytes=10)
    layer = parts.runtime.redis
    assert layer is not None
    key = entry("fcache")
    kernel = Kernel(b"x" * 100)
    landed = parts.flight.run(key, kernel)
    assert landed.blob == b"x" * 100 and kernel.calls == 1
    assert parts.disk.get(key) == b"x" * 100  # kept on disk, never in Redis
    assert stored(redis_server, layer, key) is None
    assert not redis_server.client().exists(layer.entry_keys(key).lock)
    parts.close()


@pytest.mark.real_redis
def test_fail_open_flight_probe_interrupted_by_another_error_still_ends(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    """A probe cut short by a compile timeout counts as failed: the breaker probes again."""

    class CompileTimeout(Exception):
        pass

    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        parts = FailOpenParts(tmp_path, proxy.url, namespace)
        proxy.drop()
        parts.flight.run(entry("fcache"), Kernel())
        assert parts.breaker.is_open
        proxy.pass_through()
        time.sleep(0.1)  # the cooldown is over: the next call probes
        with pytest.raises(CompileTimeout):
            parts.flight.run(entry("fcache"), Failing(CompileTimeout()))
        assert parts.breaker.is_open  # no verdict: counted as a failed probe, not left pending
        kernel = Kernel(b"probed")
        for _ in range(100):
            time.sleep(0.1)
            if parts.flight.run(entry("fcache"), kernel).blob and not parts.breaker.is_open:
                break
        assert not parts.breaker.is_open, "the breaker never closed after the probe"
        parts.close()
