"""``redis_cache.Memoizer`` / ``PersistentMemoizer``: torch 2.13's call sequences, our layers.

The sequences are those of torch's own tests of its caching module
(``test/inductor/test_caching.py``: Memoizer, PersistentMemoizer, DeferredRecording,
encoder/decoder factories, interim results, cache_clear), with the imports changed.
Where torch's tests peek at private stores, these observe the same thing through the
public calls (a replay that must hit, or must raise ``KeyError``). Then what is ours:
canonical keys, machines sharing a ``PersistentMemoizer`` through a real redis-server,
and signed pickles only with a secret. No torch needed here (see test_torch_memoizer.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from threading import Event
from typing import Any

import pytest

from redis_cache import (
    CustomParamsEncoderRequiredError,
    CustomResultEncoderRequiredError,
    Memoizer,
    PersistentMemoizer,
    config,
)
from redis_cache.memoizer import DeferredRecording
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"memoizer-fleet-secret-33a1"


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    return make_settings(tmp_path / "rc", stats_interval=0)


@pytest.fixture
def disabled(tmp_path: Path) -> config.Settings:
    return make_settings(tmp_path / "rc", enabled=False, stats_interval=0)


@pytest.fixture
def persistent(settings: config.Settings) -> Iterator[PersistentMemoizer]:
    memoizer = PersistentMemoizer(sub_dir="testing", settings=settings)
    yield memoizer
    memoizer.close()


def deferring(store: list[DeferredRecording[Any, Any]], interim: bool = False) -> Any:
    """An encoder factory whose encoder defers: it returns a DeferredRecording."""

    def factory(fn: Any) -> Any:
        def params_to_encoder(*args: Any, **kwargs: Any) -> Any:
            def encode(result: Any) -> DeferredRecording[Any, Any]:
                deferred: DeferredRecording[Any, Any] = DeferredRecording(
                    make_interim_result=(lambda: result) if interim else None
                )
                store.append(deferred)
                return deferred

            return encode

        return params_to_encoder

    return factory


# --------------------------------------------------------------------------- Memoizer


def test_record_calls_every_time_and_returns_the_result(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    calls = 0

    @memoizer.record()
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert (compute(5), compute(5)) == (10, 10)
    assert calls == 2


def test_replay_serves_what_record_stored_without_calling(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)

    @memoizer.record()
    def compute(x: int) -> int:
        return x * 2

    compute(5)

    # As in torch: the key is the parameters, not the function.
    @memoizer.replay()
    def compute_replay(x: int) -> int:
        raise AssertionError("replay must not call the function")

    assert compute_replay(5) == 10


def test_replay_raises_key_error_on_a_miss(settings: config.Settings) -> None:
    @Memoizer(settings=settings).replay()
    def compute(x: int) -> int:
        return x * 2

    with pytest.raises(KeyError):
        compute(5)


def test_memoize_calls_once(settings: config.Settings) -> None:
    calls = 0

    @Memoizer(settings=settings).memoize()
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert compute(5) == 10
    assert compute(5) == 10
    assert calls == 1


def test_disabled_caching_calls_through_and_replay_misses(disabled: config.Settings) -> None:
    memoizer = Memoizer(settings=disabled)
    calls = 0

    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    recorded, memoized = memoizer.record()(compute), memoizer.memoize()(compute)
    assert [recorded(5), recorded(5), memoized(5), memoized(5)] == [10] * 4
    assert calls == 4
    with pytest.raises(KeyError, match="Caching is disabled"):
        memoizer.replay()(compute)(5)


def test_memoizers_and_sub_keys_never_share(settings: config.Settings) -> None:
    a, b = Memoizer(sub_key="feature_a", settings=settings), Memoizer(sub_key="feature_b")
    a.record()(lambda x: x * 2)(5)
    with pytest.raises(KeyError):
        b.replay()(lambda x: x)(5)
    assert a.replay()(lambda x: x)(5) == 10


def test_cache_clear_forgets(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    memoizer.record()(lambda x: x * 2)(5)
    memoizer.record()(lambda x: x * 2)(10)
    assert len(memoizer) == 2
    memoizer.cache_clear()
    memoizer.cache_clear()  # idempotent
    assert len(memoizer) == 0
    with pytest.raises(KeyError):
        memoizer.replay()(lambda x: x)(5)


def test_keys_keep_types_apart_and_ignore_keyword_order(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    calls: list[Any] = []

    @memoizer.memoize()
    def f(x: Any, *, a: int = 0, b: int = 0) -> str:
        calls.append(x)
        return f"{type(x).__name__}:{x}"

    assert [f(1), f(1.0), f(True), f(1)] == ["int:1", "float:1.0", "bool:True", "int:1"]
    assert f(0, a=1, b=2) == f(0, b=2, a=1)
    assert calls == [1, 1.0, True, 0]


def test_parameters_that_are_not_plain_data_need_an_encoder(settings: config.Settings) -> None:
    class Shape:
        def __init__(self, m: int) -> None:
            self.m = m

    memoizer = Memoizer(settings=settings)

    @memoizer.memoize()
    def tune(shape: Shape) -> int:
        return shape.m

    with pytest.raises(CustomParamsEncoderRequiredError, match="tune"):
        tune(Shape(4))

    @memoizer.memoize(custom_params_encoder=lambda shape: {"m": shape.m})
    def tune_encoded(shape: Shape) -> int:
        return shape.m * 10

    assert tune_encoded(Shape(4)) == 40
    assert memoizer.replay(custom_params_encoder=lambda shape: {"m": shape.m})(tune)(Shape(4)) == 40


def test_encoder_factory_gets_the_undecorated_function(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    received: list[Any] = []
    calls = 0

    def encoder_factory(fn: Any) -> Any:
        received.append(fn)
        return lambda *args, **kwargs: lambda result: {"encoded": result}

    @memoizer.record(custom_result_encoder=encoder_factory)
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert compute(5) == 10  # record returns the function's own result
    assert len(received) == 1 and received[0](7) == 14
    received[0](5)
    received[0](5)
    assert calls == 4 and len(memoizer) == 1  # calling fn directly caches nothing
    assert memoizer.replay()(compute)(5) == {"encoded": 10}


def test_decoder_factory_gets_the_function_and_the_parameters(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    seen: list[Any] = []

    def encoder_factory(fn: Any) -> Any:
        return lambda *args, **kwargs: lambda result: {"encoded_value": result}

    def decoder_factory(fn: Any) -> Any:
        def params_to_decoder(*args: Any, **kwargs: Any) -> Any:
            seen.append((fn(7), args, kwargs))
            return lambda encoded: encoded["encoded_value"]

        return params_to_decoder

    def compute(x: int) -> int:
        return x * 2

    memoizer.record(custom_result_encoder=encoder_factory)(compute)(5)
    assert memoizer.replay(custom_result_decoder=decoder_factory)(compute)(5) == 10
    assert seen == [(14, (5,), {})]


# --------------------------------------------------------------------------- DeferredRecording


def test_a_deferred_recording_is_stored_when_finalized(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    deferred: list[DeferredRecording[Any, Any]] = []

    @memoizer.record(custom_result_encoder=deferring(deferred))
    def compute(x: int) -> int:
        return x * 2

    replay = memoizer.replay()(compute)
    result = compute(5)
    assert result == 10 and isinstance(result, int)  # the original result, at once
    with pytest.raises(KeyError):
        replay(5)
    deferred[0].finalize(100)
    assert replay(5) == 100


def test_deferred_recording_with_a_future(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    populated = Event()

    def future_encoder_factory(fn: Any) -> Any:
        def params_to_encoder(*args: Any, **kwargs: Any) -> Any:
            def encode(future: Future[int]) -> DeferredRecording[Any, Any]:
                deferred: DeferredRecording[Any, Any] = DeferredRecording()
                future.add_done_callback(lambda done: deferred.finalize(done.result()))
                deferred.register_callback(lambda _: populated.set())
                return deferred

            return encode

        return params_to_encoder

    with ThreadPoolExecutor() as executor:

        @memoizer.record(custom_result_encoder=future_encoder_factory)
        def compute_async(x: int) -> Future[int]:
            return executor.submit(lambda: x * 2)

        assert compute_async(5).result(timeout=30) == 10
        assert populated.wait(timeout=30)
    assert memoizer.replay()(compute_async)(5) == 10


def test_deferred_recordings_complete_in_any_order(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    deferred: list[DeferredRecording[Any, Any]] = []
    compute = memoizer.record(custom_result_encoder=deferring(deferred))(lambda x: x * 2)
    for x in (5, 10, 15):
        compute(x)
    for index in (2, 0, 1):
        deferred[index].finalize((5, 10, 15)[index] * 2)
    deferred_none: list[DeferredRecording[Any, Any]] = []
    memoizer.record(custom_result_encoder=deferring(deferred_none))(lambda x: None)(99)
    deferred_none[0].finalize(None)
    replay = memoizer.replay()(compute)
    assert [replay(5), replay(10), replay(15), replay(99)] == [10, 20, 30, None]


def test_deferred_recording_contract() -> None:
    lone: DeferredRecording[int, int] = DeferredRecording()
    lone.finalize(42)  # no callback: fine
    with pytest.raises(RuntimeError, match="finalize\\(\\) called multiple times"):
        lone.finalize(100)
    late: list[int] = []
    lone.register_callback(late.append)  # after finalize: runs at once
    assert late == [42]

    ordered: DeferredRecording[int, int] = DeferredRecording()
    order: list[int] = []
    for i in range(3):
        ordered.register_callback(lambda _, i=i: order.append(i))
    ordered.finalize(1)
    assert order == [0, 1, 2]
    assert ordered.get_interim_result() is None


def test_deferred_recording_finalize_and_register_race() -> None:
    errors = []
    for _ in range(100):
        deferred: DeferredRecording[int, int] = DeferredRecording()
        results: list[int] = []
        go = Event()

        def finalize(d: DeferredRecording[int, int] = deferred, go: Event = go) -> None:
            go.wait()
            d.finalize(42)

        def register(
            d: DeferredRecording[int, int] = deferred, r: list[int] = results, go: Event = go
        ) -> None:
            go.wait()
            d.register_callback(r.append)

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(finalize), pool.submit(register)]
            go.set()
            wait(futures, timeout=30)
        if results != [42]:
            errors.append(results)
    assert errors == []


def test_interim_results_answer_while_pending(settings: config.Settings) -> None:
    memoizer = Memoizer(settings=settings)
    deferred: list[DeferredRecording[Any, Any]] = []
    shared = {"value": "shared"}
    calls = 0

    @memoizer.memoize(custom_result_encoder=deferring(deferred, interim=True))
    def compute(x: int) -> dict[str, str]:
        nonlocal calls
        calls += 1
        return shared

    first, second, third = compute(5), compute(5), compute(5)
    assert calls == 1
    assert first is shared and second is shared and third is shared
    deferred[0].finalize(shared)


# --------------------------------------------------------------------------- PersistentMemoizer


def test_persistent_record_reaches_a_new_process_on_the_same_machine(
    settings: config.Settings, persistent: PersistentMemoizer
) -> None:
    calls = 0

    @persistent.record()
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert compute(5) == 10
    persistent.close()  # flush
    later = PersistentMemoizer(sub_dir="testing", settings=settings)  # a new process
    assert later.replay()(compute)(5) == 10
    assert len(later) == 1  # the disk hit filled its in-process entries
    assert calls == 1
    assert PersistentMemoizer(sub_dir="other", settings=settings).memoize()(compute)(5) == 10
    assert calls == 2  # another sub_dir is another set of entries
    later.close()


def test_persistent_memoize_falls_back_to_disk(persistent: PersistentMemoizer) -> None:
    calls = 0

    @persistent.memoize()
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert [compute(5), compute(5)] == [10, 10]
    persistent.cache_clear()  # in-process entries only: disk and Redis are shared
    assert compute(5) == 10
    assert calls == 1
    assert len(persistent) == 1


def test_persistent_disabled(disabled: config.Settings) -> None:
    memoizer = PersistentMemoizer(sub_dir="testing", settings=disabled)
    calls = 0

    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert [memoizer.memoize()(compute)(5), memoizer.record()(compute)(5)] == [10, 10]
    assert calls == 2
    with pytest.raises(KeyError, match="Caching is disabled"):
        memoizer.replay()(compute)(5)


def test_persistent_deferred_recording(
    settings: config.Settings, persistent: PersistentMemoizer
) -> None:
    deferred: list[DeferredRecording[Any, Any]] = []
    calls = 0

    @persistent.memoize(custom_result_encoder=deferring(deferred))
    def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert compute(5) == 10
    assert compute(5) == 10  # pending, no interim result: computed again
    assert calls == 2
    deferred[0].finalize(100)
    assert compute(5) == 100
    assert calls == 2
    persistent.close()
    fresh = PersistentMemoizer(sub_dir="testing", settings=settings)
    assert fresh.replay()(compute)(5) == 100  # it reached the disk layer too
    fresh.close()


def test_persistent_decoder_gets_the_function(
    settings: config.Settings, persistent: PersistentMemoizer
) -> None:
    def compute(x: int) -> int:
        return x * 2

    persistent.record(
        custom_result_encoder=lambda fn: lambda *a, **k: lambda r: {"encoded_value": r}
    )(compute)(5)
    persistent.close()
    received: list[Any] = []

    def decoder_factory(fn: Any) -> Any:
        received.append(fn)
        return lambda *args, **kwargs: lambda encoded: encoded["encoded_value"]

    fresh = PersistentMemoizer(sub_dir="testing", settings=settings)
    assert fresh.replay(custom_result_decoder=decoder_factory)(compute)(5) == 10
    assert received[0](7) == 14
    fresh.close()


def test_persistent_results_keep_their_types(persistent: PersistentMemoizer) -> None:
    value = {"tuple": (1, "a"), "set": {1, 2}, "big": 2**100, "bytes": b"\x00", "neg": -0.0}
    persistent.record()(lambda x: value)(1)
    persistent.close()
    persistent.cache_clear()
    replayed = persistent.replay()(lambda x: None)(1)
    assert replayed == value
    assert type(replayed["tuple"]) is tuple and type(replayed["set"]) is set


class Kernel:
    def __init__(self, binary: bytes) -> None:
        self.binary = binary


def test_objects_need_a_secret_or_an_encoder(tmp_path: Path) -> None:
    plain = PersistentMemoizer(sub_dir="k", settings=make_settings(tmp_path / "a"))
    with pytest.raises(CustomResultEncoderRequiredError):
        plain.record()(lambda x: Kernel(b"x"))(1)
    plain.close()
    signed_settings = make_settings(tmp_path / "b", secret=SECRET, stats_interval=0)
    signed = PersistentMemoizer(sub_dir="k", settings=signed_settings)
    signed.record()(lambda x: Kernel(b"x"))(1)
    signed.close()
    other_process = PersistentMemoizer(sub_dir="k", settings=signed_settings)
    assert other_process.replay()(lambda x: None)(1).binary == b"x"
    other_process.close()


# --------------------------------------------------------------------------- across machines

MACHINE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from redis_cache import PersistentMemoizer

    calls = []
    memoizer = PersistentMemoizer(sub_dir=Path("should_pad"))

    @memoizer.memoize(custom_params_encoder=lambda m, n, dtype: {"m": m, "n": n, "d": dtype})
    def should_pad(m, n, dtype):
        calls.append((m, n))
        return {"pad": m % 16 != 0, "by": (16 - m % 16) % 16, "machine": os.environ["MACHINE"]}

    results = [should_pad(m, 64, "float16") for m in (100, 128, 100)]
    memoizer.close()
    print(json.dumps({"calls": calls, "results": results}))
    """
)


@pytest.mark.real_redis
def test_a_persistent_memoizer_shares_across_machines_through_redis(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    reports = []
    for machine in ("a", "b"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
        env.update(
            MACHINE=machine,
            PYTHONPATH=str(ROOT),
            REDIS_CACHE_URL=redis_server.url,
            REDIS_CACHE_NAMESPACE=namespace,
            REDIS_CACHE_DIR=str(tmp_path / machine),
            REDIS_CACHE_STATS_INTERVAL="0",
        )
        done = subprocess.run(
            [sys.executable, "-c", MACHINE],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reports.append(json.loads(done.stdout))
    first, second = reports
    assert first["calls"] == [[100, 64], [128, 64]]
    assert second["calls"] == []  # every result came from Redis: machine b's disk was empty
    assert second["results"] == first["results"]
    assert {r["machine"] for r in second["results"]} == {"a"}
