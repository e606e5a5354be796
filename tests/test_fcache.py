"""fcache on the local layers (memo + disk), in one process."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import exceptions
from redis_cache.interfaces import DeterministicCache, FastCache
from redis_cache.layers import EntryKey
from tests import twin_a, twin_b
from tests.support.helpers import make_settings, rich_value


@pytest.fixture
def cache(tmp_path: Path) -> FastCache:
    c = FastCache(make_settings(tmp_path))
    yield c
    c.close()


def test_record_computes_once_and_replays(cache: FastCache) -> None:
    calls: list[int] = []

    @cache.record()
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4), square(3)] == [9, 9, 16, 9]
    assert calls == [3, 4]
    stats = cache.stats()
    assert stats.computations == 2
    assert stats.memo_hits == 2


def test_memo_fast_path_keeps_types_apart(cache: FastCache) -> None:
    @cache.record()
    def kind(x: Any) -> str:
        return type(x).__name__

    assert kind(1) == "int"
    assert kind(1) == "int"  # served by the fast path now
    assert kind(True) == "bool"
    assert kind(1.0) == "float"
    assert kind(0.0) == "float"
    assert kind(-0.0) == "float"
    assert kind("1") == "str"
    assert kind(b"1") == "bytes"
    assert [kind(1), kind(True), kind(1.0)] == ["int", "bool", "float"]


def test_nan_arguments_share_one_entry_on_every_path(cache: FastCache) -> None:
    # The canonical key encodes every NaN alike; the fast index keys floats by their
    # bits. A NaN call must reach the one NaN entry either way, and nothing else.
    calls: list[Any] = []

    @cache.record()
    def describe(x: Any) -> str:
        calls.append(x)
        return repr(x)

    payload_nan = struct.unpack(">d", b"\x7f\xf0\x00\x00\x00\x00\x00\x01")[0]
    assert describe(math.nan) == "nan"
    assert describe(math.nan) == "nan"  # fast index
    assert describe(-math.nan) == "nan"  # other bits: canonical path, same entry
    assert describe(payload_nan) == "nan"
    assert describe((math.nan, 1.0)) == "(nan, 1.0)"
    assert describe((payload_nan, 1.0)) == "(nan, 1.0)"
    assert describe(math.inf) == "inf"
    assert describe((math.inf, 1.0)) == "(inf, 1.0)"
    assert len(calls) == 4


def test_negative_zero_is_its_own_key(cache: FastCache) -> None:
    @cache.record()
    def sign(x: float) -> str:
        return "neg" if str(x).startswith("-") else "pos"

    assert sign(0.0) == "pos"
    assert sign(-0.0) == "neg"


def test_kwarg_order_does_not_matter(cache: FastCache) -> None:
    calls: list[tuple[int, int]] = []

    @cache.record()
    def f(*, a: int, b: int) -> int:
        calls.append((a, b))
        return a - b

    assert f(a=5, b=2) == 3
    assert f(b=2, a=5) == 3
    assert calls == [(5, 2)]


def test_same_qualname_in_two_modules_stays_apart(cache: FastCache) -> None:
    a = cache.record()(twin_a.kernel)
    b = cache.record()(twin_b.kernel)
    assert a(1) == "a:1"
    assert b(1) == "b:1"
    assert cache.get(twin_b.kernel, ((1,), {})) == redis_cache.Hit("b:1")


def test_unhashable_arguments_take_the_canonical_path(cache: FastCache) -> None:
    calls: list[Any] = []

    @cache.record()
    def total(xs: list[int], opts: dict[str, int]) -> int:
        calls.append(xs)
        return sum(xs) + opts["k"]

    assert total([1, 2], {"k": 3}) == 6
    assert total([1, 2], {"k": 3}) == 6
    assert total((1, 2), {"k": 3}) == 6  # a tuple is another key than a list
    assert len(calls) == 2


def test_rich_values_keep_their_types_through_disk(tmp_path: Path) -> None:
    first = FastCache(make_settings(tmp_path))
    assert first.insert(rich_value, ((7,), {}), rich_value(7)) is True
    first.close()
    second = FastCache(make_settings(tmp_path))  # cold memo: served by disk
    hit = second.get(rich_value, ((7,), {}))
    assert hit is not None
    assert hit.value == rich_value(7)
    assert type(hit.value["tuple"]) is tuple
    assert type(hit.value["frozenset"]) is frozenset
    assert type(hit.value[(7, "tuple-key")]) is float
    assert second.stats().disk_hits == 1


def test_insert_never_overwrites(cache: FastCache) -> None:
    def f(x: int) -> int:
        return x

    assert cache.insert(f, ((1,), {}), "first") is True
    assert cache.insert(f, ((1,), {}), "second") is False
    assert cache.get(f, ((1,), {})) == redis_cache.Hit("first")


def test_none_is_a_cacheable_result(cache: FastCache) -> None:
    calls: list[int] = []

    @cache.record()
    def nothing(x: int) -> None:
        calls.append(x)

    assert nothing(1) is None
    assert nothing(1) is None
    assert calls == [1]
    assert cache.get(nothing, ((1,), {})) == redis_cache.Hit(None)


def test_get_misses_return_none(cache: FastCache) -> None:
    def f(x: int) -> int:
        return x

    assert cache.get(f, ((1,), {})) is None


def test_custom_codecs_miss_returns_what_hits_return(tmp_path: Path) -> None:
    class Kernel:
        def __init__(self, code: str) -> None:
            self.code = code

    def encode(k: Kernel) -> str:
        return k.code

    def decode(code: str) -> tuple[str, str]:
        return ("decoded", code)

    cache = FastCache(make_settings(tmp_path))

    @cache.record(custom_result_encoder=encode, custom_result_decoder=decode)
    def build(x: int) -> Kernel:
        return Kernel(f"k{x}")

    assert build(1) == ("decoded", "k1")  # the miss
    assert build(1) == ("decoded", "k1")  # a memo hit
    cold = FastCache(make_settings(tmp_path))
    hit = cold.get(build.__wrapped__, ((1,), {}), custom_result_decoder=decode)  # type: ignore[attr-defined]
    assert hit == redis_cache.Hit(("decoded", "k1"))


def test_custom_params_encoder(cache: FastCache) -> None:
    class Graph:
        def __init__(self, name: str) -> None:
            self.name = name

    calls: list[str] = []

    @cache.record(custom_params_encoder=lambda g: g.name)
    def lower(g: Graph) -> str:
        calls.append(g.name)
        return g.name.upper()

    assert lower(Graph("x")) == "X"
    assert lower(Graph("x")) == "X"
    assert calls == ["x"]


def test_unencodable_params_need_a_custom_encoder(cache: FastCache) -> None:
    @cache.record()
    def f(x: object) -> int:
        return 1

    with pytest.raises(exceptions.CustomParamsEncoderRequiredError) as info:
        f(object())
    assert isinstance(info.value.__cause__, exceptions.KeyEncodingError)
    assert "custom_params_encoder" in str(info.value)


def test_unencodable_results_need_a_custom_encoder(cache: FastCache) -> None:
    @cache.record()
    def f(x: int) -> object:
        return object()

    with pytest.raises(exceptions.CustomResultEncoderRequiredError) as info:
        f(1)
    assert isinstance(info.value.__cause__, exceptions.ValueEncodingError)
    assert isinstance(info.value, exceptions.UserError)


def test_encoder_without_decoder_is_refused_at_decoration(cache: FastCache) -> None:
    with pytest.raises(exceptions.CustomResultDecoderRequiredError):
        cache.record(custom_result_encoder=str)
    with pytest.raises(exceptions.CustomResultEncoderRequiredError):
        cache.record(custom_result_decoder=str)


def test_signed_pickles_round_trip_with_a_secret(tmp_path: Path) -> None:
    secret = b"s" * 32
    cache = FastCache(make_settings(tmp_path, secret=secret))
    value = Fraction(1, 3)  # no msgpack form: needs a signed pickle

    def f() -> object:
        return value

    assert cache.insert(f, ((), {}), value)
    cold = FastCache(make_settings(tmp_path, secret=secret))
    assert cold.get(f, ((), {})) == redis_cache.Hit(value)
    stranger = FastCache(make_settings(tmp_path, secret=b"t" * 32))
    assert stranger.get(f, ((), {})) is None
    assert stranger.stats().unverified_entries == 1
    # Unverified entries belong to someone else: never deleted.
    assert cold.get(f, ((), {})) == redis_cache.Hit(value)


def _entry_file(cache: FastCache, fn: Any, params: Any) -> Path:
    backend = cache._runtime()
    key = cache.entry_key(fn, params)
    return Path(backend.disk.path(EntryKey(key.callee, key.digest, key.space)))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="flipped-bit"),
        pytest.param(lambda b: b"garbage", id="garbage"),
        pytest.param(lambda b: b[:2] + b"\x63" + b[3:], id="foreign-version"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_damaged_disk_entries_are_misses_and_repaired(tmp_path: Path, damage: Any) -> None:
    cache = FastCache(make_settings(tmp_path))

    def f(x: int) -> int:
        return x

    cache.insert(f, ((1,), {}), 100)
    path = _entry_file(cache, f, ((1,), {}))
    path.write_bytes(damage(path.read_bytes()))

    cold = FastCache(make_settings(tmp_path))
    assert cold.get(f, ((1,), {})) is None
    assert cold.stats().corrupt_entries == 1
    assert not path.exists()  # repaired: removed so a good value can take its place
    assert cold.insert(f, ((1,), {}), 100) is True
    assert FastCache(make_settings(tmp_path)).get(f, ((1,), {})) == redis_cache.Hit(100)


def test_disabled_cache_is_a_pass_through(tmp_path: Path) -> None:
    cache = FastCache(make_settings(tmp_path, enabled=False))
    calls: list[int] = []

    @cache.record()
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert [f(1), f(1)] == [1, 1]
    assert calls == [1, 1]
    assert cache.insert(f, ((1,), {}), 1) is False
    assert cache.get(f, ((1,), {})) is None
    assert not any(tmp_path.iterdir())


def test_lock_times_out_with_lock_timeout_error(cache: FastCache) -> None:
    with cache.lock():
        with pytest.raises(exceptions.LockTimeoutError), cache.lock(timeout=0):
            pass
        with pytest.raises(exceptions.LockTimeoutError), cache.lock(timeout=0.01):
            pass
    with cache.lock(timeout=0):
        pass


def test_exceptions_from_fn_propagate_and_store_nothing(cache: FastCache) -> None:
    @cache.record()
    def boom(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(ValueError):
        boom(1)
    assert cache.get(boom.__wrapped__, ((1,), {})) is None  # type: ignore[attr-defined]


def test_disk_writes_leave_no_temporaries(cache: FastCache) -> None:
    @cache.record()
    def f(x: int) -> int:
        return x

    for i in range(20):
        f(i)
    leftovers = [p for p in Path(cache._runtime().disk.root).rglob(".tmp-*")]
    assert leftovers == []
    assert os.listdir(cache._runtime().disk.root)


def test_callables_without_a_module_are_recorded(cache: FastCache) -> None:
    upper = cache.record()(str.upper)
    assert upper("abc") == "ABC"
    assert upper("abc") == "ABC"
    assert cache.stats().computations == 1


def test_an_unreadable_entry_below_is_computed_once_per_process(tmp_path: Path) -> None:
    theirs = FastCache(make_settings(tmp_path, secret=b"their-secret-0123456789"))
    theirs.insert(rich_value, ((1,), {"k": 1}), "theirs")
    ours = FastCache(make_settings(tmp_path, secret=b"our-secret-0123456789ab"))
    calls: list[int] = []

    def f(x: int, k: int) -> str:
        calls.append(x)
        return "ours"

    f.__module__, f.__qualname__ = rich_value.__module__, rich_value.__qualname__  # same key
    wrapped = ours.record()(f)
    # kwargs keep the memo fast path out of it: only the memo fill can stop recomputation.
    assert [wrapped(1, k=1) for _ in range(3)] == ["ours"] * 3
    assert calls == [1]
    assert ours.stats().unverified_entries == 1


def test_a_broken_disk_layer_degrades_fcache_and_fails_dcache(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("the disk layer cannot live under a file")
    cache = FastCache(make_settings(not_a_dir))

    @cache.record()
    def f(x: int, k: int = 0) -> int:
        return x

    assert [f(1, k=0), f(1, k=0)] == [1, 1]
    assert cache.stats().disk_errors >= 1
    assert cache.stats().computations == 1  # the memo still serves

    d = DeterministicCache(make_settings(not_a_dir, deterministic=True))
    with pytest.raises(exceptions.SystemError) as info:
        d.record()(f.__wrapped__)(2)  # type: ignore[attr-defined]
    assert isinstance(info.value, (exceptions.DiskLayerError, exceptions.FileLockTimeoutError))


def test_a_broken_disk_warns_once_for_the_whole_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("the disk layer cannot live under a file")
    cache = FastCache(make_settings(not_a_dir))
    recorded = cache.record()(rich_value)
    with caplog.at_level("WARNING", logger="redis_cache"):
        assert [recorded(i) for i in range(5)] == [rich_value(i) for i in range(5)]
    assert cache.stats().disk_errors == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # a miss on the broken disk is not a recovery
    cache.close()


def test_close_forgets_what_record_wrappers_memoized(tmp_path: Path) -> None:
    cache = FastCache(make_settings(tmp_path, enabled=True))
    calls: list[int] = []

    @cache.record()
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert [f(1), f(1)] == [1, 1]
    cache.close()
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            path.unlink()  # and the disk: the next call must compute again
    assert f(1) == 1
    assert calls == [1, 1]


# --------------------------------------------------------------------------- issue 9 regressions


@pytest.mark.parametrize("interface", [FastCache, DeterministicCache])
def test_item04_memo_fast_path_keys_on_what_the_params_encoder_returns(
    tmp_path: Path, interface: Any
) -> None:
    """The encoder reads state that changes (the target arch): its output is the key."""
    cache = interface(make_settings(tmp_path, deterministic=True))
    target = ["sm80"]
    calls: list[tuple[int, str]] = []

    @cache.record(custom_params_encoder=lambda x: (x, target[0]))
    def compile_for_target(x: int) -> str:
        calls.append((x, target[0]))
        return f"{x} for {target[0]}"

    assert compile_for_target(1) == "1 for sm80"
    target[0] = "sm90"
    assert compile_for_target(1) == "1 for sm90"
    target[0] = "sm80"
    assert compile_for_target(1) == "1 for sm80"
    assert calls == [(1, "sm80"), (1, "sm90")]
    cache.close()


def test_item15_a_result_too_large_for_any_envelope_is_kept_in_the_memo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fcache keeps what it computed (one warning), instead of raising on every call."""
    monkeypatch.setattr(redis_cache.codec, "MAX_RAW_LENGTH", 64 * 1024)
    # The memo counts such a result as one envelope limit plus a byte: make room for it.
    cache = FastCache(make_settings(tmp_path, memo_max_bytes=8 << 30))
    calls: list[int] = []

    @cache.record()
    def huge(x: int) -> bytes:
        calls.append(x)
        return bytes([x]) * (100 * 1024)

    with caplog.at_level("DEBUG", logger="redis_cache"):
        for _ in range(3):
            assert [huge(x) for x in (1, 2)] == [b"\x01" * 102400, b"\x02" * 102400]
    assert calls == [1, 2]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "kept in this process only" in warnings[0].getMessage()
    assert cache.stats().oversize_values == 2
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written on disk
    cache.close()


def _hit_in_a_worker(value: Any) -> redis_cache.Hit[Any]:
    return redis_cache.Hit(value)


def test_hit_is_an_immutable_value_that_crosses_processes() -> None:
    hit = redis_cache.Hit((1, "a"))
    assert hit == redis_cache.Hit((1, "a")) and hit != redis_cache.Hit((1, "b"))
    assert hit != (1, "a") and hash(hit) == hash(redis_cache.Hit((1, "a")))
    nan = redis_cache.Hit(math.nan)
    assert nan == nan  # the same value object, as a dataclass compared it
    with pytest.raises(AttributeError):
        hit.value = 2  # type: ignore[misc]
    match hit:
        case redis_cache.Hit(value):
            assert value == (1, "a")
    assert pickle.loads(pickle.dumps(hit)) == hit
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_hit_in_a_worker, (b"kernel",)) == redis_cache.Hit(b"kernel")
