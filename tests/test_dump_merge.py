"""``dcache.dump`` merges into an existing dump only what is the same result (issue 9, item 5).

Two processes that computed one key differently must not merge silently: the dump is
what ``REDIS_CACHE_PREPOPULATE`` replays to a whole fleet. "The same" is judged by
canonical key encodings, which tell ``0.0`` from ``-0.0`` and ``1`` from ``True``
where ``==`` does not; values keys cannot encode (signed pickles) by their payloads.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from redis_cache import exceptions, keys
from redis_cache.interfaces import DeterministicCache
from tests.support.helpers import make_settings

SECRET = b"a-secret-of-at-least-16-bytes"

# What the recorded function returns in the process that runs it.
current: dict[str, Any] = {}


def tune(x: int) -> Any:
    return current["value"]


def dump_of(tmp: Path, name: str, value: Any, path: Path, **settings: Any) -> int:
    """A separate process's dcache (own disk layer) computing ``value``, dumped to ``path``."""
    cache = DeterministicCache(make_settings(tmp / name, deterministic=True, **settings))
    try:
        current["value"] = value
        cache.record()(tune)(1)
        return cache.dump(path)
    finally:
        cache.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (0.0, -0.0),
        ({1}, {True}),
        ({1: "a"}, {True: "a"}),
        (frozenset({1.0}), frozenset({1})),
        ([1, (2.0,)], [1, (2,)]),
    ],
    ids=repr,
)
def test_results_equal_by_eq_but_not_the_same_conflict(
    tmp_path: Path, first: Any, second: Any
) -> None:
    assert first == second  # what the old comparison looked at
    path = tmp_path / "tuned.dump"
    assert dump_of(tmp_path, "a", first, path) == 1
    before = path.read_bytes()
    with pytest.raises(exceptions.DeterministicCachingIMCDumpConflictError) as info:
        dump_of(tmp_path, "b", second, path)
    assert f"{__name__}.tune" in str(info.value)
    assert path.read_bytes() == before  # nothing written


def test_the_same_result_merges_whatever_its_compression(tmp_path: Path) -> None:
    path = tmp_path / "tuned.dump"
    value = {"tile": list(range(2000)), "name": "x" * 5000}  # large enough to compress
    assert dump_of(tmp_path, "a", value, path, compression="off") == 1
    assert dump_of(tmp_path, "b", value, path, compression="zlib") == 1


def test_pickled_results_compare_by_payload(tmp_path: Path) -> None:
    path = tmp_path / "tuned.dump"
    signed = {"secret": SECRET}
    assert dump_of(tmp_path, "a", Fraction(1, 3), path, compression="off", **signed) == 1
    assert dump_of(tmp_path, "b", Fraction(1, 3), path, compression="zlib", **signed) == 1
    with pytest.raises(exceptions.DeterministicCachingIMCDumpConflictError):
        dump_of(tmp_path, "c", Fraction(2, 3), path, **signed)


def test_same_value_is_stricter_than_eq() -> None:
    assert keys.same_value(0.0, 0.0) is True
    assert keys.same_value(0.0, -0.0) is False
    assert keys.same_value(1, True) is False
    assert keys.same_value({"a": (1,)}, {"a": (1,)}) is True
    assert keys.same_value(float("nan"), float("nan")) is True
    assert keys.same_value(Fraction(1), 1) is False  # one encodable, one not: different
    assert keys.same_value(Fraction(1), Fraction(1)) is None  # keys cannot tell
