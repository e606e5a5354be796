"""The lease protocol of one entry (redis_cache.lease): ACQUIRE, wait, COMMIT, STAGE/PUBLISH.

The first half runs the Lua scripts on fakeredis (through lupa); the second half
needs real redis-server processes from the ``redis_server`` / ``redis_cluster``
fixtures. The blocking loop built from these steps is ``lease_flight.LeaseFlight``
(tests/test_flight.py). No assertion is on wall-clock time: waits are bounded,
and the renewer's clock is injected where its timing is what is tested.
"""

from __future__ import annotations

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

from redis_cache import lease as lease_module
from redis_cache.lease import (
    EXTEND_LUA,
    PUBLISH_LUA,
    RENEWER,
    STAGE_LUA,
    Acquired,
    CommitResult,
    EntryKeys,
    Held,
    Hold,
    Lease,
    Present,
    Renewer,
)
from tests.support.servers import RedisClusterHandle, RedisServer

RENEW_THREAD = "redis_cache-lease-renew"


def entry_keys(prefix: str) -> EntryKeys:
    tag = "{" + prefix + "}"
    return EntryKeys(
        value=f"test:lease:{tag}:val",
        lock=f"test:lease:{tag}:lock",
        fence=f"test:lease:{tag}:fence",
        signal=f"test:lease:{tag}:sig",
        staged=f"test:lease:{tag}:staged",
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
    return sum(1 for t in threading.enumerate() if t.name == RENEW_THREAD and t.is_alive())


class Scripts:
    """What ``RedisLayer.script`` is to a Lease: each source registered once on ``client``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._registered: dict[str, Any] = {}

    def __call__(self, source: str) -> Any:
        script = self._registered.get(source)
        if script is None:
            script = self._registered[source] = self.client.register_script(source)
        return script

    def load_all(self) -> None:
        """Load the scripts a pipeline runs by SHA (``LeaseFlight`` does this on NOSCRIPT)."""
        for source in (STAGE_LUA, PUBLISH_LUA):
            self.client.script_load(source)


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# Holds added to this renewer are never renewed: its clock never reaches their due time.
FROZEN = Renewer(clock=lambda: 0.0)


def make_lease(
    client: Any,
    keys: EntryKeys,
    *,
    lease: float = 5.0,
    renewer: Renewer = FROZEN,
    scripts: Scripts | None = None,
    max_block: float = 1.0,
) -> Lease:
    return Lease(
        client, keys, scripts or Scripts(client), renewer, lease=lease, max_block=max_block
    )


def pipelined(client: Any, queue: Callable[[Any], None]) -> Any:
    """Run one queued script in a pipeline (as LeaseFlight does, without the WAIT)."""
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    (reply,) = pipe.execute()
    return reply


def stage(lease: Lease, blob: bytes, client: Any = None) -> CommitResult:
    """STAGE on ``client`` (a cluster node's own client; the lease's client by default)."""
    reply = pipelined(client or lease.client, lambda pipe: lease.stage(pipe, blob))
    return lease.staged_result(reply)


def publish(lease: Lease, client: Any = None) -> CommitResult:
    return lease.published_result(pipelined(client or lease.client, lease.publish))


def acquired(attempt: Any) -> Acquired:
    assert isinstance(attempt, Acquired), attempt
    return attempt


def held(attempt: Any) -> Held:
    assert isinstance(attempt, Held), attempt
    return attempt


def expire(client: Any, keys: EntryKeys) -> None:
    """The holder's lease runs out (it stopped renewing: dead, paused, cut off)."""
    client.pexpire(keys.lock, 1)
    assert wait_until(lambda: not client.exists(keys.lock))


@pytest.fixture
def keys(request: pytest.FixtureRequest) -> EntryKeys:
    return entry_keys(f"{request.node.name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def fake() -> redis.Redis:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    Scripts(client).load_all()
    return client


# --------------------------------------------------------------------------- ACQUIRE


def test_acquire_takes_the_lock_with_a_fence_and_release_gives_it_back(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    lease = make_lease(fake, keys)
    assert lease.owner == ""
    first = acquired(lease.attempt())
    assert (first.fence, first.clean, first.staged) == (1, False, None)
    assert fake.get(keys.lock) == f"{lease.token}:1".encode()
    assert lease.owner == f"{lease.token}:1"
    assert 0 < fake.pttl(keys.lock) <= 5000
    assert lease.release() is True
    assert not fake.exists(keys.lock)
    assert lease.release() is False  # released already
    second = acquired(lease.attempt())
    assert second.fence == 2
    assert second.clean is True  # the release left a wake-up token: nobody's lease ran out
    assert lease.release() is True


def test_a_held_lock_reports_the_holders_lease_and_fence(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    holder, other = make_lease(fake, keys), make_lease(fake, keys)
    acquired(holder.attempt())
    seen = held(other.attempt())
    assert 0 < seen.pttl <= 5.0
    assert seen.fence == 1
    assert other.owner == ""
    assert other.release() is False
    assert fake.get(keys.lock) == holder.owner.encode()  # untouched by the refused release
    fake.persist(keys.lock)  # a lock somebody set by hand, without expiry
    assert held(other.attempt()).pttl == float("inf")
    assert holder.release() is True
    assert acquired(other.attempt()).fence == 2
    other.release()


def test_acquire_returns_the_value_when_it_exists(fake: redis.Redis, keys: EntryKeys) -> None:
    writer, reader = make_lease(fake, keys), make_lease(fake, keys)
    acquired(writer.attempt())
    assert writer.commit(b"kernel") is CommitResult.WRITTEN
    assert reader.attempt() == Present(b"kernel")
    assert not fake.exists(keys.lock)  # nothing was taken
    assert int(fake.get(keys.fence) or 0) == 1  # and no fence spent
    assert reader.release() is False


def test_acquire_retried_with_the_same_token_finds_the_lock_ours(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    """A lost ACQUIRE reply: the retry renews our lock instead of waiting for it."""
    renewer = Renewer(clock=ManualClock())
    lease = make_lease(fake, keys, renewer=renewer)
    first = acquired(lease.attempt())
    fake.pexpire(keys.lock, 100)
    again = acquired(lease.attempt())  # the retry of an attempt whose reply was lost
    assert again.fence == first.fence
    assert fake.pttl(keys.lock) > 100  # renewed to a whole lease
    assert int(fake.get(keys.fence) or 0) == 1
    assert renewer.held() == 1  # one hold, renewed once per interval, not two
    assert lease.release() is True
    assert renewer.held() == 0


def test_fence_grows_once_per_acquisition(fake: redis.Redis, keys: EntryKeys) -> None:
    a, b = make_lease(fake, keys), make_lease(fake, keys)
    fences = []
    for _ in range(3):
        fences.append(acquired(a.attempt()).fence)
        for _ in range(4):
            held(b.attempt())  # failed attempts spend no fence
        assert int(fake.get(keys.fence) or 0) == fences[-1]
        assert a.release() is True
    assert fences == [1, 2, 3]
    assert fake.pttl(keys.fence) > 0  # the counter expires eventually (no key leak)


def test_a_lease_that_ran_out_is_taken_over_and_its_release_refused(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    dying, waiter = make_lease(fake, keys), make_lease(fake, keys)
    acquired(dying.attempt())
    expire(fake, keys)
    taken = acquired(waiter.attempt())
    assert taken.fence == 2
    assert taken.clean is False  # no release, no commit: the lease ran out
    assert dying.release() is False  # owner-only: the stale holder cannot drop it
    assert fake.get(keys.lock) == waiter.owner.encode()
    assert waiter.release() is True


def test_bad_leases_are_refused(fake: redis.Redis, keys: EntryKeys) -> None:
    for lease in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            make_lease(fake, keys, lease=lease)


def test_entry_keys_must_be_distinct_and_share_a_slot() -> None:
    with pytest.raises(ValueError):
        EntryKeys(value="{a}:v", lock="{b}:l", fence="{a}:f", signal="{a}:s", staged="{a}:x")
    with pytest.raises(ValueError):
        EntryKeys(value="{a}:v", lock="{a}:l", fence="{a}:f", signal="{a}:s", staged="{b}:x")
    with pytest.raises(ValueError):
        EntryKeys(value="{a}:v", lock="{a}:v", fence="{a}:f", signal="{a}:s", staged="{a}:x")
    EntryKeys(value="{a}:v", lock="{a}:l", fence="{a}:f", signal="{a}:s", staged="{a}:x")


# --------------------------------------------------------------------------- COMMIT


def test_commit_writes_releases_and_wakes(fake: redis.Redis, keys: EntryKeys) -> None:
    lease = make_lease(fake, keys)
    acquired(lease.attempt())
    assert lease.commit(b"first") is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"first"
    assert fake.pttl(keys.value) == -1  # deterministic entries never expire
    assert not fake.exists(keys.lock)
    assert fake.llen(keys.signal) == 1  # one token wakes every waiter
    assert lease.release() is False  # the commit ended the hold


def test_commit_retried_after_a_lost_reply_recognizes_its_own_bytes(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    lease = make_lease(fake, keys)
    acquired(lease.attempt())
    assert lease.commit(b"ours") is CommitResult.WRITTEN
    # The first reply never arrived; the retry runs with the same token.
    assert lease.commit(b"ours") is CommitResult.WRITTEN
    assert lease.commit(b"different bytes") is CommitResult.EXISTED
    assert fake.get(keys.value) == b"ours"


def test_commit_after_another_holder_committed_reports_existed(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    """A holder paused past its lease resumes after the next holder committed and left."""
    paused, winner = make_lease(fake, keys), make_lease(fake, keys)
    acquired(paused.attempt())
    expire(fake, keys)
    acquired(winner.attempt())
    assert winner.commit(b"winner") is CommitResult.WRITTEN
    assert paused.commit(b"paused") is CommitResult.EXISTED
    assert fake.get(keys.value) == b"winner"


def test_commit_with_a_ttl(fake: redis.Redis, keys: EntryKeys) -> None:
    lease = make_lease(fake, keys)
    acquired(lease.attempt())
    assert lease.commit(b"v", ttl_ms=60_000) is CommitResult.WRITTEN
    assert 0 < fake.pttl(keys.value) <= 60_000


def test_commit_is_fenced_once_another_worker_holds_the_lock(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    stale, current = make_lease(fake, keys), make_lease(fake, keys)
    assert acquired(stale.attempt()).fence == 1
    expire(fake, keys)
    assert acquired(current.attempt()).fence == 2
    assert stale.commit(b"stale") is CommitResult.FENCED
    assert fake.get(keys.value) is None
    assert fake.get(keys.lock) == current.owner.encode()  # nothing touched
    assert current.commit(b"current") is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"current"


def test_commit_without_acquiring_respects_the_holder(fake: redis.Redis, keys: EntryKeys) -> None:
    holder, outsider = make_lease(fake, keys), make_lease(fake, keys)
    acquired(holder.attempt())
    assert outsider.commit(b"x") is CommitResult.FENCED
    assert holder.commit(b"h") is CommitResult.WRITTEN
    assert outsider.commit(b"x") is CommitResult.EXISTED
    assert fake.get(keys.value) == b"h"


# --------------------------------------------------------------------------- STAGE / PUBLISH


def test_stage_then_publish(fake: redis.Redis, keys: EntryKeys) -> None:
    writer, reader = make_lease(fake, keys), make_lease(fake, keys)
    acquired(writer.attempt())
    assert stage(writer, b"result") is CommitResult.WRITTEN
    assert fake.get(keys.staged) == b"result"
    assert fake.get(keys.value) is None
    held(reader.attempt())  # readers never see a staged result: it is not published yet
    assert publish(writer) is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"result"
    assert not fake.exists(keys.staged)
    assert not fake.exists(keys.lock)
    assert fake.llen(keys.signal) == 1
    assert reader.attempt() == Present(b"result")
    assert publish(writer) is CommitResult.EXISTED  # retried: nothing staged, a value exists


def test_stage_and_publish_are_fenced_when_the_lock_is_not_ours(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    holder, other = make_lease(fake, keys), make_lease(fake, keys)
    assert stage(other, b"x") is CommitResult.FENCED  # nobody holds it: not ours either
    acquired(holder.attempt())
    assert stage(other, b"x") is CommitResult.FENCED
    assert not fake.exists(keys.staged)
    assert stage(holder, b"h") is CommitResult.WRITTEN
    assert publish(other) is CommitResult.FENCED  # the holder publishes what it staged
    assert fake.get(keys.value) is None
    assert fake.get(keys.staged) == b"h"
    assert fake.get(keys.lock) == holder.owner.encode()


def test_publish_with_nothing_staged_is_lost_and_keeps_the_lock(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    """A failover dropped the staged copy: the holder must stage again."""
    lease = make_lease(fake, keys)
    acquired(lease.attempt())
    assert publish(lease) is CommitResult.LOST
    assert fake.get(keys.lock) == lease.owner.encode()
    assert stage(lease, b"again") is CommitResult.WRITTEN
    assert publish(lease) is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"again"


def test_stage_after_a_value_was_published_is_existed(fake: redis.Redis, keys: EntryKeys) -> None:
    first, late = make_lease(fake, keys), make_lease(fake, keys)
    acquired(first.attempt())
    expire(fake, keys)
    acquired(late.attempt())
    fake.set(keys.value, b"published meanwhile")
    assert stage(late, b"late") is CommitResult.EXISTED
    assert not fake.exists(keys.staged)


def test_acquire_hands_a_staged_result_to_the_next_holder(
    fake: redis.Redis, keys: EntryKeys
) -> None:
    """A holder that staged and died: its successor publishes it instead of computing."""
    dead, successor = make_lease(fake, keys), make_lease(fake, keys)
    acquired(dead.attempt())
    assert stage(dead, b"staged by the dead") is CommitResult.WRITTEN
    expire(fake, keys)
    taken = acquired(successor.attempt())
    assert taken.staged == b"staged by the dead"
    assert publish(successor) is CommitResult.WRITTEN
    assert fake.get(keys.value) == b"staged by the dead"
    assert dead.commit(b"other") is CommitResult.EXISTED


# --------------------------------------------------------------------------- wake-up token


def test_wake_up_token_wakes_every_waiter(fake: redis.Redis, keys: EntryKeys) -> None:
    lease = make_lease(fake, keys)
    assert lease.wait(0) is False
    assert lease.wait(-1) is False
    assert lease.wait(0.05) is False  # no token yet
    acquired(lease.attempt())
    assert lease.release() is True
    # The token is rotated in place: every waiter sees it, and it stays for the next.
    assert all(lease.wait(0.05) for _ in range(3))
    assert fake.llen(keys.signal) == 1
    assert acquired(lease.attempt()).clean is True  # acquiring consumes it
    assert fake.llen(keys.signal) == 0
    assert lease.release() is True


def test_a_wait_never_blocks_longer_than_max_block(fake: redis.Redis, keys: EntryKeys) -> None:
    calls: list[tuple[Any, ...]] = []

    class Recording(fakeredis.FakeRedis):
        def brpoplpush(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return super().brpoplpush(*args, **kwargs)

    client = Recording(server=fakeredis.FakeServer())
    lease = make_lease(client, keys, max_block=0.05)
    assert lease.wait(60) is False
    assert calls == [(keys.signal, keys.signal, 0.05)]


# --------------------------------------------------------------------------- renewal


def test_renewer_follows_its_injected_clock(fake: redis.Redis, keys: EntryKeys) -> None:
    clock = ManualClock()
    renewer = Renewer(clock=clock)
    extends: list[list[Any]] = []
    extend = Scripts(fake)(EXTEND_LUA)

    def recording(*, keys: list[str], args: list[Any]) -> Any:
        extends.append(args)
        return extend(keys=keys, args=args)

    lease = make_lease(fake, keys, lease=30)  # taken without renewal...
    acquired(lease.attempt())
    hold = Hold(lease.owner, 1, keys.lock, 30_000)
    renewer.add(hold, recording, 0.3)  # ...renewed here every 0.1 s of the fake clock
    time.sleep(0.35)  # a whole lease of real time: the clock did not move, so no renewal
    assert extends == []
    clock.now += 0.12  # a third of the lease (and a little)
    assert wait_until(lambda: len(extends) == 1)
    assert extends == [[lease.owner, 30_000]]
    clock.now += 0.12
    assert wait_until(lambda: len(extends) == 2)
    assert not hold.lost
    renewer.remove(hold)
    clock.now += 1.0
    time.sleep(0.2)
    assert len(extends) == 2  # removed: not renewed again
    assert renewer.held() == 0


def test_renewer_marks_a_hold_lost_after_a_lease_of_failures(keys: EntryKeys) -> None:
    clock = ManualClock()
    renewer = Renewer(clock=clock)
    failures: list[int] = []

    def failing(*, keys: list[str], args: list[Any]) -> Any:
        failures.append(1)
        raise redis.ConnectionError("server gone")

    hold = Hold("token:1", 1, keys.lock, 300)
    renewer.add(hold, failing, 0.3)
    for n in (1, 2):  # two thirds of a lease of failures: retried, not yet lost
        clock.now += 0.12
        assert wait_until(lambda n=n: len(failures) == n)  # type: ignore[misc]
        assert not hold.lost
    clock.now += 0.12  # a whole lease without a successful renewal
    assert wait_until(lambda: hold.lost)
    assert len(failures) == 3
    clock.now += 1.0
    time.sleep(0.2)
    assert len(failures) == 3  # a lost hold is not renewed any more
    assert renewer.held() == 0


def test_renewer_marks_a_hold_lost_when_the_lock_is_someone_elses(keys: EntryKeys) -> None:
    clock = ManualClock()
    renewer = Renewer(clock=clock)
    hold = Hold("token:1", 1, keys.lock, 300)
    renewer.add(hold, lambda *, keys, args: 0, 0.3)
    clock.now += 0.12
    assert wait_until(lambda: hold.lost)


def test_one_renewal_thread_serves_many_holds(fake: redis.Redis) -> None:
    clock = ManualClock()
    renewer = Renewer(clock=clock)
    before = renew_threads()
    leases = [
        make_lease(fake, entry_keys(f"many-{i}-{uuid.uuid4().hex[:6]}"), renewer=renewer)
        for i in range(20)
    ]
    for lease in leases:
        acquired(lease.attempt())
    assert renewer.held() == 20
    assert renew_threads() == before + 1
    assert all(t.daemon for t in threading.enumerate() if t.name == RENEW_THREAD)
    for lease in leases:
        assert lease.release() is True
    assert renewer.held() == 0


def test_renewal_keeps_the_lock_alive(fake: redis.Redis, keys: EntryKeys) -> None:
    renewer = Renewer()
    holder = make_lease(fake, keys, lease=0.3, renewer=renewer)
    other = make_lease(fake, keys, lease=0.3)
    acquired(holder.attempt())
    end = time.monotonic() + 1.2  # four leases
    attempts = 0
    while time.monotonic() < end:
        held(other.attempt())
        attempts += 1
        time.sleep(0.05)
    assert attempts > 0
    assert not holder.lost
    assert holder.release() is True
    acquired(other.attempt())
    other.release()


def test_renewal_notices_a_lost_lock(fake: redis.Redis, keys: EntryKeys) -> None:
    lease = make_lease(fake, keys, lease=0.3, renewer=Renewer())
    acquired(lease.attempt())
    fake.set(keys.lock, "somebody-else:99", px=5000)  # an operator, or a split brain
    assert wait_until(lambda: lease.lost, timeout=5)
    assert lease.commit(b"v") is CommitResult.FENCED
    assert fake.get(keys.value) is None


def test_renewal_errors_for_a_lease_mark_it_lost(keys: EntryKeys) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    lease = make_lease(client, keys, lease=0.3, renewer=Renewer())
    acquired(lease.attempt())
    server.connected = False  # every command now raises ConnectionError
    try:
        assert wait_until(lambda: lease.lost, timeout=5)
    finally:
        server.connected = True
    assert wait_until(lambda: not client.exists(keys.lock), timeout=5)  # nobody renewed it
    assert lease.release() is False


def test_renewal_stops_on_release_and_on_commit(fake: redis.Redis, keys: EntryKeys) -> None:
    renewer = Renewer()
    lease = make_lease(fake, keys, lease=30, renewer=renewer)
    acquired(lease.attempt())
    assert renewer.held() == 1
    assert lease.release() is True  # at once, not after a 10 s renewal interval
    assert renewer.held() == 0
    acquired(lease.attempt())
    assert renewer.held() == 1
    assert lease.commit(b"v") is CommitResult.WRITTEN
    assert renewer.held() == 0


def _renewer_state_in_child(write_fd: int) -> None:
    """In a forked child: report the inherited renewer's holds, then renew one of its own."""
    try:
        inherited = RENEWER.held()
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        keys = entry_keys(f"child-{os.getpid()}")
        lease = Lease(client, keys, Scripts(client), RENEWER, lease=0.3, max_block=0.1)
        acquired(lease.attempt())
        threads = renew_threads()
        kept = wait_until(lambda: not lease.lost and client.pttl(keys.lock) > 0, timeout=1)
        time.sleep(0.5)  # longer than the lease: only a renewal in this process keeps it
        alive = bool(client.exists(keys.lock))
        os.write(write_fd, f"{inherited} {threads} {int(kept and alive)}".encode())
    finally:
        os._exit(0)


def test_the_renewer_is_rebuilt_empty_after_fork(fake: redis.Redis, keys: EntryKeys) -> None:
    lease = Lease(fake, keys, Scripts(fake), RENEWER, lease=30, max_block=0.1)
    acquired(lease.attempt())
    assert RENEWER.held() >= 1
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits inside
        os.close(read_fd)
        _renewer_state_in_child(write_fd)
    os.close(write_fd)
    try:
        status = wait_for_child(pid, 20)
        report = os.read(read_fd, 100).decode()
    finally:
        os.close(read_fd)
        lease.release()
    assert status == 0, f"child exit status {status}"
    inherited, threads, renewed = (int(x) for x in report.split())
    assert inherited == 0  # the parent's holds are not the child's to renew
    assert threads == 1  # one renewal thread of the child's own
    assert renewed == 1


def wait_for_child(pid: int, timeout: float) -> int:
    """The child's exit code; kill it and fail if it has not exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} still running after {timeout}s (killed)")


# --------------------------------------------------------------------------- real redis-server


def real_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5.0)


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = real_client(redis_server)
    Scripts(client).load_all()
    yield client
    client.close()


@pytest.mark.real_redis
def test_real_threads_hold_the_lock_one_at_a_time(
    redis_server: RedisServer, keys: EntryKeys
) -> None:
    guard = threading.Lock()
    state = {"inside": 0, "max_inside": 0, "acquisitions": 0, "waits": 0}
    done: list[int] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        client = real_client(redis_server)
        try:
            for _ in range(3):
                lease = Lease(client, keys, Scripts(client), RENEWER, lease=5, max_block=0.5)
                while True:
                    attempt = lease.attempt()
                    if isinstance(attempt, Acquired):
                        break
                    assert isinstance(attempt, Held)
                    with guard:
                        state["waits"] += 1
                    lease.wait(attempt.pttl)
                with guard:
                    state["inside"] += 1
                    state["acquisitions"] += 1
                    state["max_inside"] = max(state["max_inside"], state["inside"])
                time.sleep(0.005)
                with guard:
                    state["inside"] -= 1
                if not lease.release():
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
    assert state["acquisitions"] == 24
    print(f"\ncontention: {state['waits']} waits for 24 acquisitions")


@pytest.mark.real_redis
def test_real_commit_wakes_every_blocked_waiter(
    redis_server: RedisServer, rclient: redis.Redis, keys: EntryKeys
) -> None:
    holder = make_lease(rclient, keys, renewer=RENEWER)
    acquired(holder.attempt())
    name = f"waiter-{uuid.uuid4().hex[:8]}"
    results: list[tuple[Any, float]] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        client = real_client(redis_server)
        client.client_setname(name)
        try:
            lease = make_lease(client, keys, max_block=20)
            held(lease.attempt())
            woken = lease.wait(20)
            results.append(((woken, lease.attempt()), time.monotonic()))
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
    assert [outcome for outcome, _ in results] == [(True, Present(b"kernel"))] * 8
    latency = max(at for _, at in results) - committed_at
    print(f"\nwake-up of 8 blocked waiters: max latency {latency * 1000:.1f} ms")


def _child_acquire_then_sigkill(url: str, keys: EntryKeys, out: Any) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    lease = Lease(client, keys, Scripts(client), RENEWER, lease=1.0, max_block=0.5)
    attempt = lease.attempt()
    out.put(attempt.fence if isinstance(attempt, Acquired) else None)
    out.close()
    out.join_thread()  # Queue.put only hands the item to a feeder thread: flush it first
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.real_redis
@pytest.mark.slow
def test_real_sigkilled_holder_is_taken_over(
    redis_server: RedisServer, rclient: redis.Redis, keys: EntryKeys
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
    assert child_fence == 1
    assert child.exitcode == -signal.SIGKILL
    waiter = make_lease(rclient, keys)
    waits = 0
    for _ in range(100):
        attempt = waiter.attempt()
        if isinstance(attempt, Acquired):
            break
        waits += 1
        assert held(attempt).fence == child_fence
        waiter.wait(attempt.pttl)  # nobody releases: bounded by the dead holder's lease
    taken = acquired(attempt)
    assert waits >= 1
    assert taken.fence == child_fence + 1
    assert taken.clean is False  # the lease ran out: a takeover
    assert waiter.release() is True


def _child_hold_then_commit(url: str, keys: EntryKeys, ready: Any, go: Any, out: Any) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    lease = Lease(client, keys, Scripts(client), RENEWER, lease=0.5, max_block=0.25)
    attempt = lease.attempt()
    ready.put(attempt.fence if isinstance(attempt, Acquired) else None)
    go.get(timeout=60)
    result = lease.commit(b"child")
    out.put((result.value, lease.lost))


@pytest.mark.real_redis
@pytest.mark.slow
@pytest.mark.parametrize("parent_commits", [True, False])
def test_real_sigstopped_holder_is_fenced(
    redis_server: RedisServer, rclient: redis.Redis, keys: EntryKeys, parent_commits: bool
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
        assert child_fence == 1
        assert child.pid is not None
        os.kill(child.pid, signal.SIGSTOP)
        stopped = True
        parent = make_lease(rclient, keys)
        for _ in range(100):  # the child's renewal is frozen: its lease runs out
            attempt = parent.attempt()
            if isinstance(attempt, Acquired):
                break
            parent.wait(held(attempt).pttl)
        assert acquired(attempt).fence == child_fence + 1
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
    if parent_commits:
        assert result == CommitResult.EXISTED.value
        assert rclient.get(keys.value) == b"parent"
    else:
        assert result == CommitResult.FENCED.value
        assert rclient.get(keys.value) is None
        assert parent.release() is True


def _forked_child_uses_the_parents_lease(lease: Lease, write_fd: int) -> None:
    try:
        attempt = lease.attempt()
        report = (
            f"{lease.owner!r}|{lease.release()}|{lease.commit(b'child').value}|"
            f"{type(attempt).__name__}|{lease.lost}"
        )
        os.write(write_fd, report.encode())
    finally:
        os._exit(0)


@pytest.mark.real_redis
def test_real_forked_child_never_holds_its_parents_lock(
    redis_server: RedisServer, keys: EntryKeys
) -> None:
    client = real_client(redis_server)
    lease = make_lease(client, keys, renewer=RENEWER)
    parent_fence = acquired(lease.attempt()).fence
    parent_owner = lease.owner
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits inside
        os.close(read_fd)
        _forked_child_uses_the_parents_lease(lease, write_fd)
    os.close(write_fd)
    try:
        status = wait_for_child(pid, 30)
        report = os.read(read_fd, 1000).decode()
    finally:
        os.close(read_fd)
    assert status == 0
    owner, released, committed, attempt, lost = report.split("|")
    # The child neither holds, releases, commits with, nor re-takes the parent's lock.
    assert (owner, released, committed, attempt, lost) == (
        "''",
        "False",
        CommitResult.FENCED.value,
        "Held",
        "False",
    )
    check = real_client(redis_server)
    assert check.get(keys.value) is None
    assert check.get(keys.lock) == parent_owner.encode()
    assert lease.commit(b"parent") is CommitResult.WRITTEN
    assert check.get(keys.value) == b"parent"
    assert int(check.get(keys.fence) or 0) == parent_fence
    check.close()
    client.close()


@pytest.mark.real_redis
def test_real_cluster_scripts_run_on_the_slot_owner(
    redis_cluster: RedisClusterHandle, namespace: str
) -> None:
    cluster = redis.cluster.RedisCluster.from_url(redis_cluster.url, socket_timeout=5.0)
    try:
        owners = set()
        for i in range(6):
            keys = entry_keys(f"{namespace}-{i}")
            a, b = make_lease(cluster, keys), make_lease(cluster, keys)
            assert acquired(a.attempt()).fence == 1
            assert held(b.attempt()).fence == 1
            node = cluster.get_node_from_key(keys.value)  # type: ignore[no-untyped-call]
            owners.add(node.name)
            direct = redis.Redis(host=node.host, port=node.port)
            try:
                if i % 2:  # COMMIT through the cluster client
                    assert a.commit(b"v%d" % i) is CommitResult.WRITTEN
                else:  # STAGE/PUBLISH pipelined on the node, as LeaseFlight does
                    Scripts(direct).load_all()
                    assert stage(a, b"v%d" % i, direct) is CommitResult.WRITTEN
                    assert publish(a, direct) is CommitResult.WRITTEN
                assert b.wait(1.0) is True
                assert b.attempt() == Present(b"v%d" % i)
                assert direct.get(keys.value) == b"v%d" % i
                assert int(direct.get(keys.fence) or 0) == 1
            finally:
                direct.close()
        print(f"\ncluster: entries landed on {len(owners)} node(s)")
        assert len(owners) >= 2
    finally:
        cluster.close()


def test_module_exports_what_it_documents() -> None:
    assert set(lease_module.__all__) <= set(dir(lease_module))
