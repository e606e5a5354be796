"""One contract, every layer: first writer wins, misses are None, discard repairs its own bytes.

Each layer runs the same ``LayerContract`` by providing ``layer`` and ``item``
fixtures; the Redis layer runs it on fakeredis here and on a real server in
``test_redis_layer.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from redis_cache.layers import DiskLayer, EntryKey, Layer, MemoEntry, MemoLayer, Outcome


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
