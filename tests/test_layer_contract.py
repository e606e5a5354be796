"""One contract, every layer: first writer wins, misses are None, discard repairs its own bytes.

Each layer and wrapper runs the same ``LayerContract`` by providing ``layer`` and
``item`` fixtures: the memo, the disk and ``FailOpen(disk)`` here; the Redis layer on
fakeredis and, with ``FailOpen`` and ``Retrying`` around it, on a real server in
``test_redis_layer.py``. The memo's byte bound is tested at the end.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from redis_cache import config, exceptions
from redis_cache.interfaces import FastCache
from redis_cache.layers import DiskLayer, EntryKey, Layer, MemoEntry, MemoLayer, Outcome
from redis_cache.layers.disk import MAX_CALLEE_DIR
from redis_cache.layers.guards import FailOpen
from redis_cache.stats import StatsRecorder


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

    # -- what is at an entry's path when it is not a good file (issue 9, item 25) --

    def test_a_directory_at_an_entry_path_is_corrupt_and_discard_removes_it(
        self, layer: DiskLayer
    ) -> None:
        path = Path(layer.path(key()))
        (path / "inside").mkdir(parents=True)
        (path / "inside" / "file").write_bytes(b"x")
        with pytest.raises(exceptions.CorruptEntryError) as info:
            layer.get(key())
        assert key().digest in str(info.value) and "directory" in str(info.value)
        assert layer.insert(key(), b"good") is Outcome.EXISTED  # the name is taken
        assert layer.discard(key(), b"whatever was expected") is True
        assert not os.path.lexists(path)
        assert layer.get(key()) is None
        assert layer.insert(key(), b"good") is Outcome.WRITTEN
        assert layer.get(key()) == b"good"
        assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no leftovers

    def test_a_dangling_symlink_is_corrupt_and_discard_removes_it(
        self, layer: DiskLayer, tmp_path: Path
    ) -> None:
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        path.symlink_to(tmp_path / "nowhere")
        with pytest.raises(exceptions.CorruptEntryError, match="symbolic link"):
            layer.get(key())
        assert layer.discard(key(), b"") is True
        assert not os.path.lexists(path)
        assert layer.insert(key(), b"good") is Outcome.WRITTEN

    def test_a_symlink_to_a_good_file_is_not_followed(
        self, layer: DiskLayer, tmp_path: Path
    ) -> None:
        target = tmp_path / "elsewhere"
        target.write_bytes(b"planted")
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        path.symlink_to(target)
        with pytest.raises(exceptions.CorruptEntryError, match="symbolic link"):
            layer.get(key())
        assert layer.discard(key(), b"something else") is True  # the link, not its target
        assert target.read_bytes() == b"planted"

    def test_a_fifo_is_corrupt_without_blocking_the_reader(self, layer: DiskLayer) -> None:
        path = Path(layer.path(key()))
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        with pytest.raises(exceptions.CorruptEntryError, match="FIFO"):
            layer.get(key())
        assert layer.discard(key(), b"") is True
        assert not os.path.lexists(path)

    def test_an_unreadable_entry_is_a_disk_error_and_is_not_discarded(
        self, tmp_path: Path
    ) -> None:
        root = Path(tempfile.mkdtemp(prefix="disk-eacces-"))
        try:
            root.chmod(0o755)  # an unprivileged reader can reach the entry, not read it
            layer = DiskLayer(root, "ns")
            assert layer.insert(key(), b"secret-ish") is Outcome.WRITTEN
            path = layer.path(key())
            os.chmod(path, 0)
            outcome = as_unprivileged(lambda: _get_and_discard(layer))
            assert outcome[0] == "DiskLayerError", outcome
            assert path in outcome[1] and "permission denied" in outcome[1]
            assert outcome[2] is False  # discard left it: not ours to judge
            assert os.path.exists(path)
        finally:
            shutil.rmtree(root)

    def test_entries_are_grouped_by_space_and_callee(self, layer: DiskLayer) -> None:
        odd = EntryKey("mod.<locals>.f/g", "ab" * 32, "dcache")
        long = EntryKey("m." + "x" * 300, "cd" * 32, "fcache")
        for k in (key(1), odd, long):
            assert layer.insert(k, b"v") is Outcome.WRITTEN
            assert layer.get(k) == b"v"
        found = {(f.space, f.callee) for f in layer.scan()}
        assert found == {
            ("fcache", "tests.contract.fn"),
            ("dcache", "mod.<locals>.f/g"),
            ("fcache", "m." + "x" * (MAX_CALLEE_DIR - 20) + "…"),
        }

    def test_a_hit_refreshes_the_recency_of_an_old_entry(self, layer: DiskLayer) -> None:
        layer.insert(key(1), b"old")
        layer.insert(key(2), b"fresh")
        hour_ago = time.time() - 3600
        for k in (key(1), key(2)):
            os.utime(layer.path(k), (hour_ago, hour_ago))
        assert layer.get(key(1)) == b"old"
        assert os.stat(layer.path(key(1))).st_mtime > hour_ago + 3000
        assert os.stat(layer.path(key(2))).st_mtime == pytest.approx(hour_ago)
        mtime = os.stat(layer.path(key(1))).st_mtime_ns
        layer.get(key(1))  # touched a moment ago: no second metadata write
        assert os.stat(layer.path(key(1))).st_mtime_ns == mtime


def _get_and_discard(layer: DiskLayer) -> tuple[str, str, bool]:
    try:
        layer.get(key())
        got = ("no error", "")
    except exceptions.CacheError as exc:
        got = (type(exc).__name__, str(exc))
    return (*got, layer.discard(key(), b"secret-ish"))


def as_unprivileged(fn: Callable[[], Any]) -> Any:
    """``fn()`` as a user that file permissions apply to (root's are bypassed): a forked child."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


class TestFailOpenDiskLayer(LayerContract):
    """fcache's view of the disk: the same contract while the disk is healthy."""

    @pytest.fixture
    def layer(self, tmp_path: Path) -> FailOpen:
        return FailOpen(DiskLayer(tmp_path, "ns"), StatsRecorder())

    def item(self, i: int) -> bytes:
        return f"entry-{i}".encode() * (i + 1)


def test_fail_open_disk_turns_failures_into_misses_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "root").write_bytes(b"a file where the disk layer's directory should be")
    stats = StatsRecorder()
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
