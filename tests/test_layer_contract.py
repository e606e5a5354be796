"""One contract, every layer: first writer wins, misses are None, discard repairs its own bytes.

Each layer and wrapper runs the same ``LayerContract`` by providing ``layer`` and
``item`` fixtures: the memo, the disk and ``FailOpen(disk)`` here; the Redis layer on
fakeredis and, with ``FailOpen`` and ``Retrying`` around it, on a real server in
``test_redis_layer.py``. The memo's byte bound is tested at the end.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from redis_cache import config
from redis_cache.interfaces import FastCache
from redis_cache.layers import DiskLayer, EntryKey, Layer, MemoEntry, MemoLayer, Outcome
from redis_cache.layers.guards import FailOpen
from redis_cache.stats import CacheStats


def key(n: int = 0) -> EntryKey:
    return EntryKey("tests.contract.fn", f"{n:064x}", "fcache")


class LayerContract:
    """Subclasses provide ``layer`` (an empty layer) and ``item(i)`` (distinct stored items)."""

    def item(self, i: int) -> Any:
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def test_miss_is_none(self, layer: Layer[Any]) -> None:
        assert layer.get(key()) is None

    def test_insert_then_get(self, layer: Layer[Any]) -> None:
        assert layer.insert(key(), self.item(1)) is Outcome.WRITTEN
        assert layer.get(key()) == self.item(1)

    def test_first_writer_wins(self, layer: Layer[Any]) -> None:
        assert layer.insert(key(), self.item(1)) is Outcome.WRITTEN
        assert layer.insert(key(), self.item(2)) is Outcome.EXISTED
        assert layer.get(key()) == self.item(1)

    def test_keys_are_independent(self, layer: Layer[Any]) -> None:
        layer.insert(key(1), self.item(1))
        layer.insert(key(2), self.item(2))
        assert layer.get(key(1)) == self.item(1)
        assert layer.get(key(2)) == self.item(2)
        assert layer.get(key(3)) is None

    def test_discard_removes_only_the_expected_item(self, layer: Layer[Any]) -> None:
        layer.insert(key(), self.item(1))
        assert layer.discard(key(), self.item(2)) is False
        assert layer.get(key()) == self.item(1)
        assert layer.discard(key(), layer.get(key())) is True
        assert layer.get(key()) is None
        assert layer.discard(key(), self.item(1)) is False
        assert layer.insert(key(), self.item(2)) is Outcome.WRITTEN

    def test_racing_threads_one_winner(self, layer: Layer[Any]) -> None:
        barrier = threading.Barrier(8)
        wins: list[int] = []

        def writer(i: int) -> None:
            barrier.wait()
            if layer.insert(key(), self.item(i)) is Outcome.WRITTEN:
                wins.append(i)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert layer.get(key()) == self.item(wins[0])


class TestMemoLayer(LayerContract):
    @pytest.fixture
    def layer(self) -> MemoLayer:
        return MemoLayer()

    def item(self, i: int) -> MemoEntry:
        # Memo discards by identity: the same i must give the same object.
        return _MEMO_ITEMS.setdefault(i, MemoEntry(i, 1, key()))


_MEMO_ITEMS: dict[int, MemoEntry] = {}


class TestDiskLayer(LayerContract):
    @pytest.fixture
    def layer(self, tmp_path: Path) -> DiskLayer:
        return DiskLayer(tmp_path, "ns")

    def item(self, i: int) -> bytes:
        return f"entry-{i}".encode() * (i + 1)

    def test_namespaces_do_not_share_entries(self, tmp_path: Path) -> None:
        a, b = DiskLayer(tmp_path, "a"), DiskLayer(tmp_path, "b")
        a.insert(key(), b"x")
        assert b.get(key()) is None

    def test_entries_are_listed_without_temporaries(self, layer: DiskLayer) -> None:
        for i in range(3):
            layer.insert(key(i), self.item(i))
        assert len(layer.iter_files()) == 3


class TestFailOpenDiskLayer(LayerContract):
    """fcache's view of the disk: the same contract while the disk is healthy."""

    @pytest.fixture
    def layer(self, tmp_path: Path) -> FailOpen:
        return FailOpen(DiskLayer(tmp_path, "ns"), CacheStats())

    def item(self, i: int) -> bytes:
        return f"entry-{i}".encode() * (i + 1)


