"""Network faults between the caches and a real Redis, injected by ``proxy.FaultProxy``.

fcache must fail open (no exception reaches the caller, every value is right, the
counters show what happened, and it reaches the server again by itself); dcache
must fail closed (a ``RemoteUnavailableError`` once its retry deadline is spent,
and never a value that Redis does not hold). Durations are measured and printed
(run with ``-s``) and written to ``bench/results/faults.json``; they are never
asserted. Waits are bounded and fail with a message saying what did not happen.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redis_cache
from redis_cache import exceptions
from redis_cache import lease as lease_module
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import DELAY_ENV, LEDGER_ENV, computations, dcache_worker, make_settings
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

SPAWN = multiprocessing.get_context("spawn")
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "faults.json"

CONNECT_TIMEOUT = 0.2
SOCKET_TIMEOUT = 0.5
RETRY_DEADLINE = 1.5
LATENCY = 0.05
FAULTS = ["latency", "drop", "blackhole", "half_open"]
HARD_FAULTS = ["drop", "blackhole", "half_open"]
KEYS_UNDER_FAULT = 60
RECOVERY_ATTEMPTS = 500  # calls (each followed by a short sleep) before recovery is a failure

FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_figures() -> Iterator[None]:
    yield
    if not FIGURES:
        return
    print("\nfault figures:")
    for name, figures in sorted(FIGURES.items()):
        print(f"  {name}: {json.dumps(figures, sort_keys=True)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            previous = json.loads(RESULTS.read_text())
        except ValueError:
            previous = {}
    RESULTS.write_text(json.dumps({**previous, **FIGURES}, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", redis_server.port) as p:
        yield p


def apply_fault(proxy: FaultProxy, fault: str) -> None:
    if fault == "latency":
        proxy.latency(LATENCY)
    else:
        proxy.set_mode(fault)  # type: ignore[arg-type]


def settings_for(tmp: Path, url: str, namespace: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "url": url,
        "namespace": namespace,
        "connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "breaker_cooldown": 0.05,
        "breaker_max_cooldown": 0.2,
        "retry_deadline": RETRY_DEADLINE,
        "stats_interval": 0,
    }
    return make_settings(tmp, **{**options, **overrides})


def dcache_settings(tmp: Path, url: str, namespace: str, **overrides: Any) -> Any:
    return settings_for(tmp, url, namespace, deterministic=True, determinism="global", **overrides)


def value_key(cache: CacheInterface, fn: Any, arg: Any) -> str:
    backend = cache._runtime()
    assert backend.redis is not None
    return backend.redis.value_key(cache.entry_key(fn, ((arg,), {})))


def stored_value(cache: CacheInterface, server: RedisServer, fn: Any, arg: Any) -> Any:
    """What Redis holds for ``fn(arg)``, decoded; a sentinel string if nothing."""
    blob = server.client().get(value_key(cache, fn, arg))
    if blob is None:
        return "<absent from redis>"
    key = cache.entry_key(fn, ((arg,), {}))
    return cache._runtime().codec.decode(key.key_id, blob)


class Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.returned = False
        self.seconds = 0.0


def bounded_call(call: Callable[[], Any], limit: float, what: str) -> Outcome:
    """Run ``call`` on a thread; fail the test if it neither returns nor raises in ``limit``."""
    outcome = Outcome()

    def run() -> None:
        started = time.monotonic()
        try:
            outcome.value = call()
            outcome.returned = True
        except BaseException as exc:
            outcome.error = exc
        outcome.seconds = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"{what} neither returned nor raised within {limit:g}s")
    return outcome


def compile_kernel(x: int) -> tuple[int, str, int]:
    return (x, "kernel", x * x)


# --------------------------------------------------------------------------- fcache


@pytest.mark.parametrize("fault", FAULTS)
def test_fcache_fails_open_and_recovers(
    fault: str, proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    cache = FastCache(settings_for(tmp_path, proxy.url, namespace))
    calls: list[int] = []

    def kernel(x: int) -> tuple[int, str, int]:
        calls.append(x)
        return compile_kernel(x)

    kernel.__qualname__ = "fault_kernel"
    wrapped = cache.record()(kernel)
    assert wrapped(-1) == compile_kernel(-1)  # connected through the proxy
    assert redis_server.client().exists(value_key(cache, kernel, -1)) == 1
    before = cache.stats()

    # Under latency every call pays two slow round trips: fewer calls say as much.
    n = KEYS_UNDER_FAULT // 3 if fault == "latency" else KEYS_UNDER_FAULT
    apply_fault(proxy, fault)
    started = time.monotonic()
    values = []
    for i in range(n):
        values.append(wrapped(i))  # no exception may escape
        time.sleep(0.01)  # paced, so the breaker's cooldown runs out and it probes again
    served_seconds = time.monotonic() - started
    assert values == [compile_kernel(i) for i in range(n)]
    assert calls == [-1, *range(n)]
    during = cache.stats()
    errors = during.remote_errors - before.remote_errors
    skipped = during.remote_skipped - before.remote_skipped
    landed = sum(redis_server.client().exists(value_key(cache, kernel, i)) for i in range(n))
    if fault == "latency":
        assert (errors, skipped) == (0, 0)
        assert landed == n  # slow, but every insert reached the server
    else:
        assert errors >= 1, "the fault went unnoticed"
        assert skipped >= 1, "the circuit breaker never skipped the sick server"
        assert errors < n // 2, f"{errors} errors in {n} calls: the breaker did not spare calls"

    proxy.pass_through()
    recovered_at = None
    started = time.monotonic()
    for attempt in range(RECOVERY_ATTEMPTS):
        x = 1000 + attempt
        assert wrapped(x) == compile_kernel(x)
        if redis_server.client().exists(value_key(cache, kernel, x)):
            recovered_at = time.monotonic() - started
            break
        time.sleep(0.01)
    assert recovered_at is not None, (
        f"fcache did not write to redis again after {RECOVERY_ATTEMPTS} calls once the "
        f"{fault} ended: {cache.stats()}"
    )
    after = cache.stats()
    FIGURES[f"fcache/{fault}"] = {
        "calls_under_fault": n,
        "remote_errors": errors,
        "remote_skipped": skipped,
        "inserts_landed_during_fault": landed,
        "seconds_to_serve_calls_under_fault": round(served_seconds, 3),
        "seconds_to_recover": round(recovered_at, 3),
        "errors_while_recovering": after.remote_errors - during.remote_errors,
    }
    cache.close()


def test_fcache_reads_what_others_wrote_once_the_fault_ends(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A remote entry written during a blackhole by a healthy machine is a hit afterwards."""
    sick = FastCache(settings_for(tmp_path / "sick", proxy.url, namespace))
    healthy = FastCache(settings_for(tmp_path / "healthy", redis_server.url, namespace))
    assert sick.get(compile_kernel, ((0,), {})) is None  # connected
    proxy.blackhole()
    assert healthy.insert(compile_kernel, ((1,), {}), ("from", "healthy"))
    assert sick.get(compile_kernel, ((1,), {})) is None  # fail open: a miss, no exception
    proxy.pass_through()
    hit = None
    for _ in range(RECOVERY_ATTEMPTS):
        hit = sick.get(compile_kernel, ((1,), {}))
        if hit is not None:
            break
        time.sleep(0.01)
    assert hit == redis_cache.Hit(("from", "healthy")), "the entry never became visible"
    sick.close()
    healthy.close()


