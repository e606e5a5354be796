"""The backfill queue: each entry once, bounded in bytes, no blob kept after its write."""

from __future__ import annotations

import sys
import threading

import pytest

from redis_cache import runtime
from redis_cache.layers.base import EntryKey, Layer, Outcome


class GatedLayer(Layer[bytes]):
    """Records inserts; the first one waits for ``release`` so the queue can fill."""

    name = "gated"

    def __init__(self) -> None:
        self.inserted: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def get(self, key: EntryKey) -> bytes | None:
        return None

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        self.entered.set()
        assert self.release.wait(10), "the test never released the layer"
        self.inserted.append(key.digest)
        return Outcome.WRITTEN

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        return False


def key(name: str) -> EntryKey:
    return EntryKey("tests.f", name, "fcache")


@pytest.fixture
def backfiller() -> runtime.Backfiller:
    filler = runtime.Backfiller()
    yield filler
    filler.close(5)


def test_a_repeated_hit_queues_its_entry_once(backfiller: runtime.Backfiller) -> None:
    layer = GatedLayer()
    backfiller.put(layer, key("a"), b"A")
    assert layer.entered.wait(10)  # the thread holds "a"; the rest waits in the queue
    for _ in range(3):
        backfiller.put(layer, key("b"), b"B")
    layer.release.set()
    backfiller.flush(5)
    assert layer.inserted == ["a", "b"]
    backfiller.put(layer, key("b"), b"B")  # written: a later hit may queue it again
    backfiller.flush(5)
    assert layer.inserted == ["a", "b", "b"]


def test_the_queue_holds_no_more_bytes_than_its_bound(
    backfiller: runtime.Backfiller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "BACKFILL_QUEUE_BYTES", 250)
    layer = GatedLayer()
    backfiller.put(layer, key("first"), bytes(100))
    assert layer.entered.wait(10)  # "first" still counts until it is written
    backfiller.put(layer, key("second"), bytes(100))
    backfiller.put(layer, key("too-much"), bytes(100))  # 300 > 250: stays upstairs
    layer.release.set()
    backfiller.flush(5)
    assert layer.inserted == ["first", "second"]
    backfiller.put(layer, key("later"), bytes(200))  # written ones no longer count
    backfiller.flush(5)
    assert layer.inserted == ["first", "second", "later"]


def test_no_blob_outlives_its_write(backfiller: runtime.Backfiller) -> None:
    layer = GatedLayer()
    layer.release.set()
    blob = bytes(range(256)) * 4096
    alone = sys.getrefcount(blob)
    backfiller.put(layer, key("big"), blob)
    backfiller.flush(5)
    assert layer.inserted == ["big"]
    # The thread now waits for the next item: its frame must not hold the last one.
    assert sys.getrefcount(blob) == alone