def test_fail_open_disk_turns_failures_into_misses_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "root").write_bytes(b"a file where the disk layer's directory should be")
    stats = CacheStats()
    broken = FailOpen(DiskLayer(tmp_path / "root", "ns"), stats)
    with caplog.at_level("WARNING", logger="redis_cache"):
        assert broken.insert(key(1), b"x") is Outcome.UNAVAILABLE
        assert broken.insert(key(2), b"y") is Outcome.UNAVAILABLE
    assert broken.get(key(1)) is None
    assert broken.discard(key(1), b"x") is False
    assert stats.disk_errors == 2
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1  # once per outage


# --------------------------------------------------------------------------- the memo's bound


def memo_entry(n: int, size: int) -> MemoEntry:
    return MemoEntry(f"value-{n}", size, key(n))


def test_memo_evicts_with_a_second_chance_for_entries_used_since() -> None:
    memo = MemoLayer(max_bytes=30)
    a, b, c, d, e = (memo_entry(n, 10) for n in range(5))
    for n, entry in enumerate((a, b, c)):
        assert memo.insert(key(n), entry) is Outcome.WRITTEN
    assert memo.get(key(0)) is a  # a hit: the oldest entry gets a second chance
    assert memo.insert(key(3), d) is Outcome.WRITTEN
    assert [digest for digest, _ in memo.items()] == [key(n).digest for n in (2, 3, 0)]
    assert memo.get(key(1)) is None  # b: oldest without a hit, evicted
    assert memo.insert(key(4), e) is Outcome.WRITTEN
    assert memo.get(key(2)) is None  # then c
    assert {memo.get(key(n)) for n in (0, 3, 4)} == {a, d, e}
    assert memo.bytes == 30 and len(memo) == 3


def test_memo_counts_each_value_once() -> None:
    memo = MemoLayer(max_bytes=1000)
    first, again = memo_entry(1, 100), memo_entry(1, 100)
    assert memo.insert(key(1), first) is Outcome.WRITTEN
    assert memo.insert(key(1), again) is Outcome.EXISTED
    assert memo.bytes == 100
    assert memo.insert(key(2), memo_entry(2, 50)) is Outcome.WRITTEN
    assert memo.bytes == 150 == sum(e.size for _, e in memo.items())
    assert memo.discard(key(1), again) is False  # not the memoized object
    assert memo.discard(key(1), first) is True
    assert memo.bytes == 50
    memo.clear()
    assert memo.bytes == 0 and len(memo) == 0


def test_memo_refuses_an_entry_larger_than_its_bound() -> None:
    memo = MemoLayer(max_bytes=100)
    assert memo.insert(key(1), memo_entry(1, 60)) is Outcome.WRITTEN
    assert memo.insert(key(2), memo_entry(2, 101)) is Outcome.UNAVAILABLE
    assert memo.get(key(2)) is None
    assert memo.get(key(1)) is not None and memo.bytes == 60  # nothing evicted for it


def test_memo_eviction_drops_fast_index_references() -> None:
    memo = MemoLayer(max_bytes=20)
    fast: dict[Any, MemoEntry] = {}
    old, newer = memo_entry(1, 10), memo_entry(2, 10)
    memo.insert(key(1), old)
    memo.insert(key(2), newer)
    memo.index(old, fast, ("args", 1))
    memo.index(newer, fast, ("args", 2))
    assert fast == {("args", 1): old, ("args", 2): newer}
    memo.insert(key(3), memo_entry(3, 10))  # evicts the oldest: `old`
    assert memo.get(key(1)) is None
    assert fast == {("args", 2): newer}
    memo.index(old, fast, ("args", 1))  # an evicted entry is never indexed again
    assert ("args", 1) not in fast
    memo.discard(key(2), newer)
    assert fast == {}


def test_memo_bound_holds_under_racing_threads() -> None:
    memo = MemoLayer(max_bytes=500)
    barrier = threading.Barrier(8)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(200):
            memo.insert(key(t * 1000 + i), memo_entry(t * 1000 + i, 7))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert memo.bytes <= 500
    assert memo.bytes == sum(e.size for _, e in memo.items()) == 7 * len(memo)


def test_memo_max_bytes_zero_keeps_nothing(tmp_path: Path) -> None:
    settings = config.load({"REDIS_CACHE_MEMO_MAX_BYTES": "0", "REDIS_CACHE_DIR": str(tmp_path)})
    assert settings.memo_max_bytes == 0
    cache = FastCache(settings)
    calls: list[int] = []

    @cache.record()
    def kernel(x: int) -> tuple[int, str]:
        calls.append(x)
        return (x, "kernel")

    assert [kernel(1) for _ in range(3)] == [(1, "kernel")] * 3
    assert calls == [1]  # the disk still serves it
    stats = cache.stats()
    assert (stats.memo_hits, stats.disk_hits) == (0, 2)
    assert len(cache._runtime().memo) == 0
    cache.close()