# --------------------------------------------------------------------------- dcache


@pytest.mark.parametrize("fault", HARD_FAULTS)
def test_dcache_fails_closed_then_recovers(
    fault: str, proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    cache = DeterministicCache(dcache_settings(tmp_path, proxy.url, namespace))
    calls: list[int] = []

    def kernel(x: int) -> str:
        calls.append(x)
        return f"{x}@{time.time_ns()}"

    kernel.__qualname__ = "fault_dkernel"
    wrapped = cache.record()(kernel)
    first = wrapped(0)
    assert stored_value(cache, redis_server, kernel, 0) == first

    apply_fault(proxy, fault)
    outcome = bounded_call(lambda: wrapped(1), 10 * RETRY_DEADLINE + 10, f"dcache under {fault}")
    assert not outcome.returned, f"dcache returned {outcome.value!r} without its sync layer"
    assert isinstance(outcome.error, exceptions.RemoteUnavailableError), repr(outcome.error)
    assert isinstance(outcome.error, redis_cache.SystemError)
    message = str(outcome.error)
    assert f"127.0.0.1:{proxy.port}" in message and "attempts" in message, message
    assert wrapped(0) == first  # synchronized before the fault: a memo hit needs no server
    computed_under_fault = calls.count(1)

    proxy.pass_through()
    started = time.monotonic()
    recovered = bounded_call(lambda: wrapped(1), 10 * RETRY_DEADLINE + 10, "dcache after recovery")
    recovery_seconds = time.monotonic() - started
    assert recovered.returned, f"dcache did not recover: {recovered.error!r}"
    assert stored_value(cache, redis_server, kernel, 1) == recovered.value
    FIGURES[f"dcache/{fault}"] = {
        "seconds_to_fail_closed": round(outcome.seconds, 3),
        "retry_deadline": RETRY_DEADLINE,
        "error": type(outcome.error).__name__,
        "computed_under_fault": computed_under_fault,
        "seconds_to_first_success_after_fault": round(recovery_seconds, 3),
        "remote_errors": cache.stats().remote_errors,
    }
    cache.close()


@pytest.mark.parametrize("fault", HARD_FAULTS)
def test_dcache_fault_during_compute_never_returns_an_unsynchronized_value(
    fault: str, proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """The connection breaks while ``fn`` runs under the lease: the commit cannot be confirmed."""
    cache = DeterministicCache(dcache_settings(tmp_path, proxy.url, namespace, lock_lease=1.0))
    computing = threading.Event()
    produced: list[str] = []

    def kernel(x: int) -> str:
        computing.set()
        time.sleep(0.3)
        produced.append(f"{x}@{time.time_ns()}")
        return produced[-1]

    kernel.__qualname__ = "fault_midcompute"
    wrapped = cache.record()(kernel)
    assert wrapped(0).startswith("0@")  # connected, consistency checked
    result = Outcome()

    def call() -> None:
        try:
            result.value = wrapped(1)
            result.returned = True
        except BaseException as exc:
            result.error = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert computing.wait(10), "fn never started"
    apply_fault(proxy, fault)
    thread.join(10 * RETRY_DEADLINE + 10)
    assert not thread.is_alive(), f"dcache under {fault} during compute never finished"
    proxy.pass_through()
    if result.returned:  # allowed only if Redis really holds what we got
        assert stored_value(cache, redis_server, kernel, 1) == result.value
    else:
        assert isinstance(result.error, exceptions.RemoteUnavailableError), repr(result.error)
    # Whatever happened, every caller from now on gets one value, the one Redis holds.
    other = DeterministicCache(dcache_settings(tmp_path / "other", redis_server.url, namespace))
    again = bounded_call(lambda: other.record()(kernel)(1), 30, "a second machine")
    assert again.returned, repr(again.error)
    assert stored_value(cache, redis_server, kernel, 1) == again.value
    if result.returned:
        assert again.value == result.value
    FIGURES[f"dcache/{fault}-during-compute"] = {
        "outcome": "returned (stored in redis)" if result.returned else type(result.error).__name__,
        "redis_holds_the_cut_attempt's_value": bool(produced) and again.value == produced[0],
    }
    cache.close()
    other.close()


def test_dcache_under_latency_works_and_everything_returned_is_stored(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    cache = DeterministicCache(dcache_settings(tmp_path, proxy.url, namespace))

    def kernel(x: int) -> str:
        return f"{x}@{time.time_ns()}"

    kernel.__qualname__ = "latency_dkernel"
    wrapped = cache.record()(kernel)
    assert wrapped(-1).startswith("-1@")
    proxy.latency(LATENCY)
    started = time.monotonic()
    returned = {x: wrapped(x) for x in range(5)}
    seconds = time.monotonic() - started
    proxy.pass_through()
    for x, value in returned.items():
        assert stored_value(cache, redis_server, kernel, x) == value
    assert cache.stats().remote_errors == 0
    FIGURES["dcache/latency"] = {
        "misses": len(returned),
        "seconds_per_miss": round(seconds / len(returned), 3),
        "added_latency_per_chunk": LATENCY,
        "remote_errors": 0,
    }
    cache.close()


def test_dcache_under_flapping_faults_returns_only_what_redis_holds(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """Two threads hammer dcache while the proxy cycles through every fault."""
    cache = DeterministicCache(
        dcache_settings(tmp_path, proxy.url, namespace, lock_lease=1.0, lock_timeout=10)
    )

    def kernel(x: int) -> str:
        return f"{x}@{threading.get_ident()}@{time.time_ns()}"

    kernel.__qualname__ = "flapping_dkernel"
    wrapped = cache.record()(kernel)
    assert wrapped(-1)
    stop = threading.Event()
    returned: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def hammer(offset: int) -> None:
        x = offset
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                value = wrapped(x // 2)  # each key is asked for twice, by both threads
            except Exception as exc:
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    returned.append((x // 2, value))
            x += 1

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    # Faults outlast the retry deadline (so some calls fail closed); gaps let calls succeed.
    schedule = [("pass", 0.5), ("drop", 2.0), ("pass", 0.5), ("blackhole", 2.0), ("pass", 0.5),
                ("half_open", 2.0), ("pass", 0.5), ("latency", 1.0), ("pass", 0.5)]  # fmt: skip
    for mode, seconds in schedule:
        if mode == "pass":
            proxy.pass_through()
        else:
            apply_fault(proxy, mode)
        time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10 * RETRY_DEADLINE + 30)
    assert not any(t.is_alive() for t in threads), "a hammering thread never finished"
    proxy.pass_through()

    assert returned, "nothing succeeded at all"
    assert all(isinstance(e, redis_cache.SystemError) for e in errors), {
        type(e).__name__ for e in errors
    }
    by_key: dict[int, set[str]] = {}
    for x, value in returned:
        by_key.setdefault(x, set()).add(value)
    diverged = {x: values for x, values in by_key.items() if len(values) > 1}
    assert not diverged, f"one key, several results: {diverged}"
    lost = {
        x: (values, stored)
        for x, values in by_key.items()
        if (stored := stored_value(cache, redis_server, kernel, x)) not in values
    }
    assert not lost, f"returned but not what redis holds: {lost}"
    FIGURES["dcache/flapping"] = {
        "returned": len(returned),
        "keys": len(by_key),
        "errors": len(errors),
        "error_types": sorted({type(e).__name__ for e in errors}),
        "diverged": 0,
        "returned_but_not_in_redis": 0,
    }
    cache.close()


# --------------------------------------------------------------------------- processes


@pytest.fixture
def fleet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str) -> Path:
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_NAMESPACE", namespace)
    monkeypatch.setenv("REDIS_CACHE_DETERMINISTIC", "1")
    monkeypatch.setenv("REDIS_CACHE_DETERMINISM", "global")
    monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv("REDIS_CACHE_LOCK_LEASE", "1.0")
    monkeypatch.setenv("REDIS_CACHE_CONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    monkeypatch.setenv("REDIS_CACHE_SOCKET_TIMEOUT", str(SOCKET_TIMEOUT))
    monkeypatch.setenv("REDIS_CACHE_STATS_INTERVAL", "0")
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    return tmp_path / "ledger"


def wait_for_lines(ledger: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(computations(ledger)) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"ledger never reached {n} computations: {computations(ledger)}")
        time.sleep(0.01)


def test_holder_cut_off_mid_compute_yields_one_result(
    fleet_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    proxy: FaultProxy,
    redis_server: RedisServer,
) -> None:
    """The holder's connection drops while fn sleeps; others take over; one result per key."""
    out = SPAWN.Queue()
    monkeypatch.setenv("REDIS_CACHE_URL", proxy.url)
    monkeypatch.setenv("REDIS_CACHE_RETRY_DEADLINE", "20")  # outlives the cut
    monkeypatch.setenv(DELAY_ENV, "4")  # only the fleet's first attempt sleeps
    holder = SPAWN.Process(
        target=dcache_worker, args=("compile_slow_first", 1, None, out, "holder")
    )
    holder.start()
    wait_for_lines(fleet_env, 1)  # the holder has the lease and computes
    proxy.drop()
    cut_at = time.monotonic()
    monkeypatch.setenv("REDIS_CACHE_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CACHE_RETRY_DEADLINE", str(RETRY_DEADLINE))
    waiters = [
        SPAWN.Process(target=dcache_worker, args=("compile_slow_first", 1, None, out, "waiter"))
        for _ in range(3)
    ]
    for p in waiters:
        p.start()
    reports = [out.get(timeout=60) for _ in waiters]
    waiters_done = time.monotonic() - cut_at
    proxy.pass_through()  # the holder may reach the server again before its deadline
    reports.append(out.get(timeout=60))
    for p in (holder, *waiters):
        p.join(30)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_role.setdefault(r["role"], []).append(r)
    waiter_values = {r["value"] for r in by_role["waiter"]}
    assert [r["error"] for r in by_role["waiter"]] == [None] * 3
    assert len(waiter_values) == 1, f"waiters disagree: {waiter_values}"
    (holder_report,) = by_role["holder"]
    if holder_report["error"] is None:
        assert {holder_report["value"]} == waiter_values, "the cut holder returned its own value"
    else:
        assert holder_report["error"].startswith(("RemoteUnavailableError", "RemoteError")), (
            holder_report["error"]
        )
    # Redis holds that one value.
    client = redis_server.client()
    namespace = os.environ["REDIS_CACHE_NAMESPACE"]
    stored = [
        k
        for k in client.scan_iter(match=f"redis_cache:v2:{namespace}:*")
        if not k.endswith((b":lock", b":fence", b":signal"))
    ]
    assert len(stored) == 1, stored
    assert len(computations(fleet_env)) == 2  # the cut attempt and one takeover
    FIGURES["dcache/holder-cut-mid-compute"] = {
        "seconds_from_cut_to_waiters_served": round(waiters_done, 3),
        "holder_outcome": holder_report["error"] or "returned the waiters' value",
        "takeovers": sum(r["stats"]["takeovers"] for r in by_role["waiter"]),
        "computations": len(computations(fleet_env)),
    }


# --------------------------------------------------------------------------- resources


def stats_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "redis_cache-stats")


def test_dcache_failing_at_first_use_leaves_no_thread_behind(
    tmp_path: Path, namespace: str
) -> None:
    """A wrong password fails fast (a permanent error): a retry loop must not pile up threads."""
    with RedisServer(password="the-right-one-5e2b") as server:
        url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        cache = DeterministicCache(dcache_settings(tmp_path, url, namespace, stats_interval=10))
        before = stats_threads()
        for _ in range(50):
            with pytest.raises(exceptions.RemoteUnavailableError):
                cache.get(compile_kernel, ((1,), {}))
        leaked = stats_threads() - before
        cache.close()
        assert leaked <= 1, f"50 failed first uses of dcache left {leaked} publisher threads"


def test_a_lost_lock_reply_does_not_cost_a_lease(
    proxy: FaultProxy,
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = DeterministicCache(
        dcache_settings(tmp_path, proxy.url, namespace, lock_lease=2.0, retry_deadline=10)
    )
    wrapped = cache.record()(compile_kernel)
    assert wrapped(0) == compile_kernel(0)  # one pooled connection, scripts loaded
    original = lease_module.Lease.attempt
    attempts: list[int] = []

    def lose_first_reply(self: Any) -> Any:
        attempts.append(1)
        if len(attempts) > 1:
            return original(self)
        proxy.half_open()  # the server runs ACQUIRE; its reply never arrives
        try:
            return original(self)
        finally:
            proxy.pass_through()

    monkeypatch.setattr(lease_module.Lease, "attempt", lose_first_reply)
    started = time.monotonic()
    assert wrapped(1) == compile_kernel(1)
    seconds = time.monotonic() - started
    stats = cache.stats()
    FIGURES["dcache/lost-acquire-reply"] = {
        "lock_lease": 2.0,
        "seconds_for_the_call": round(seconds, 3),
        "takeovers_from_itself": stats.takeovers,
    }
    cache.close()
    assert len(attempts) > 1, "the lost reply was not retried"
    assert stats.takeovers == 0, f"waited {seconds:.1f}s for its own orphaned lease"


# --------------------------------------------------------------------------- issue 9 regressions


@pytest.mark.parametrize("fault", ["blackhole", "drop-then-blackhole"])
def test_item23_retry_deadline_is_not_overrun_by_a_socket_timeout(
    fault: str, proxy: FaultProxy, namespace: str, tmp_path: Path
) -> None:
    """Each attempt's timeout is capped by the time left: a deadline of 3 s with a 5 s
    socket timeout gives up before 4 s, also when the last attempt is the one that hangs."""
    deadline, socket_timeout = 3.0, 5.0
    cache = DeterministicCache(
        dcache_settings(
            tmp_path, proxy.url, namespace, retry_deadline=deadline,
            socket_timeout=socket_timeout, connect_timeout=1.0,
        )
    )  # fmt: skip
    assert cache.get(compile_kernel, ((0,), {})) is None  # connected, server checked
    if fault == "blackhole":
        proxy.blackhole()  # every attempt hangs
    else:
        proxy.drop()  # attempts fail fast at first, and the one started late hangs
        threading.Timer(2.0, proxy.blackhole).start()
    outcome = bounded_call(lambda: cache.get(compile_kernel, ((1,), {})), 30, "dcache.get")
    proxy.pass_through()
    assert isinstance(outcome.error, exceptions.RemoteUnavailableError), repr(outcome.error)
    FIGURES[f"dcache/give-up-{fault}"] = {
        "retry_deadline": deadline,
        "socket_timeout": socket_timeout,
        "seconds_to_give_up": round(outcome.seconds, 3),
    }
    cache.close()
    assert outcome.seconds < deadline + 1.0, (
        f"gave up after {outcome.seconds:.2f}s: the {deadline:g}s deadline was overrun by "
        f"(nearly) a {socket_timeout:g}s socket timeout"
    )


class CompileTimeout(Exception):
    """What a compile farm's SIGALRM handler raises: not a Redis error."""


def test_item07_breaker_recovers_after_a_probe_interrupted_by_a_signal(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    cache = FastCache(settings_for(tmp_path / "sick", proxy.url, namespace))
    healthy = FastCache(settings_for(tmp_path / "healthy", redis_server.url, namespace))
    assert cache.get(compile_kernel, ((0,), {})) is None  # connected through the proxy
    proxy.blackhole()
    assert cache.get(compile_kernel, ((1,), {})) is None  # a timeout: the breaker opens
    assert cache.stats().remote_errors == 1
    time.sleep(0.3)  # longer than the longest cooldown: the next remote call is the probe

    def alarm(signum: int, frame: Any) -> None:
        raise CompileTimeout("compile took too long")

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # fires while the probe waits for a reply
        with pytest.raises(CompileTimeout):
            cache.get(compile_kernel, ((2,), {}))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    proxy.pass_through()
    assert healthy.insert(compile_kernel, ((3,), {}), ("from", "healthy"))
    hit = None
    for _ in range(RECOVERY_ATTEMPTS):
        hit = cache.get(compile_kernel, ((3,), {}))
        if hit is not None:
            break
        time.sleep(0.01)
    stats = cache.stats()
    cache.close()
    healthy.close()
    assert hit == redis_cache.Hit(("from", "healthy")), (
        f"the breaker never probed again after the interrupted probe: {stats}"
    )


def test_item08_a_full_server_refuses_writes_but_fcache_keeps_reading(
    fresh_redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """OOM under noeviction (what dcache requires) is a write refusal, not an outage."""
    common = {"breaker_cooldown": 60.0, "breaker_max_cooldown": 60.0}
    writer = FastCache(settings_for(tmp_path / "w", fresh_redis_server.url, namespace, **common))
    for i in range(5):
        assert writer.insert(compile_kernel, ((i,), {}), compile_kernel(i))
    writer.close()
    client = fresh_redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # full: every write is refused with OOM
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set(f"{namespace}:probe", b"x")

    cache = FastCache(settings_for(tmp_path / "r", fresh_redis_server.url, namespace, **common))
    recorded = cache.record()(compile_kernel)
    assert [recorded(100 + i) for i in range(3)] == [compile_kernel(100 + i) for i in range(3)]
    hits = [cache.get(compile_kernel, ((i,), {})) for i in range(5)]
    stats = cache.stats()
    cache.close()
    assert hits == [redis_cache.Hit(compile_kernel(i)) for i in range(5)], (
        f"refused writes stopped fcache reading existing entries: {stats}"
    )
    assert stats.remote_hits == 5 and stats.remote_skipped == 0 and stats.remote_errors == 0
    assert stats.remote_refusals == 3


def test_item09_a_waiter_past_the_retry_deadline_survives_a_blip(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """The deadline bounds each outage, not the wait for another machine's compile."""
    holder = DeterministicCache(dcache_settings(tmp_path / "holder", redis_server.url, namespace))
    waiter = DeterministicCache(
        dcache_settings(tmp_path / "waiter", proxy.url, namespace, retry_deadline=3.0,
                        lock_timeout=60)
    )  # fmt: skip
    assert waiter.get(compile_kernel, ((0,), {})) is None  # connected, server checked
    started = threading.Event()
    calls: list[int] = []

    def slow_kernel(x: int) -> str:
        calls.append(x)
        started.set()
        time.sleep(6.0)
        return f"{x} computed by the holder"

    slow_kernel.__qualname__ = "item09_slow_kernel"
    thread = threading.Thread(target=lambda: holder.record()(slow_kernel)(1), daemon=True)
    thread.start()
    assert started.wait(30)
    outcome = Outcome()

    def wait_for_it() -> None:
        begun = time.monotonic()
        try:
            outcome.value = waiter.record()(slow_kernel)(1)
            outcome.returned = True
        except BaseException as exc:
            outcome.error = exc
        outcome.seconds = time.monotonic() - begun

    waiting = threading.Thread(target=wait_for_it, daemon=True)
    waiting.start()
    # A 0.3 s blip against a 3 s deadline leaves margin for a loaded CI machine.
    time.sleep(3.5)  # waited longer than the retry deadline already
    proxy.drop()  # a blip (a failover, say): connections reset, new ones refused
    time.sleep(0.3)
    proxy.pass_through()
    waiting.join(60)
    thread.join(60)
    assert not waiting.is_alive()
    waiter.close()
    holder.close()
    assert outcome.error is None, f"the waiter lost its retries: {outcome.error!r}"
    assert outcome.value == "1 computed by the holder"
    assert calls == [1]


def redis_holds(tmp: Path, server: RedisServer, namespace: str, fn: Any, arg: Any) -> Any:
    """What Redis holds for ``fn(arg)``, read by another dcache machine (a miss: None)."""
    reader = DeterministicCache(dcache_settings(tmp / f"reader-{uuid.uuid4().hex[:6]}",
                                                server.url, namespace))  # fmt: skip
    try:
        hit = reader.get(fn, ((arg,), {}))
    finally:
        reader.close()
    return None if hit is None else hit.value


def lose_a_reply(
    monkeypatch: pytest.MonkeyPatch, proxy: FaultProxy, carrying: bytes, mode: str
) -> list[Any]:
    """The first command whose arguments carry ``carrying`` runs with the proxy in ``mode``.

    ``half_open``: the server executes it and its reply is lost. ``blackhole``: the
    command itself is lost. The connection then breaks (a poisoned stream is reset).
    """
    original = redis.Redis.execute_command
    seen: list[Any] = []

    def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        if not seen and any(isinstance(a, bytes) and carrying in a for a in args):
            seen.append(args[0])
            proxy.set_mode(mode)  # type: ignore[arg-type]
            try:
                return original(self, *args, **options)
            finally:
                proxy.pass_through()
        return original(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    return seen


def test_item12_dcache_insert_recognizes_its_own_write_after_a_lost_reply(
    proxy: FaultProxy,
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = DeterministicCache(dcache_settings(tmp_path, proxy.url, namespace, retry_deadline=10))
    assert cache.insert(compile_kernel, ((0,), {}), "warm-up")  # connected, scripts loaded
    marker = f"inserted-{uuid.uuid4().hex}"
    lost = lose_a_reply(monkeypatch, proxy, marker.encode(), "half_open")
    inserted = bounded_call(lambda: cache.insert(compile_kernel, ((1,), {}), marker), 60, "insert")
    monkeypatch.undo()
    cache.close()
    assert lost, "no command carried the value"
    assert inserted.error is None, repr(inserted.error)
    assert redis_holds(tmp_path, redis_server, namespace, compile_kernel, 1) == marker  # landed
    assert inserted.value is True, "insert stored its value and then reported False"


@pytest.mark.parametrize("mode", ["half_open", "blackhole"])
def test_item21_a_commit_whose_reply_is_lost_resumes_with_its_own_lease(
    mode: str,
    proxy: FaultProxy,
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token is known: after an unknown outcome the caller resumes, fn runs once."""
    cache = DeterministicCache(
        dcache_settings(tmp_path, proxy.url, namespace, lock_lease=5.0, lock_timeout=3.0,
                        retry_deadline=10)
    )  # fmt: skip
    assert cache.record()(compile_kernel)(0) == compile_kernel(0)  # connected, scripts loaded
    marker = f"computed-{uuid.uuid4().hex}"
    calls: list[int] = []

    def kernel(x: int) -> str:
        calls.append(x)
        return marker

    kernel.__qualname__ = f"item21_kernel_{mode}"
    lost = lose_a_reply(monkeypatch, proxy, marker.encode(), mode)
    outcome = bounded_call(lambda: cache.record()(kernel)(1), 60, "record")
    monkeypatch.undo()
    stats = cache.stats()
    assert lost, "no command carried the result"
    assert outcome.error is None, f"{outcome.error!r} after {outcome.seconds:.1f}s"
    assert outcome.value == marker
    cache.close()
    assert redis_holds(tmp_path, redis_server, namespace, kernel, 1) == marker
    assert calls == [1]
    assert stats.takeovers == 0, "it took over its own orphaned lease"
    assert stats.lock_waits == 0, "it waited behind its own lock"
